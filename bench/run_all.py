"""Run every benchmark on this machine and rewrite docs/benchmarks.md.

Usage::

    tox -e bench                         # everything (about 20 minutes on a 2-core CPU)
    python bench/run_all.py --quick      # smaller sizes, to check that the scripts work
    python bench/run_all.py --only weights inference

Each ``bench/bench_<topic>.py`` has ``run(quick: bool) -> str`` returning a markdown section;
this script runs them one after the other (never in parallel, so that timings do not compete)
and writes them, with the machine's description, to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOPICS = ["weights", "inference", "tiles", "training", "quality", "gui", "gpu"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and write the report; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--only", nargs="+", choices=TOPICS, help="run only these topics")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "benchmarks.md", help="report to write"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from _machine import machine_table

    topics = args.only or TOPICS
    command = "python bench/run_all.py" + (" --quick" if args.quick else "")
    if args.only:
        command += " --only " + " ".join(args.only)
    sections: list[str] = []
    failed: list[str] = []
    started = time.perf_counter()
    for topic in topics:
        module = importlib.import_module(f"bench_{topic}")
        t0 = time.perf_counter()
        print(f"[bench] {topic} ...", file=sys.stderr, flush=True)
        try:
            sections.append(module.run(quick=args.quick).strip())
        except Exception as exc:  # report the others, then fail
            failed.append(topic)
            traceback.print_exc()
            sections.append(f"## {topic}\n\nThis benchmark failed: {exc!r}")
        print(f"[bench] {topic} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    total = time.perf_counter() - started
    report = "\n\n".join(
        [
            "# Benchmarks",
            f"Made by `{command}` (or `tox -e bench`) in {total / 60:.1f} minutes on the machine "
            "below. Every number on this page was measured in that run; tests never assert "
            "timings.",
            machine_table(),
            *sections,
        ]
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(report + "\n")
    tmp.replace(args.out)
    if "quality" in topics and args.out == ROOT / "docs" / "benchmarks.md":
        import plot_quality

        plot_quality.main()
    print(report)
    if failed:
        print(f"[bench] failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
