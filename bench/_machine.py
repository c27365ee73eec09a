"""Describe the machine and software a benchmark ran on (for docs/benchmarks.md)."""

from __future__ import annotations

import datetime as _dt
import os
import platform


def cpu_model() -> str:
    """Return the CPU model name from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> float:
    """Return the machine's total memory in GiB (0 when unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def machine_table() -> str:
    """Return a markdown table of the machine, the versions and the date."""
    import numpy
    import scipy
    import torch

    from napari_unet import __version__
    from napari_unet.core.device import describe_device, select_device

    gpu = "none"
    if torch.cuda.is_available():
        gpu = describe_device(select_device("cuda"))
    rows = [
        ("date", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{cpu_model()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"),
        ("memory", f"{memory_gib():.0f} GiB"),
        ("GPU", gpu),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        (
            "versions",
            f"napari-unet {__version__}, torch {torch.__version__}, numpy {numpy.__version__}, "
            f"scipy {scipy.__version__}",
        ),
    ]
    lines = ["| | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)
