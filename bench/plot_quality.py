"""Plot AP against training minutes from the quality table in docs/benchmarks.md.

The numbers are those measured by ``bench/bench_quality.py`` in the last ``bench/run_all.py``
run; this script only draws them: ``python bench/plot_quality.py`` writes
docs/images/ap_vs_minutes.png.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "images" / "ap_vs_minutes.png"


def read_rows(text: str) -> list[tuple[str, float, float, float]]:
    """Return (method, minutes, AP@0.5, AP@0.75) for each timed row of the quality table."""
    section = text.split("## Segmentation quality", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"[\d.]+", cells[1]):
            rows.append((cells[0], float(cells[1]), float(cells[3]), float(cells[4])))
    return rows


def main() -> int:
    """Draw the plot; return the exit code."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_rows(REPORT.read_text())
    full = [r for r in rows if r[0].startswith("U-Net fast")]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for index, label in ((2, "AP@0.5"), (3, "AP@0.75")):
        ax.plot([r[1] for r in full], [r[index] for r in full], "o-", label=f"U-Net fast, {label}")
    for name, minutes, ap50, _ in rows:
        if not name.startswith("U-Net fast"):
            ax.plot([minutes], [ap50], "x", ms=9, label=f"{name.split(',')[0]}, AP@0.5")
    ax.axhline(0.9, color="gray", lw=0.8, ls="--", label="target AP@0.5 = 0.9")
    ax.set_xlabel("training minutes (2-core CPU)")
    ax.set_ylabel("average precision")
    ax.set_ylim(0, 1)
    ax.set_title("Held-out touching cells (docs/benchmarks.md)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(PLOT)
    print(PLOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def plot_real_curve(
    curves: dict[str, list[tuple[float, float, float]]],
    otsu: float | None,
    path: Path,
    target: float = 0.80,
) -> Path:
    """Plot the sparse protocol's mean AP@0.5 against training minutes (bench/bench_real.py).

    Parameters
    ----------
    curves : dict
        ``{row name: [(minutes, mean AP@0.5 per image, summed AP@0.5), ...]}``.
    otsu : float, optional
        Mean AP@0.5 of Otsu + watershed on the same images, drawn as a horizontal line.
    path : pathlib.Path
        PNG to write.
    target : float
        The issue's target, drawn dashed.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=name)
    if otsu is not None:
        ax.axhline(otsu, color="tab:red", lw=1, label=f"Otsu + watershed ({otsu:.2f})")
    ax.axhline(target, color="gray", lw=0.8, ls="--", label=f"target {target:.2f}")
    ax.set_xlabel("training minutes (measured)")
    ax.set_ylabel("mean AP@0.5 per image")
    ax.set_ylim(0, 1)
    ax.set_xlim(left=0)
    ax.set_title("Real nuclei, a few painted in a box, scored outside it")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
