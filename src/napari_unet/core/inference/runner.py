"""The network ready for inference: eval copy, precision, test-time augmentation, OOM test.

:func:`make_runner` makes a private eval-mode copy of a model's network on a device (channels-last
on CPU and CUDA, bfloat16 autocast on CUDA by default), or on the CPU by default the network
exported to ONNX Runtime or OpenVINO (:mod:`.runtimes`; a same-padding network as the interior
of its output, :attr:`NetworkRunner.trim`); calling the :class:`NetworkRunner` on a
batch ``(N, C, H, W)`` gives the foreground probability ``(N, H, W)``
(:func:`foreground_probability`), or for a model of the classes mode the probability of every
class ``(N, K, H, W)`` (:func:`class_probabilities`), optionally as the mean over the 8 flips and
90-degree rotations.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

from ..model import TrainedModel, UNet
from .interior import interior_trim
from .runtimes import ExportedNetwork, exported_network_or_none, resolve_runtime

__all__ = [
    "NetworkRunner",
    "class_probabilities",
    "cudnn_benchmark",
    "foreground_probability",
    "is_out_of_memory",
    "make_runner",
    "resolve_precision",
]


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """Foreground probability from class logits ``(N, K, H, W)``: ``1 - softmax[:, 0]``.

    For two classes this is ``sigmoid(l1 - l0)``, computed in float32.

    Parameters
    ----------
    logits : torch.Tensor
        Network output.

    Returns
    -------
    torch.Tensor
        float32 ``(N, H, W)``.
    """
    logits = logits.float()
    if logits.shape[1] == 2:
        return torch.sigmoid(logits[:, 1] - logits[:, 0])
    return 1.0 - torch.softmax(logits, dim=1)[:, 0]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Probability of every class from class logits ``(N, K, H, W)``: their softmax (float32).

    Parameters
    ----------
    logits : torch.Tensor
        Network output, one channel per class.

    Returns
    -------
    torch.Tensor
        float32 ``(N, K, H, W)``, summing to 1 over ``K``.
    """
    return torch.softmax(logits.float(), dim=1)


@dataclass(frozen=True)
class NetworkRunner:
    """A network ready for inference on one device.

    ``classes``: the output is the probability of every class ``(N, K, H, W)`` (a model of
    the classes mode) instead of the foreground probability ``(N, H, W)``.
    """

    net: Callable[[torch.Tensor], torch.Tensor]
    device: torch.device
    autocast: torch.dtype | None
    channels_last: bool
    tta: bool
    runtime: str = "torch"
    classes: bool = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Probabilities ``(N, H, W)`` (``(N, K, H, W)`` with ``classes``) of a batch
        ``(N, C, H, W)`` on the device (``(N, D, H, W)`` of ``(N, C, D, H, W)`` for a 3D
        network; test-time augmentation then uses the 8 in-plane flips and rotations)."""
        if not self.tta:
            return self._one(x)
        total = None
        for k in range(4):
            for flip in (False, True):
                xt = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                p = torch.rot90(self._one(xt), -k, dims=(-2, -1))
                p = p.flip(-1) if flip else p
                total = p if total is None else total + p
        return total / 8.0

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = (
            torch.autocast(self.device.type, dtype=self.autocast)
            if self.autocast is not None
            else nullcontext()
        )
        with ctx:
            logits = self.net(x)
        return class_probabilities(logits) if self.classes else foreground_probability(logits)

    @property
    def trim(self) -> tuple[int, ...] | None:
        """Pixels the output lacks on each side of each spatial axis, against the torch network's
        (an exported interior, :mod:`.interior`); None: the whole output."""
        return self.net.trim if isinstance(self.net, ExportedNetwork) else None

    def release_memory(self) -> None:
        """Let an exported graph's runtime give its working memory back (after a prediction)."""
        if isinstance(self.net, ExportedNetwork):
            self.net.release_memory()


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None for float32.

    Parameters
    ----------
    precision : {'auto', 'float32', 'bfloat16'}
        ``'auto'``: bfloat16 on CUDA, float32 elsewhere.
    device : torch.device
        Where the network runs.

    Returns
    -------
    torch.dtype or None
        ``torch.bfloat16``, or None (no autocast).

    Raises
    ------
    ValueError
        On another ``precision``.
    """
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    raise ValueError(f"precision must be 'auto', 'float32' or 'bfloat16', got {precision!r}")


def make_runner(
    model: TrainedModel,
    device: torch.device,
    tta: bool,
    precision: str,
    runtime: str = "auto",
) -> NetworkRunner:
    """The model's network ready for inference on ``device`` (the model is left untouched).

    Parameters
    ----------
    model : TrainedModel
        The model.
    device : torch.device
        Where the network runs.
    tta : bool
        Test-time augmentation (the mean over the 8 flips and 90-degree rotations).
    precision : {'auto', 'float32', 'bfloat16'}
        As for :func:`resolve_precision`.
    runtime : {'auto', 'torch', 'onnxruntime', 'openvino'}
        As for :func:`~napari_unet.core.inference.runtimes.resolve_runtime`. When export or the
        graph runtime fails, the network runs in torch (one logged warning says why).

    Returns
    -------
    NetworkRunner
        An exported graph (for a same-padding U-Net the interior of its output without the
        halo, :attr:`NetworkRunner.trim`), or a private eval-mode copy of the torch network;
        class probabilities for a model of the classes mode.
    """
    classes = model.mode == "classes"
    autocast = resolve_precision(precision, device)
    used = resolve_runtime(runtime, device, autocast, model.net)
    graph = None
    if used != "torch":
        trim = interior_trim(model.config) if isinstance(model.net, UNet) else None
        graph = exported_network_or_none(model, used, trim=trim)
    if graph is not None:
        return NetworkRunner(graph, device, None, False, bool(tta), used, classes)
    net = copy.deepcopy(model.net).to(device).eval()
    # channels-last for 2D networks (a 5D input would need channels_last_3d, not measured here)
    channels_last = device.type in ("cuda", "cpu") and model.config.spatial_dims == 2
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return NetworkRunner(net, device, autocast, channels_last, bool(tta), classes=classes)


@contextmanager
def cudnn_benchmark(device: torch.device) -> Iterator[None]:
    """Within the block, let cuDNN pick the fastest kernels for the one tile shape (CUDA only)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True  # one tile shape: the fastest kernel is found once
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


#: CUDA's out-of-memory error (``torch.OutOfMemoryError`` since torch 2.5).
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device (CUDA, or the CPU allocator) ran out of memory."""
    if isinstance(exc, _OUT_OF_MEMORY):
        return True
    return isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
