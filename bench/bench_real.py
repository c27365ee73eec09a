"""Segmentation quality on real annotated nuclei (issue 11): two protocols, markdown tables.

Usage::

    python bench/bench_real.py                      # both protocols, 5 / 3 minutes of training
    python bench/bench_real.py --quick --threads 1  # 20 iterations, 2 images: a smoke run
    python bench/bench_real.py --rows otsu          # the classical baseline only (no training)
    python bench/bench_real.py --protocols sparse --images 4 --out real.md
    python bench/bench_real.py --ablation "no border weights:border_weights=False" \\
        --ablation "sgd:optimizer=sgd,learning_rate=0.01"

Data: the DSB2018 / BBBC038v1 nuclei in ``shared/data/nuclei-dsb2018`` next to the repository
(``--data`` to point elsewhere): 20 train and 10 test images with instance labels.

*full*: one model trained on the 20 train images (all labels, no region) for ``--minutes 5``,
scored on the 10 test images. *sparse*: for each test image (``--images N``: the first N), the
nuclei inside a box of about a third of the image are the annotation and the box the region; a
model trained on that image alone for ``--minutes 3`` is scored on the nuclei outside the box;
AP@0.5 is also measured after shorter runs (``--curve``) and plotted against the minutes.
``--split train --images-from 15`` cuts the sparse boxes from the last 5 *train* images instead:
for tuning, with a model trained on the first 15 train images only (never on the test split); with
``--protocols full`` the same options train on the first 15 train images and score the other 5. The
box and scoring rules are in bench/real_data.py. AP = TP / (TP + FP + FN) with one-to-one
matching (:mod:`napari_unet.core.training.metrics`), counts summed over the images, and the mean
of the per-image APs beside it.

Rows: ``napari-unet (defaults)`` (default :class:`TrainSettings`), ``plain reference`` (the same
network and budget, unweighted cross-entropy, no gap), ``Otsu + watershed`` (scikit-image, no
training) and one row per ``--ablation NAME:field=value[,field=value]`` (any TrainSettings fields,
values as Python literals, bare words as strings) and one per ``--fine-tune
NAME:MODEL[:field=value,...]`` (the fine-tuning defaults, ``TrainSettings.for_preset(...,
fine_tune=True)``, with these overrides, starting from a model file or a bundled model such as
``nuclei``, which never saw the test images) and one per ``--as-is NAME:MODEL`` (that model
without any training). Inference uses the defaults of ``segment``.
"""

from __future__ import annotations

import argparse
import ast
import shlex
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import real_data as rd
from napari_unet.bioimageio import load_model_or_package
from napari_unet.core.inference import model_labeller, predict_probabilities
from napari_unet.core.progress import run_to_end
from napari_unet.core.training import TrainSettings, run_training

ROOT = Path(__file__).resolve().parent.parent
PLOT = ROOT / "docs" / "images" / "ap_vs_minutes_real.png"
THRESHOLDS = (0.5, 0.75)
PLAIN = {"border_weights": False, "class_balance": False, "gap": 0}
OTSU = "Otsu + watershed"
CURVE_ROWS = ("defaults", "plain")
SPARSE_TARGET, FULL_TARGET = 0.80, 0.88


@dataclass(frozen=True)
class Method:
    """A row: a trained U-Net with TrainSettings overrides, or the classical baseline."""

    key: str
    name: str
    overrides: dict[str, Any] | None  # None: Otsu + watershed
    init: str | None = None  # fine-tune this model file or bundled model (``--fine-tune``)


@dataclass
class Result:
    """A method's counts on each scored image and its training runs."""

    method: Method
    counts: list[np.ndarray] = field(default_factory=list)  # per image: (thresholds, 3)
    seconds: list[float] = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)

    def ap_summed(self) -> np.ndarray:
        """AP per threshold from the counts summed over the images."""
        return rd.ap_from_counts(np.sum(self.counts, axis=0))

    def ap_mean(self) -> np.ndarray:
        """Mean over the images of each image's AP, per threshold."""
        return np.mean([rd.ap_from_counts(c) for c in self.counts], axis=0)


def parse_overrides(assignments: str, text: str) -> dict[str, Any]:
    """``field=value[,field=value]`` -> TrainSettings overrides (Python literals or strings)."""
    known = {f.name for f in fields(TrainSettings)}
    overrides: dict[str, Any] = {}
    for item in assignments.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in known:
            raise argparse.ArgumentTypeError(
                f"{item!r} in {text!r}: expected field=value with a TrainSettings field, one of "
                f"{', '.join(sorted(known))}"
            )
        try:
            overrides[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[key] = value
    return overrides


def parse_ablation(text: str) -> Method:
    """``NAME:field=value[,field=value]`` -> a Method (values as Python literals or strings)."""
    name, sep, assignments = text.partition(":")
    if not sep or not name.strip() or not assignments.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:field=value[,...], got {text!r}")
    return Method(f"ablation:{name.strip()}", name.strip(), parse_overrides(assignments, text))


def parse_fine_tune(text: str) -> Method:
    """``NAME:MODEL[:field=value,...]`` -> a Method fine-tuning MODEL (a model file or a
    bundled name) with the fine-tuning defaults and these overrides."""
    name, sep, rest = text.partition(":")
    init, _, assignments = rest.partition(":")
    if not sep or not name.strip() or not init.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:MODEL[:field=value,...], got {text!r}")
    overrides = parse_overrides(assignments, text) if assignments.strip() else {}
    return Method(f"fine-tune:{name.strip()}", name.strip(), overrides, init.strip())


def parse_as_is(text: str) -> Method:
    """``NAME:MODEL`` -> a Method segmenting with MODEL as it is (no training)."""
    name, sep, init = text.partition(":")
    if not sep or not name.strip() or not init.strip():
        raise argparse.ArgumentTypeError(f"expected NAME:MODEL, got {text!r}")
    return Method(f"as-is:{name.strip()}", name.strip(), None, init.strip())


def methods_from(args: argparse.Namespace) -> list[Method]:
    """The rows asked for on the command line, in table order."""
    builtin = {
        "defaults": Method("defaults", "napari-unet (defaults)", {}),
        "plain": Method("plain", "plain reference", dict(PLAIN)),
        "otsu": Method("otsu", OTSU, None),
    }
    return (
        [builtin[k] for k in args.rows]
        + list(args.ablation)
        + list(args.fine_tune)
        + list(args.as_is)
    )


def _settings(args: argparse.Namespace, budget: float, method: Method):
    """TrainSettings for a run of ``budget`` minutes (or iterations with --iterations): the
    defaults (of fine-tuning for a ``--fine-tune`` row) with the method's overrides."""
    limit = {"iterations": int(budget), "minutes": None}
    if not args.iterations:
        limit = {"iterations": None, "minutes": float(budget)}
    base = {"seed": args.seed, "device": args.device, **limit}
    overrides = {**base, **(method.overrides or {})}
    preset = overrides.pop("preset", TrainSettings().preset)
    return TrainSettings.for_preset(preset, fine_tune=method.init is not None, **overrides)


def train_model(images, labels, regions, settings: TrainSettings, init: str | None = None):
    """Train in a worker thread, as the Train widget does; return the model and the seconds.

    ``init``: fine-tune this model file or bundled model (loaded before the clock starts).

    (A worker thread also keeps libgomp from spin-waiting at full count when other processes
    share the cores, which made main-thread runs several times slower on a shared CPU.)
    """
    start = None if init is None else load_model_or_package(init)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        job = pool.submit(run_training, images, labels, regions, settings=settings, model=start)
        model = job.result()
    return model, time.perf_counter() - t0


def _log(text: str) -> None:
    print(f"[real] {text}", file=sys.stderr, flush=True)


def model_labels(args: argparse.Namespace, model, image: np.ndarray) -> list[np.ndarray]:
    """The model's labels with its own post-processing, then with each
    ``--also-min-confidence`` value (the probabilities computed once)."""
    prob = run_to_end(predict_probabilities(model, image, device=args.device))
    return [
        model_labeller(model)(prob),
        *(model_labeller(model, min_confidence=c)(prob) for c in args.also_min_confidence),
    ]


def predict_untrained(args: argparse.Namespace, method: Method, image: np.ndarray) -> list:
    """Labels without training: Otsu + watershed, or the ``--as-is`` model's segmentations
    (:func:`model_labels`)."""
    if method.init is None:
        return [rd.otsu_watershed(image)]
    return model_labels(args, load_model_or_package(method.init), image)


def variant_results(args: argparse.Namespace, method: Method) -> list[Result]:
    """A method's row, and for a U-Net one row per ``--also-min-confidence`` value."""
    results = [Result(method)]
    if method.overrides is not None or method.init is not None:
        results += [
            Result(
                replace(method, key=f"{method.key}@{c:g}", name=f"{method.name}, min conf. {c:g}")
            )
            for c in args.also_min_confidence
        ]
    return results


def full_split(args: argparse.Namespace) -> tuple[list[rd.Sample], list[rd.Sample]]:
    """The full protocol's training and scored images: the train and test splits, or with
    ``--split train`` the first ``--images-from`` train images and the other train images."""
    train = rd.load_split(args.data, "train")
    if args.split == "train":
        return train[: args.images_from], train[args.images_from :][: args.images]
    return train, rd.load_split(args.data, "test")[: args.images]


def run_full(args: argparse.Namespace, methods: list[Method]) -> list[Result]:
    """Train each method on the train split and score it on the test images (or on train
    images it did not see, with ``--split train``)."""
    train, test = full_split(args)
    results = []
    for method in methods:
        rows = variant_results(args, method)
        if method.overrides is None:
            preds = [predict_untrained(args, method, s.image) for s in test]
        else:
            settings = _settings(args, args.full_budget, method)
            model, seconds = train_model(
                [s.image for s in train], [s.labels for s in train], None, settings, method.init
            )
            for row in rows:
                row.seconds.append(seconds)
                row.iterations.append(model.training["summary"]["iterations_done"])
            preds = [model_labels(args, model, s.image) for s in test]
        for k, row in enumerate(rows):
            row.counts = [
                rd.score_whole(s.labels, p[k], THRESHOLDS) for s, p in zip(test, preds, strict=True)
            ]
            _log(f"full {row.method.name}: AP {np.round(row.ap_summed(), 3).tolist()}")
        results += rows
    return results


def sparse_one(args, sample: rd.Sample, box: rd.Box, method: Method, budget: float):
    """Counts outside the box for one method on one image (a list: the method's, then its
    ``--also-min-confidence`` variants'), the seconds and the iterations."""
    if method.overrides is None:
        preds = predict_untrained(args, method, sample.image)
        return [rd.score_outside(sample.labels, p, box, THRESHOLDS) for p in preds], 0.0, 0
    painted, region = rd.sparse_annotation(sample.labels, box)
    settings = _settings(args, budget, method)
    model, seconds = train_model(sample.image, painted, region, settings, method.init)
    preds = model_labels(args, model, sample.image)
    counts = [rd.score_outside(sample.labels, p, box, THRESHOLDS) for p in preds]
    summary = model.training["summary"]
    _log(
        f"sparse {sample.name} {method.name}: {summary['iterations_done']} iterations, "
        f"{summary['validation_cells']} held-out cells, checkpoint {summary['checkpoint']} "
        f"(iteration {summary['best_iteration']}, validation {summary['validation']})"
    )
    return counts, seconds, int(summary["iterations_done"])


def run_sparse(args: argparse.Namespace, methods: list[Method]):
    """Every method on every chosen image (``--split``, ``--images-from``, ``--images``);
    returns the samples, boxes and results."""
    samples = rd.load_split(args.data, args.split)[args.images_from :]
    samples = samples[: args.images]
    boxes = [rd.choose_box(s.labels) for s in samples]
    results = []
    for method in methods:
        rows = variant_results(args, method)
        for sample, box in zip(samples, boxes, strict=True):
            counts, seconds, iterations = sparse_one(args, sample, box, method, args.sparse_budget)
            for row, row_counts in zip(rows, counts, strict=True):
                row.counts.append(row_counts)
                if method.overrides is not None:
                    row.seconds.append(seconds)
                    row.iterations.append(iterations)
                ap = rd.ap_from_counts(row_counts)
                _log(f"sparse {sample.name} {row.method.name}: AP {np.round(ap, 3).tolist()}")
        results += rows
    return samples, boxes, results


def run_curve(args, samples, boxes, results: list[Result]) -> dict[str, list[tuple]]:
    """Mean AP@0.5 against measured training minutes on the first ``--curve-images`` images.

    Separate runs of shorter budgets (``--curve`` fractions of the protocol's budget; the
    cosine schedule makes a checkpoint of a longer run something else), plus the full-budget
    point of the main runs. Returns ``{row name: [(minutes, mean AP@0.5, summed AP@0.5)]}``.
    """
    n = min(args.curve_images, len(samples))
    curves: dict[str, list[tuple]] = {}
    for result in results:
        key = result.method.key
        curve_row = key in CURVE_ROWS or (key.startswith("fine-tune") and "@" not in key)
        if not curve_row or n == 0:
            continue
        points = []
        for fraction in args.curve:
            budget = args.sparse_budget * fraction
            if args.iterations:
                budget = max(1, round(budget))
            runs = [
                sparse_one(args, s, b, result.method, budget)
                for s, b in zip(samples[:n], boxes[:n], strict=True)
            ]
            points.append(_curve_point([r[0][0] for r in runs], [r[1] for r in runs]))
            _log(f"curve {result.method.name} x{fraction:g}: {points[-1]}")
        points.append(_curve_point(result.counts[:n], result.seconds[:n]))
        curves[result.method.name] = points
    return curves


def _curve_point(counts: list[np.ndarray], seconds: list[float]) -> tuple[float, float, float]:
    mean_ap = float(np.mean([rd.ap_from_counts(c)[0] for c in counts]))
    return float(np.mean(seconds)) / 60, mean_ap, float(rd.ap_from_counts(np.sum(counts, 0))[0])


def _budget_text(args: argparse.Namespace, budget: float) -> str:
    return f"{int(budget)} iterations" if args.iterations else f"{budget:g} minutes"


def results_table(results: list[Result]) -> list[str]:
    """Markdown rows: AP summed and mean per image at each threshold, training time."""
    lines = [
        "| method | AP@0.5 | AP@0.75 | mean AP@0.5 per image | mean AP@0.75 per image "
        "| train min (per run) | iterations (per run) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        summed, mean = r.ap_summed(), r.ap_mean()
        minutes = f"{np.mean(r.seconds) / 60:.2f}" if r.seconds else "-"
        its = f"{np.mean(r.iterations):.0f}" if r.iterations else "-"
        lines.append(
            f"| {r.method.name} | {summed[0]:.3f} | {summed[1]:.3f} | {mean[0]:.3f} "
            f"| {mean[1]:.3f} | {minutes} | {its} |"
        )
    return lines


def sparse_image_table(samples, boxes, results: list[Result]) -> list[str]:
    """Markdown rows: each image's box, scored nuclei and AP@0.5 of every method."""
    head = "| image | size | nuclei | box (nuclei centred inside) | scored nuclei |"
    lines = [head + "".join(f" {r.method.name} |" for r in results)]
    lines.append("| --- | --- | ---: | --- | ---: |" + " ---: |" * len(results))
    for i, (sample, box) in enumerate(zip(samples, boxes, strict=True)):
        n = len(rd.centroids(sample.labels)[0])
        aps = "".join(f" {rd.ap_from_counts(r.counts[i])[0]:.3f} |" for r in results)
        size = "x".join(map(str, sample.labels.shape))
        lines.append(f"| {sample.name} | {size} | {n} | {box} | {n - box.count} |{aps}")
    return lines


def curve_table(curves: dict[str, list[tuple]]) -> list[str]:
    """Markdown rows of the AP-against-minutes points."""
    lines = [
        "| method | train min | mean AP@0.5 per image | AP@0.5 (summed) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, points in curves.items():
        lines += [f"| {name} | {m:.2f} | {a:.3f} | {s:.3f} |" for m, a, s in points]
    return lines


def _target_line(results: list[Result], target: float, what: str) -> list[str]:
    """``['', 'Target ... met (AP)']`` for the defaults row, ``[]`` without one."""
    for r in results:
        if r.method.key == "defaults":
            ap = r.ap_mean()[0] if what == "mean" else r.ap_summed()[0]
            verdict = "met" if ap >= target else "NOT met"
            return [
                "",
                f"Target {what} AP@0.5 >= {target:.2f} (issue 11): **{verdict}** ({ap:.3f}).",
            ]
    return []


def full_section(args, command: str, results: list[Result]) -> list[str]:
    """The markdown of the full protocol."""
    train, test = full_split(args)
    scored = "test images" if args.split == "test" else "other train images (tuning)"
    return [
        f"### Full protocol: train on {len(train)} train images, score on {len(test)} {scored}",
        "",
        f"Command: `{command}`. One model per row trained on {len(train)} train images "
        f"(all labels, no region) for {_budget_text(args, args.full_budget)}, seed {args.seed}; "
        f"scored on {len(test)} {scored} (whole objects, whole images).",
        "",
        *results_table(results),
        *_target_line(results, FULL_TARGET, "summed"),
    ]


def sparse_section(args, command: str, samples, boxes, results, curves) -> list[str]:
    """The markdown of the sparse protocol (and its AP-against-minutes points)."""
    lines = [
        f"### Sparse protocol: a few nuclei painted in a box of the {args.split} image itself",
        "",
        f"Command: `{command}`. For each {args.split} image, the ground truth inside a box of "
        "about a third of the image (clipped at its edge) is the annotation and the box the "
        "region; "
        f"{_budget_text(args, args.sparse_budget)} of training on that image alone, seed "
        f"{args.seed}; scored on the nuclei whose centroid lies outside the box (whole-image "
        "one-to-one matching; unmatched predictions count as false positives when their "
        "centroid is outside). Box and scoring rules: bench/real_data.py.",
        "",
        *results_table(results),
        *_target_line(results, SPARSE_TARGET, "mean"),
        "",
        "AP@0.5 per image:",
        "",
        *sparse_image_table(samples, boxes, results),
    ]
    if curves:
        lines += [
            "",
            f"AP@0.5 against training minutes (same command; separate runs of "
            f"{', '.join(f'{c:g}' for c in args.curve)} x the budget and the main runs, on the "
            f"first {min(args.curve_images, len(samples))} images):",
            "",
            *curve_table(curves),
        ]
    return lines


def _shown(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; ``--quick`` fills in small budgets where none was given."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=rd.DEFAULT_DATA, help="dataset folder")
    parser.add_argument("--protocols", nargs="+", choices=("full", "sparse"), default=None)
    parser.add_argument("--rows", nargs="+", choices=("defaults", "plain", "otsu"), default=None)
    parser.add_argument(
        "--ablation",
        action="append",
        type=parse_ablation,
        default=[],
        metavar="NAME:FIELD=VALUE[,...]",
        help="a row trained with these TrainSettings overrides (repeatable)",
    )
    parser.add_argument(
        "--fine-tune",
        action="append",
        type=parse_fine_tune,
        default=[],
        metavar="NAME:MODEL",
        help="a row fine-tuning MODEL (a .pt file or a bundled model, e.g. nuclei) (repeatable)",
    )
    parser.add_argument(
        "--as-is",
        action="append",
        type=parse_as_is,
        default=[],
        metavar="NAME:MODEL",
        help="a row segmenting with MODEL as it is, without training (repeatable)",
    )
    parser.add_argument(
        "--also-min-confidence",
        action="append",
        type=float,
        default=[],
        metavar="C",
        help="also score every U-Net row's model with this min_confidence (an extra row from "
        "the same trained model; repeatable)",
    )
    parser.add_argument("--minutes", type=float, help="budget of both protocols (default 5 / 3)")
    parser.add_argument("--iterations", type=int, help="budget in iterations instead of minutes")
    parser.add_argument("--images", type=int, help="score only the first N test images")
    parser.add_argument(
        "--split",
        choices=("test", "train"),
        default="test",
        help="the images scored (train: for tuning, see --images-from; default test)",
    )
    parser.add_argument(
        "--images-from",
        type=int,
        default=0,
        metavar="K",
        help="skip the first K images of the split (sorted by name); full protocol with "
        "--split train: train on them and score the others",
    )
    parser.add_argument(
        "--curve",
        type=lambda t: [float(v) for v in t.split(",")],
        help="sparse AP-vs-minutes budgets as fractions of the budget (default 0.167,0.333,0.667)",
    )
    parser.add_argument("--curve-images", type=int, help="images of the curve (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="training and inference device")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    parser.add_argument("--quick", action="store_true", help="20 iterations, 2 images")
    parser.add_argument("--out", type=Path, help="also write the markdown section here")
    parser.add_argument("--plot", type=Path, help=f"AP-vs-minutes plot (default {PLOT})")
    args = parser.parse_args(argv)
    args.protocols = args.protocols or ["full", "sparse"]
    if args.images_from < 0:
        parser.error(f"--images-from must be >= 0, got {args.images_from}")
    if args.split == "train" and "full" in args.protocols and args.images_from < 1:
        parser.error("--split train with the full protocol trains on --images-from K >= 1 images")
    args.rows = args.rows or ["defaults", "plain", "otsu"]
    if args.quick:
        args.iterations = args.iterations or 20
        args.images = args.images or 2
        args.curve = args.curve or [0.5]
        args.curve_images = 1 if args.curve_images is None else args.curve_images
    args.curve = args.curve or [1 / 6, 1 / 3, 2 / 3]
    args.curve_images = 3 if args.curve_images is None else args.curve_images
    budgets = (args.iterations,) * 2 if args.iterations else (args.minutes or 5, args.minutes or 3)
    args.full_budget, args.sparse_budget = budgets
    if args.plot is None and not args.quick:
        args.plot = PLOT
    return args


def report(args: argparse.Namespace, command: str) -> str:
    """Run the protocols ``args`` asks for and return the markdown section (writes the plot)."""
    methods = methods_from(args)
    started = time.perf_counter()
    lines = ["## Real nuclei, full and sparse annotation (bench/bench_real.py)", ""]
    if "full" in args.protocols:
        lines += [*full_section(args, command, run_full(args, methods)), ""]
    if "sparse" in args.protocols:
        samples, boxes, results = run_sparse(args, methods)
        curves = run_curve(args, samples, boxes, results)
        lines += [*sparse_section(args, command, samples, boxes, results, curves), ""]
        if curves and args.plot:
            import plot_quality

            n = min(args.curve_images, len(samples))
            otsu = [_curve_point(r.counts[:n], [0.0])[1] for r in results if r.method.key == "otsu"]
            plot_quality.plot_real_curve(curves, otsu[0] if otsu else None, args.plot)
            lines += [f"Plot: `{_shown(args.plot)}`.", ""]
    from _machine import machine_table

    lines += [
        f"Machine ({(time.perf_counter() - started) / 60:.1f} minutes for this command):",
        "",
        machine_table(),
    ]
    return "\n".join(lines)


def run(quick: bool = False) -> str:
    """The section with the default settings (``--quick`` when ``quick``), for bench/run_all.py."""
    argv = ["--quick"] if quick else []
    return report(parse_args(argv), " ".join(["python bench/bench_real.py", *argv]))


def main(argv: list[str] | None = None) -> int:
    """Run the protocols, print the markdown (and write --out and the plot); return 0."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    command = shlex.join(
        ["python", "bench/bench_real.py", *(sys.argv[1:] if argv is None else argv)]
    )
    text = report(args, command)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
