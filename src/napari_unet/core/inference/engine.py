"""The tile engine: a reader thread feeds batches to the network, outputs are cropped and written.

:class:`TileEngine` runs a :class:`~napari_unet.core.inference.plan.Plan` over the slices of a
source as a generator of progress events (:class:`~napari_unet.core.progress.Step`): a reader
thread reads and normalises the next batches of tiles while the current batch runs; each tile's
output is cropped by its halo and handed to a writer. When the device runs out of memory the batch
and then the tile are halved and the unfinished slices start again. Closing the generator early
(the consumer stops iterating) ends the reader thread.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..model import TrainedModel
from ..normalize import check_finite
from ..progress import Step
from .plan import Plan
from .runner import NetworkRunner, cudnn_benchmark, is_out_of_memory
from .source import SliceSource
from .tiling import TileLayout, minimum_tile, reflect_indices, tile_layout

__all__ = ["Cancelled", "TileEngine", "Writer"]

logger = logging.getLogger(__name__)

#: ``write(z, ((y0, y1), (x0, x1)), probabilities)`` (for a volume ``((z0, z1), (y0, y1),
#: (x0, x1))``): where a cropped tile output goes (``(h, w)`` or ``(d, h, w)``, or with a
#: leading class axis ``K`` for a model of the classes mode).
Writer = Callable[[int, tuple[tuple[int, int], ...], np.ndarray], None]


class Cancelled(Exception):
    """Raised when prediction stops because the caller set its ``stop`` event.

    Work finished before the stop (tiles already written to ``out``) stays written. The GUI
    catches this to tell a user's stop from a failure.
    """


_Item = tuple[int, ...]  # (z, iy, ix) or, for a volume, (0, iz, iy, ix)


@dataclass(frozen=True)
class _Batch:
    """A batch on its way back from the network: its tiles, the output on the host and, on
    CUDA, the event that marks the end of the copy."""

    chunk: list[_Item]
    host: torch.Tensor
    event: Any


class _Tally:
    """Counts the written tiles, in all and per slice, as progress events."""

    def __init__(self, items: list[_Item], finished: list[int]) -> None:
        self.total, self.done = len(items), 0
        self.left = Counter(item[0] for item in items)
        self.n_slices = len(self.left)
        self.finished = finished

    def tile_done(self, z: int) -> list[Step]:
        """One more tile of slice ``z`` is written: a 'slice' event if it was its last, then a
        'tiles' event."""
        self.done += 1
        self.left[z] -= 1
        events = []
        if self.left[z] == 0:
            self.finished.append(z)
            events.append(Step(len(self.finished), self.n_slices, "slice", z))
        events.append(Step(self.done, self.total, "tiles"))
        return events


class _Reader(threading.Thread):
    """Reads and normalises batches of tiles ahead of the network, in a background thread."""

    def __init__(
        self,
        src: SliceSource,
        items: list[_Item],
        layout: TileLayout,
        batch: int,
        norm: Callable[[int], tuple[np.ndarray, np.ndarray]],
        pin: bool,
        stop: threading.Event | None,
        depth: int = 2,
    ) -> None:
        super().__init__(name="napari-unet-tile-reader", daemon=True)
        self.src, self.items, self.layout, self.batch = src, items, layout, batch
        self.norm, self.pin, self.user_stop = norm, pin, stop
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self.halt = threading.Event()

    def _put(self, item: Any) -> bool:
        while not self.halt.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            for start in range(0, len(self.items), self.batch):
                if self.halt.is_set() or (self.user_stop is not None and self.user_stop.is_set()):
                    break
                chunk = self.items[start : start + self.batch]
                if not self._put((chunk, self._read_batch(chunk))):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)
            return
        self._put(None)

    def _read_batch(self, chunk: list[_Item]) -> np.ndarray | torch.Tensor:
        shape = (len(chunk), self.src.c, *self.layout.tile_shape)
        if self.pin:
            buf = torch.empty(shape, dtype=torch.float32, pin_memory=True)
            arr = buf.numpy()
        else:
            buf = arr = np.empty(shape, np.float32)
        for i, (z, *index) in enumerate(chunk):
            offset, scale = self.norm(z)
            block = self._read_tile(z, index)
            arr[i] = (block.astype(np.float32, copy=False) - offset) / scale
        return buf

    def _read_tile(self, z: int, index: list[int]) -> np.ndarray:
        lay, src = self.layout, self.src
        starts = [i * a.stride - h for i, a, h in zip(index, lay.axes, lay.halo, strict=True)]
        mirrored = [
            reflect_indices(start, tile, size)
            for start, tile, size in zip(starts, lay.tile_shape, src.spatial, strict=True)
        ]
        box = [slice(int(r.min()), int(r.max()) + 1) for r in mirrored]
        block = src.read(z, *box)
        check_finite(block, f"image slice {z}" if src.is_stack else "image")
        for axis, (start, tile, size) in enumerate(
            zip(starts, lay.tile_shape, src.spatial, strict=True)
        ):
            if start < 0 or start + tile > size:  # mirrored beyond the image edge
                block = np.take(block, mirrored[axis] - box[axis].start, axis=1 + axis)
        return block


class TileEngine:
    """Runs a tile layout over the slices of a source and hands out cropped tile outputs.

    ``normalize(z)`` gives slice ``z``'s ``(offset, scale)`` where ``norm`` does not hold it
    already; the results are cached while the slice is in use.
    """

    def __init__(
        self,
        model: TrainedModel,
        src: SliceSource,
        plan: Plan,
        runner: NetworkRunner,
        normalize: Callable[[int], tuple[np.ndarray, np.ndarray]],
        *,
        norm: dict[int, tuple[np.ndarray, np.ndarray]] | None = None,
        rows: tuple[int, int] | None = None,
        cols: tuple[int, int] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.model, self.src, self.plan, self.runner = model, src, plan, runner
        self._normalize = normalize
        self.config = model.config
        self._norm: dict[int, tuple[np.ndarray, np.ndarray]] = dict(norm or {})
        self._norm_lock = threading.Lock()
        self.bounds: tuple[tuple[int, int] | None, ...] = (
            (rows, cols) if self.config.spatial_dims == 2 else (None, rows, cols)
        )
        self.stop = stop

    def normalization(self, z: int) -> tuple[np.ndarray, np.ndarray]:
        """Slice ``z``'s ``(offset, scale)``, cached while the slice is in use (thread-safe)."""
        with self._norm_lock:
            if z not in self._norm:
                self._norm = {k: v for k, v in self._norm.items() if k >= z - 1}
                self._norm[z] = self._normalize(z)
            return self._norm[z]

    def run(self, slices: Sequence[int], write: Writer) -> Iterator[Step]:
        """Compute every tile of ``slices``, yielding progress; on running out of memory, shrink.

        Yields ``Step(done, total, 'tiles')`` after each tile is written and
        ``Step(done, total, 'slice', item=z)`` when the last tile of slice ``z`` is written. If
        the tile shrinks after running out of memory, tile counting starts again with the new
        total over the unfinished slices. Closing the generator stops the reader thread.
        """
        remaining = list(slices)
        try:
            while remaining:
                finished: list[int] = []
                try:
                    yield from self._run_once(remaining, write, finished)
                    return
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    remaining = [z for z in remaining if z not in set(finished)]
                    self._shrink(exc)
        finally:
            self.runner.release_memory()

    def _shrink(self, exc: BaseException) -> None:
        if self.plan.device.type == "cuda":
            torch.cuda.empty_cache()
        plan = self.plan
        if plan.batch_size > 1:
            new = replace(plan, batch_size=plan.batch_size // 2)
        else:
            config = self.config
            halved = tuple(
                min(t, max(minimum_tile(config, a), config.admissible_size(t // 2, a)))
                for a, t in enumerate(plan.tile)
            )
            if halved == plan.tile:
                raise MemoryError(
                    f"out of memory on {plan.device} even with the smallest tile "
                    f"({_size(plan.tile)}) and batch 1"
                ) from exc
            layout = tile_layout(config, self.src.spatial, halved)
            new = replace(plan, tile=layout.tile_shape, batch_size=1, layout=layout)
        logger.warning(
            "out of memory on %s with %d tile(s) of %s: going on with %d of %s",
            plan.device,
            plan.batch_size,
            _size(plan.tile),
            new.batch_size,
            _size(new.tile),
        )
        self.plan = new

    def _run_once(self, slices: list[int], write: Writer, finished: list[int]) -> Iterator[Step]:
        """One pass over ``slices`` with the current plan; ``finished`` collects done slices.

        The network runs a batch while the previous one is copied back and written; the events
        of a written batch are yielded outside ``torch.inference_mode`` (the consumer's code
        runs at each ``yield``). A batch that finished before an error or a stop is kept.
        """
        plan = self.plan
        items = [(z, *index) for z in slices for index in plan.layout.tiles(*self.bounds)]
        logger.info(
            "predicting %d tile(s) of %s in batches of %d on %s (%s)",
            len(items),
            _size(plan.tile),
            plan.batch_size,
            plan.device,
            self.runner.runtime,
        )
        tally = _Tally(items, finished)
        cuda = plan.device.type == "cuda"  # pinned host memory for fast copies to the device
        reader = _Reader(
            self.src, items, plan.layout, plan.batch_size, self.normalization, cuda, self.stop
        )
        pending: _Batch | None = None
        reader.start()
        try:
            error: Exception | None = None
            while True:
                try:
                    batch = self._next_batch(reader, tally)
                except Exception as exc:  # the finished batch is written and reported first
                    error = exc
                    batch = None
                written, pending = pending, batch
                if written is not None:
                    yield from self._finish(written, write, tally)
                if pending is None:
                    break
            if error is not None:
                raise error
        finally:
            if pending is not None:  # the consumer closed the generator: keep what is done
                self._finish(pending, write, tally)
            reader.halt.set()
            reader.join()

    def _next_batch(self, reader: _Reader, tally: _Tally) -> _Batch | None:
        """Start the network on the next batch of tiles; None when all are read."""
        item = reader.queue.get()
        if isinstance(item, BaseException):
            raise item
        if self.stop is not None and self.stop.is_set():
            raise Cancelled(f"prediction stopped after {tally.done} of {tally.total} tiles")
        if item is None:
            return None
        chunk, tiles = item
        device = self.plan.device
        cuda = device.type == "cuda"
        with torch.inference_mode(), cudnn_benchmark(device):
            x = torch.as_tensor(tiles)
            if device.type != "cpu":
                x = x.to(device, non_blocking=cuda)
            prob = self.runner(x)
            if not cuda:
                return _Batch(chunk, prob.cpu(), None)
            host = torch.empty(prob.shape, dtype=prob.dtype, pin_memory=True)
            host.copy_(prob, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return _Batch(chunk, host, event)

    def _finish(self, batch: _Batch, write: Writer, tally: _Tally) -> list[Step]:
        """Write a batch's tiles (once its copy to the host is complete); its progress events."""
        if batch.event is not None:
            batch.event.synchronize()
        events = []
        for (z, *index), prob in zip(batch.chunk, batch.host.numpy(), strict=True):
            self._write_tile(z, index, prob, write)
            events.extend(tally.tile_done(z))
        return events

    def _write_tile(self, z: int, index: list[int], prob: np.ndarray, write: Writer) -> None:
        lay = self.plan.layout
        trim = self.runner.trim or (0,) * len(lay.axes)  # an interior: the halo is not there
        extents, crop = [], []
        for a, (i, axis) in enumerate(zip(index, lay.axes, strict=True)):
            start, stop = axis.extent(i)
            limit = self.bounds[a] if a < len(self.bounds) else None
            if limit is not None:
                start, stop = max(start, limit[0]), min(stop, limit[1])
            offset = start - i * axis.stride + lay.crop[a] - trim[a]
            extents.append((start, stop))
            crop.append(slice(offset, offset + stop - start))
        write(z, tuple(extents), prob[(..., *crop)])


def _size(tile: tuple[int, ...]) -> str:
    """``'256x256'``: a tile shape for messages."""
    return "x".join(str(t) for t in tile)
