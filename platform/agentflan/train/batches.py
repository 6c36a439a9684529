"""Packed rows as tensors from the start, and a prefetcher that has the next micro-batch ready on the device.

The packed table arrives as Arrow (fixed-length list columns). It is converted once to 2-D tensors (int32 ids,
float32 weights), so a micro-batch is an ``index_select``, put in pinned memory on a GPU worker, and one
non-blocking copy, not a walk over Python lists on the training thread. A background thread assembles the batches of the plan
ahead of the step that needs them; the time the step still waits for one is reported as ``data_wait_s``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from agentflan.train.templates import IGNORE_INDEX

_COLUMNS = {
    "input_ids": torch.int32,
    "labels": torch.int32,
    "weights": torch.float32,
    "position_ids": torch.int32,
}


def _matrix(column: pa.ChunkedArray, n_rows: int) -> np.ndarray:
    values = column.combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return values.reshape(n_rows, -1) if n_rows else values.reshape(0, 0)


@dataclass
class Batch:
    """One micro-batch: the model's inputs plus the counts the step log needs."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    weights: torch.Tensor
    position_ids: torch.Tensor
    n_real: int  # real (not padding) tokens
    slots: int  # token slots (rows x seq_len)

    def to(self, device: torch.device) -> Batch:
        move = lambda x, dtype: x.to(device, non_blocking=True).to(dtype)  # noqa: E731
        return Batch(
            move(self.input_ids, torch.long),
            move(self.labels, torch.long),
            move(self.weights, torch.float32),
            move(self.position_ids, torch.long),
            self.n_real,
            self.slots,
        )

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Arguments of :class:`agentflan.train.loss.CausalLMWithLoss` (no attention mask: packed rows)."""
        return {
            "input_ids": self.input_ids,
            "position_ids": self.position_ids,
            "labels": self.labels,
            "weights": self.weights,
        }


class PackedBatches:
    """The packed rows of one split as tensors, with the per-row counts the trainer needs.

    With ``pin`` each batch (not the whole table, which may be gigabytes) is put in pinned memory, so its copy
    to the GPU is asynchronous."""

    def __init__(self, table: pa.Table, pin: bool = False) -> None:
        self.n_rows = table.num_rows
        self.tensors = {
            name: torch.from_numpy(_matrix(table.column(name), self.n_rows).copy()).to(dtype)
            for name, dtype in _COLUMNS.items()
        }
        self.n_real = table.column("n_real").to_numpy().astype(np.int64)
        self.n_trained = table.column("n_trained").to_numpy().astype(np.int64)
        self.seq_len = int(self.tensors["input_ids"].shape[1]) if self.n_rows else 0
        self.pin = pin

    def trained_tokens(self, indices: list[int]) -> int:
        return int(self.n_trained[indices].sum())

    def batch(self, indices: list[int], ignore: list[int] | None = None) -> Batch:
        """Rows ``indices`` (CPU, pinned if the table is); the positions in ``ignore`` get no loss (fillers)."""
        index = torch.tensor(indices, dtype=torch.long)
        out = {name: t.index_select(0, index) for name, t in self.tensors.items()}
        if ignore:
            out["labels"][ignore] = IGNORE_INDEX
            out["weights"][ignore] = 0.0
        if self.pin:
            out = {name: t.pin_memory() for name, t in out.items()}
        return Batch(
            out["input_ids"],
            out["labels"],
            out["weights"],
            out["position_ids"],
            n_real=int(self.n_real[indices].sum()),
            slots=len(indices) * self.seq_len,
        )


class Prefetcher:
    """Assembles the micro-batches of ``plan`` on a background thread, ``depth`` ahead of the consumer.

    ``next()`` returns the next batch on ``device`` and the seconds the caller waited for it."""

    def __init__(
        self, rows: PackedBatches, plan: Iterator[list[int]], device: torch.device, depth: int = 2
    ) -> None:
        self._queue: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=depth)
        self._device = device
        self._thread = threading.Thread(target=self._fill, args=(rows, plan), daemon=True)
        self._thread.start()

    def _fill(self, rows: PackedBatches, plan: Iterator[list[int]]) -> None:
        try:
            for indices in plan:
                self._queue.put(rows.batch(indices))
        except BaseException as e:  # surfaced to the training thread by next()
            self._queue.put(e)
            return
        self._queue.put(None)

    def next(self) -> tuple[Batch, float]:
        t0 = time.perf_counter()
        item = self._queue.get()
        waited = time.perf_counter() - t0
        if isinstance(item, BaseException):
            raise item
        if item is None:
            raise StopIteration("the micro-batch plan is exhausted")
        return item.to(self._device), waited
