"""Packed rows as tensors from the start, and a prefetcher that has the next micro-batch ready on the device.

The rows come either as an Arrow table (fixed-length list columns, converted once to 2-D tensors: int32 ids,
float32 weights, so a micro-batch is an ``index_select``) or as the split's shards on disk
(:class:`~agentflan.train.shards.PackedShards`: only the row groups the plan asks for are read). A batch is
put in pinned memory on a GPU worker and copied with one non-blocking copy, not walked over as Python lists on
the training thread. A background thread assembles the batches of the plan ahead of the step that needs
them; the time the step still waits for one is reported as ``data_wait_s``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from agentflan.train.shards import COLUMNS, PackedShards, matrix
from agentflan.train.templates import IGNORE_INDEX


class TableRows:
    """A packed table held in memory as tensors: the same ``take`` as :class:`PackedShards`."""

    def __init__(self, table: pa.Table) -> None:
        self.n_rows = table.num_rows
        self.tensors = {
            name: torch.from_numpy(matrix(table.column(name), self.n_rows).astype(dtype))
            for name, dtype in COLUMNS.items()
        }
        self.n_real = table.column("n_real").to_numpy().astype(np.int64)
        self.n_trained = table.column("n_trained").to_numpy().astype(np.int64)
        self.seq_len = int(self.tensors["input_ids"].shape[1]) if self.n_rows else 0

    def take(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(list(indices), dtype=torch.long)
        return {name: t.index_select(0, index) for name, t in self.tensors.items()}


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
    """The packed rows of one split as batches, with the per-row counts the trainer needs: from a table in
    memory, or read by row from the split's shards.

    With ``pin`` each batch (not the whole table, which may be gigabytes) is put in pinned memory, so its copy
    to the GPU is asynchronous."""

    def __init__(self, rows: pa.Table | PackedShards, pin: bool = False) -> None:
        self.rows = rows if isinstance(rows, PackedShards) else TableRows(rows)
        self.n_rows, self.seq_len = self.rows.n_rows, self.rows.seq_len
        self.n_real, self.n_trained = self.rows.n_real, self.rows.n_trained
        self.pin = pin

    def trained_tokens(self, indices: list[int]) -> int:
        return int(self.n_trained[indices].sum())

    def batch(self, indices: list[int], ignore: list[int] | None = None) -> Batch:
        """Rows ``indices`` (CPU, pinned if the table is); the positions in ``ignore`` get no loss (fillers)."""
        out = {name: torch.as_tensor(m) for name, m in self.rows.take(indices).items()}
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
