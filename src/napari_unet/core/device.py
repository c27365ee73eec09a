"""Choice of the torch device and a human-readable description of it."""

from __future__ import annotations

import logging

import torch

__all__ = ["available_devices", "describe_device", "select_device"]

logger = logging.getLogger(__name__)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Return the device names this machine offers, best first.

    Returns
    -------
    list of str
        ``'auto'`` first, then ``'cuda:N'`` for every CUDA device, ``'mps'`` on Apple silicon,
        and ``'cpu'`` last.
    """
    names = ["auto"]
    if torch.cuda.is_available():
        names += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        names.append("mps")
    names.append("cpu")
    return names


def select_device(name: str | torch.device = "auto") -> torch.device:
    """Return the torch device for a user's choice.

    Parameters
    ----------
    name : str or torch.device
        ``'auto'`` (CUDA if present, then Apple MPS, then CPU), ``'cpu'``, ``'cuda'``,
        ``'cuda:N'`` or ``'mps'``.

    Returns
    -------
    torch.device
        The device.

    Raises
    ------
    ValueError
        If the name is not one of the above, or the device it names is not present on this
        machine. There is never a silent fall-back to another device.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(f"device must be a string such as 'auto' or 'cuda:0', got {name!r}")
    key = name.strip().lower()
    if key == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' was requested but Apple MPS is not available here")
        return torch.device("mps")
    if key == "cuda" or key.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was requested but CUDA is not available on this machine "
                f"(available: {', '.join(available_devices())})"
            )
        index_text = key.partition(":")[2] or str(torch.cuda.current_device())
        if not index_text.isdigit():
            raise ValueError(f"device {name!r}: expected 'cuda:N' with an integer N")
        index = int(index_text)
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} was requested but only {torch.cuda.device_count()} CUDA "
                "device(s) exist"
            )
        return torch.device("cuda", index)
    raise ValueError(f"unknown device {name!r}; expected 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")


def describe_device(device: torch.device | str) -> str:
    """One line saying where computation runs, for the GUI and the command line.

    Parameters
    ----------
    device : torch.device or str
        A device, or a name accepted by :func:`select_device`.

    Returns
    -------
    str
        For example ``'NVIDIA H100 80GB HBM3 (cuda:0)'``, ``'Apple MPS'`` or ``'CPU, 2 threads'``.

    Examples
    --------
    >>> describe_device("cpu").startswith("CPU, ")
    True
    """
    dev = select_device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        return f"{torch.cuda.get_device_name(index)} (cuda:{index})"
    if dev.type == "mps":
        return "Apple MPS"
    n = torch.get_num_threads()
    return f"CPU, {n} thread{'s' if n != 1 else ''}"
