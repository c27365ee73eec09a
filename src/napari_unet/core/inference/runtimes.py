"""Where the network runs: torch, or a graph exported to ONNX and run by ONNX Runtime or OpenVINO.

On the CPU an exported graph runs the fast preset's network 1.6-2.8x faster than torch (largest
gains on large tiles; OpenVINO a few per cent ahead of ONNX Runtime, with less working memory, in
bench/bench_runtimes.py); on CUDA and MPS torch stays. The graph is exported once per model and
session with dynamic batch and spatial axes (so one export serves every tile shape of the model)
and cached under a content hash of the model's weights and configuration
(:func:`model_fingerprint`): a model changed by training gets a new export, never a stale one.
For the tile engine a same-padding network is exported as its interior
(:class:`~napari_unet.core.inference.interior.InteriorUNet`): the output without the halo the
engine throws away, computed without the border (0.76x the arithmetic of the whole network for
a depth-4 fast network on a 1248² tile).

An :class:`ExportedNetwork` maps an input batch ``(N, C, H, W)`` to class logits as the torch
network does (without :attr:`ExportedNetwork.trim` pixels per side for an interior export), so
the tile engine's runner (precision, test-time augmentation, foreground probability) stays the
same whichever runtime is behind it. Each export is checked once against
the torch network on a small input; if export, the runtime or that check fails,
:func:`exported_network_or_none` logs one warning saying why and the caller goes on in torch.

Threads follow torch's setting (:func:`torch.get_num_threads`, which follows ``OMP_NUM_THREADS``).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import io
import json
import logging
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch

from ..device import describe_device, select_device
from ..model import TrainedModel, UNet, UNetConfig
from .interior import InteriorUNet

__all__ = [
    "CPU_DEFAULT_RUNTIME",
    "GRAPH_RUNTIMES",
    "RELEASE_AFTER_S",
    "RUNTIMES",
    "RUNTIME_NAMES",
    "ExportedNetwork",
    "available_runtimes",
    "clear_runtime_cache",
    "describe_runtime",
    "export_onnx",
    "exported_network",
    "exported_network_or_none",
    "model_fingerprint",
    "resolve_runtime",
]

logger = logging.getLogger(__name__)

#: The runtimes that run an exported graph (on the CPU only).
GRAPH_RUNTIMES = ("onnxruntime", "openvino")
#: The runtime choices a user has.
RUNTIMES = ("auto", "torch", *GRAPH_RUNTIMES)
#: What ``'auto'`` runs on the CPU (the faster of the two in bench/bench_runtimes.py).
CPU_DEFAULT_RUNTIME = "openvino"
#: Readable names, for the device readout.
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "torch": "torch"}
#: ONNX opset of the export.
OPSET = 17
#: Largest difference in class probability the check of a fresh export accepts.
EXPORT_TOLERANCE = 1e-4
#: Exported networks kept for the session (least recently used dropped first).
CACHE_SIZE = 4
#: Seconds an exported network keeps its working memory after a prediction before giving it
#: back (a next prediction within that time reuses it: 0.06 s at 1248², 0.2 s at 2272² saved).
RELEASE_AFTER_S = 10.0

_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}
Trim = tuple[int, ...] | None
_Key = tuple[str, str, int, Trim]
_cache: OrderedDict[_Key, ExportedNetwork] = OrderedDict()
_failed: dict[_Key, str] = {}
_cache_lock = threading.Lock()


def _installed(runtime: str) -> bool:
    return runtime == "torch" or importlib.util.find_spec(_MODULES[runtime]) is not None


def available_runtimes() -> list[str]:
    """The runtime choices this installation offers: ``'auto'``, ``'torch'`` and those installed.

    Returns
    -------
    list of str
        A subset of :data:`RUNTIMES`, in its order.
    """
    return [r for r in RUNTIMES if r == "auto" or _installed(r)]


def resolve_runtime(
    runtime: str,
    device: torch.device | str,
    autocast: torch.dtype | None = None,
    net: object = None,
) -> str:
    """The runtime a choice means on a device.

    Parameters
    ----------
    runtime : {'auto', 'torch', 'onnxruntime', 'openvino'}
        ``'auto'``: on the CPU in float32, :data:`CPU_DEFAULT_RUNTIME` when it is installed,
        else the other graph runtime when installed, else torch; torch on CUDA and MPS, under
        autocast and for a network other than :class:`~napari_unet.core.model.UNet`.
    device : torch.device or str
        Where the network runs.
    autocast : torch.dtype, optional
        The autocast precision the network is to run in (None: float32). Exported graphs run
        in float32 only.
    net : object, optional
        The network to run, when known: ``'auto'`` runs any other network than a
        :class:`~napari_unet.core.model.UNet` in torch (its forward may branch on values,
        which an export does not follow).

    Returns
    -------
    str
        ``'torch'``, ``'onnxruntime'`` or ``'openvino'``.

    Raises
    ------
    ValueError
        If ``runtime`` is not one of :data:`RUNTIMES`, or names a graph runtime for a device
        other than the CPU or together with autocast.

    Examples
    --------
    >>> resolve_runtime("torch", "cpu")
    'torch'
    """
    if not isinstance(runtime, str) or runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    kind = torch.device(device).type
    if runtime == "auto":
        if kind != "cpu" or autocast is not None or (net is not None and not isinstance(net, UNet)):
            return "torch"
        order = (CPU_DEFAULT_RUNTIME, *(r for r in GRAPH_RUNTIMES if r != CPU_DEFAULT_RUNTIME))
        return next((r for r in order if _installed(r)), "torch")
    if runtime in GRAPH_RUNTIMES and kind != "cpu":
        raise ValueError(
            f"runtime {runtime!r} runs on the CPU only; got device {str(device)!r} "
            "(use runtime 'torch' or 'auto' there)"
        )
    if runtime in GRAPH_RUNTIMES and autocast is not None:
        raise ValueError(
            f"runtime {runtime!r} runs in float32 only; got autocast to {autocast} "
            "(use precision 'float32' or runtime 'torch')"
        )
    return runtime


def describe_runtime(device: torch.device | str, runtime: str = "auto") -> str:
    """One line saying where and in what the network runs, for the GUI and the command line.

    Parameters
    ----------
    device : torch.device or str
        A device or a device name (see :func:`~napari_unet.core.device.select_device`).
    runtime : str
        A runtime choice, as for :func:`resolve_runtime`.

    Returns
    -------
    str
        For example ``'CPU (ONNX Runtime), 2 threads'``, ``'CPU, 2 threads'`` (torch) or
        ``'NVIDIA H100 80GB HBM3 (cuda:0)'``.

    Examples
    --------
    >>> describe_runtime("cpu", "torch").startswith("CPU, ")
    True
    """
    dev = select_device(device) if isinstance(device, str) else device
    text = describe_device(dev)
    used = resolve_runtime(runtime, dev)
    if used == "torch":
        return text
    return text.replace("CPU", f"CPU ({RUNTIME_NAMES[used]})", 1)


def model_fingerprint(model: TrainedModel) -> str:
    """Content hash of a model's network: configuration, weights and buffers.

    Two models with the same fingerprint compute the same function; any change of a weight
    (training, loading other weights) changes it.

    Parameters
    ----------
    model : TrainedModel
        The model to hash (its configuration and every tensor of its network).

    Returns
    -------
    str
        A hexadecimal BLAKE2b digest.
    """
    digest = hashlib.blake2b(digest_size=20)
    digest.update(json.dumps(model.config.to_dict(), sort_keys=True).encode())
    for name, tensor in sorted(model.net.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _example_input(
    config: UNetConfig, batch: int = 1, extra: int = 0, trim: Trim = None
) -> torch.Tensor:
    """A small admissible input: two grid steps (with ``trim``: twice the trim and one grid
    step, the smallest input of an interior); ``extra`` lengthens the first spatial axis."""
    border, steps = ([2 * t for t in trim], 1) if trim else ([0] * config.spatial_dims, 2)
    pairs = enumerate(zip(border, config.grids, strict=True))
    sizes = [config.admissible_size(b + steps * g, a) for a, (b, g) in pairs]
    sizes[0] = config.admissible_size(border[0] + steps * config.grids[0] + extra, 0)
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, config.in_channels, *sizes, generator=generator)


def export_onnx(model: TrainedModel, trim: Trim = None) -> bytes:
    """The model's network as an ONNX graph with dynamic batch and spatial axes.

    The network is exported in eval mode, in float32, from a private CPU copy (the model is left
    untouched), with torch's TorchScript-based exporter (no extra package needed).

    Parameters
    ----------
    model : TrainedModel
        The model to export; it is left untouched.
    trim : tuple of int, optional
        Export the interior of a same-padding U-Net's output: without ``trim[a]`` pixels on
        each side of spatial axis ``a``, computed without the border
        (:class:`~napari_unet.core.inference.interior.InteriorUNet`). Default: the whole output.

    Returns
    -------
    bytes
        The serialised ONNX model: input ``'image'`` ``(N, C, H, W)``, output ``'logits'``
        ``(N, n_classes, H', W')``.
    """
    if trim is not None and any(trim):
        net = InteriorUNet(model.net, trim)
    else:
        net = copy.deepcopy(model.net).cpu().float().eval()
    names = ("depth", "height", "width")[-model.config.spatial_dims :]
    axes = {0: "batch", **{2 + a: name for a, name in enumerate(names)}}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter is deprecated, and the skip crop's branch on shapes is a
        # constant for a given padding (no crop for 'same', a fixed crop for 'valid').
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (_example_input(model.config, trim=trim),),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={"image": axes, "logits": axes},
            opset_version=OPSET,
            do_constant_folding=True,
        )
    return buffer.getvalue()


class ExportedNetwork:
    """An exported network run by ONNX Runtime or OpenVINO on the CPU.

    Called like the torch network: a float32 batch ``(N, C, H, W)`` (any admissible ``H``,
    ``W``) gives the class logits ``(N, n_classes, H', W')`` as a CPU tensor. The runtime keeps
    its working memory between calls (ONNX Runtime ran a third slower allocating it afresh); call
    :meth:`release_memory` when a prediction is over: the memory goes back
    :data:`RELEASE_AFTER_S` seconds later unless the network runs again before.

    Parameters
    ----------
    graph : bytes
        The ONNX model from :func:`export_onnx`.
    runtime : {'onnxruntime', 'openvino'}
        What runs it.
    threads : int
        Threads of the runtime's thread pool.
    smallest_input : tuple of int
        The smallest input ``(1, C, H, W)`` the network takes (ONNX Runtime gives its memory
        back at the end of a run on it).
    trim : tuple of int, optional
        For a graph exported with a trim (:func:`export_onnx`): the output pixels it leaves out
        on each side of each spatial axis.

    Attributes
    ----------
    trim : tuple of int or None
        As given.
    """

    def __init__(
        self,
        graph: bytes,
        runtime: str,
        threads: int,
        smallest_input: tuple[int, ...],
        trim: Trim = None,
    ) -> None:
        if runtime not in GRAPH_RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(GRAPH_RUNTIMES)}; got {runtime!r}")
        self.runtime, self.threads = runtime, int(threads)
        self.trim = tuple(int(t) for t in trim) if trim is not None and any(trim) else None
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        backend = _OrtBackend if runtime == "onnxruntime" else _OpenVinoBackend
        self._backend = backend(graph, self.threads, smallest_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        try:
            with self._lock:
                self._cancel_release()
                out = self._backend.run(array)
        except Exception as exc:
            if "alloc" in str(exc).lower():  # the tile engine's out-of-memory test reads this
                raise RuntimeError(f"{self.runtime}: can't allocate memory ({exc})") from exc
            raise
        return torch.from_numpy(out)

    def release_memory(self, delay: float | None = None) -> None:
        """Give the runtime's working memory back (the next call allocates it again).

        Parameters
        ----------
        delay : float, optional
            Seconds to wait first (default :data:`RELEASE_AFTER_S`); a call of the network
            meanwhile cancels the release, so that predictions in a row keep the memory. 0:
            release now.
        """
        delay = RELEASE_AFTER_S if delay is None else float(delay)
        with self._lock:
            self._cancel_release()
            if delay <= 0:
                self._backend.release()
                return
            self._timer = threading.Timer(delay, self._release_now)
            self._timer.daemon = True
            self._timer.start()

    @property
    def release_pending(self) -> bool:
        """Whether a delayed :meth:`release_memory` is waiting."""
        return self._timer is not None

    def _release_now(self) -> None:
        with self._lock:
            if self._timer is not None and self._timer is threading.current_thread():
                self._timer = None
                self._backend.release()

    def _cancel_release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def __repr__(self) -> str:
        trim = f", trim={self.trim}" if self.trim else ""
        return f"ExportedNetwork({self.runtime!r}, threads={self.threads}{trim})"


class _OrtBackend:
    def __init__(self, graph: bytes, threads: int, smallest_input: tuple[int, ...]) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name
        self.smallest = np.zeros(smallest_input, np.float32)
        self.shrink = ort.RunOptions()
        self.shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.name: x})[0]

    def release(self) -> None:
        # The arena frees its unused blocks at the end of a run with this option.
        self.session.run(None, {self.name: self.smallest}, self.shrink)


class _OpenVinoBackend:
    def __init__(self, graph: bytes, threads: int, smallest_input: tuple[int, ...]) -> None:
        import openvino as ov

        core = ov.Core()
        config = {
            "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32",  # never bf16/f16 on CPUs that have them
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(core.read_model(graph), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.request.infer({0: x})
        return self.request.get_output_tensor(0).data.copy()

    def release(self) -> None:
        release = getattr(self.compiled, "release_memory", None)  # OpenVINO 2024.3 and later
        if release is not None:
            release()


def _check_export(model: TrainedModel, network: ExportedNetwork) -> None:
    """Raise RuntimeError unless the graph gives the torch network's class probabilities.

    An interior graph is checked against the interior computed in torch
    (:class:`~napari_unet.core.inference.interior.InteriorUNet`, which the tests check against
    the whole network's cropped output: the whole 3D network would take seconds here).
    """
    config, trim = model.config, network.trim
    x = _example_input(config, batch=2, extra=config.grid + 1, trim=trim)
    net = InteriorUNet(model.net, trim) if trim else copy.deepcopy(model.net).cpu().float().eval()
    with torch.inference_mode():
        _compare(
            torch.softmax(network(x), dim=1), torch.softmax(net(x), dim=1), "the graph", "torch"
        )


def _compare(got: torch.Tensor, expected: torch.Tensor, what: str, reference: str) -> None:
    if got.shape != expected.shape:
        raise RuntimeError(f"{what} gives shape {tuple(got.shape)}, {reference} {expected.shape}")
    diff = float((got - expected).abs().max())
    if not diff <= EXPORT_TOLERANCE:
        raise RuntimeError(f"{what} differs from {reference} by {diff:.2g} (> {EXPORT_TOLERANCE})")


def exported_network(
    model: TrainedModel, runtime: str, threads: int | None = None, trim: Trim = None
) -> ExportedNetwork:
    """The model's network exported and loaded in a graph runtime, cached for the session.

    The cache is keyed by :func:`model_fingerprint`, the runtime, the thread count and the
    trim; a fresh export is checked once against the torch network (class probabilities within
    :data:`EXPORT_TOLERANCE` on a small batch of another shape than the export's).

    Parameters
    ----------
    model : TrainedModel
        The model (not modified).
    runtime : {'onnxruntime', 'openvino'}
        The graph runtime.
    threads : int, optional
        Default: :func:`torch.get_num_threads`.
    trim : tuple of int, optional
        Export the interior of a same-padding U-Net's output (see :func:`export_onnx`); what
        the tile engine runs is :func:`~napari_unet.core.inference.interior.interior_trim`.

    Returns
    -------
    ExportedNetwork
        The network.

    Raises
    ------
    ValueError
        If ``runtime`` is not a graph runtime.
    Exception
        Whatever export, the runtime or the check raised (ImportError when the runtime is not
        installed, RuntimeError when the check fails).
    """
    threads = int(threads or torch.get_num_threads())
    return _load(model, runtime, threads, _key(model, runtime, threads, trim))


def _key(model: TrainedModel, runtime: str, threads: int, trim: Trim) -> _Key:
    trim = tuple(int(t) for t in trim) if trim is not None and any(trim) else None
    return (model_fingerprint(model), runtime, threads, trim)


def _load(model: TrainedModel, runtime: str, threads: int, key: _Key) -> ExportedNetwork:
    if runtime not in GRAPH_RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(GRAPH_RUNTIMES)}; got {runtime!r}")
    with _cache_lock:  # one export at a time: a second caller waits and finds it cached
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        config, trim = model.config, key[3]
        border = trim or (0,) * config.spatial_dims
        smallest = (
            1,
            config.in_channels,
            *config.admissible_shape(tuple(2 * t + 1 for t in border)),
        )
        graph = export_onnx(model, trim) if trim else export_onnx(model)
        network = ExportedNetwork(graph, runtime, threads, smallest, trim)
        _check_export(model, network)
        _cache[key] = network
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return network


def exported_network_or_none(
    model: TrainedModel, runtime: str, threads: int | None = None, trim: Trim = None
) -> ExportedNetwork | None:
    """:func:`exported_network`, or None after one logged warning when it fails.

    A model and runtime that failed once are not tried again in the session (and warned about
    once).

    Parameters
    ----------
    model, runtime, threads, trim
        As for :func:`exported_network`.

    Returns
    -------
    ExportedNetwork or None
        None means: run the network in torch.
    """
    threads = int(threads or torch.get_num_threads())
    key = _key(model, runtime, threads, trim)
    if key in _failed:
        logger.debug("running in torch: %s failed earlier (%s)", runtime, _failed[key])
        return None
    try:
        return _load(model, runtime, threads, key)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        _failed[key] = reason
        logger.warning(
            "running the network in torch: %s could not run it (%s)",
            RUNTIME_NAMES.get(runtime, runtime),
            reason,
        )
        return None


def clear_runtime_cache() -> None:
    """Forget every exported network and every failure of this session."""
    with _cache_lock:
        _cache.clear()
        _failed.clear()
