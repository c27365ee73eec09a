"""Check a package as ``bioimageio test`` does (``bioimageio.core``): every weight format."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

__all__ = ["PackageCheck", "check_package"]


@dataclass(frozen=True)
class PackageCheck:
    """The outcome of :func:`check_package`.

    Parameters
    ----------
    passed : bool
        Every check passed.
    weight_formats : tuple of str
        The weight formats that were run.
    problems : list of str
        One line per failed check (empty when ``passed``).
    """

    passed: bool
    weight_formats: tuple[str, ...]
    problems: list[str] = field(default_factory=list)


def check_package(
    path: str | os.PathLike[str], weight_format: str | None = None, device: str = "cpu"
) -> PackageCheck:
    """Run ``bioimageio.core``'s model test on a package.

    The test validates the description, reproduces the test output from the test input with
    each weight format (preprocessing included) and runs inputs of the first admissible sizes
    with batch sizes 1 and 2. Nothing is downloaded.

    Parameters
    ----------
    path : str or path-like
        The package (``.zip``).
    weight_format : str, optional
        Test only this format (``'pytorch_state_dict'``, ``'torchscript'``, ``'onnx'``);
        default: every format in the package.
    device : str
        The torch device to run on.

    Returns
    -------
    PackageCheck
        Whether it passed, and what failed.
    """
    from bioimageio.core import test_model

    summary = test_model(os.fspath(path), weight_format=weight_format, devices=[device])
    problems = [
        f"{detail.name}: {error.msg.strip().splitlines()[0] if error.msg.strip() else ''}"
        for detail in summary.details
        if detail.status == "failed"
        for error in (detail.errors or [])
    ]
    formats = tuple(
        sorted(
            {
                str(detail.loc[1])
                for detail in summary.details
                if len(detail.loc) >= 2 and detail.loc[0] == "weights"
            }
        )
    )
    passed = summary.status == "passed"
    if not passed and not problems:
        problems = [f"bioimageio test: status {summary.status!r}"]
    return PackageCheck(passed=passed, weight_formats=formats, problems=problems)
