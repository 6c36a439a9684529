"""DeepSpeed behind one object (as OpenRLHF's strategy): the device, the process group, the engine, backward
and step, checkpoints, the gathered 16-bit weights, and :meth:`DeepSpeedStrategy.cleanup`.

The training loop (:mod:`agentflan.train.loop`) reads as the algorithm and never calls DeepSpeed itself; this
is the one place to change how DeepSpeed is driven.

Device mapping is explicit, because a wrong mapping is the most reported Ray + DeepSpeed failure: with
``use_gpu`` each worker owns exactly one GPU, ``cuda:<local rank>``, set before DeepSpeed initialises.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch

from agentflan.config import Config
from agentflan.train.deepspeed_config import deepspeed_config, model_dtype


def use_interpreter_ninja() -> None:
    """Put this interpreter's ``bin`` first on PATH when it holds a ``ninja`` (pip's, a DeepSpeed dependency).

    Why: on CPU, ``deepspeed.init_distributed`` JIT-builds its shared-memory comm op (``deepspeed_shm_comm``)
    with the first ``ninja`` on PATH, cached under ``TORCH_EXTENSIONS_DIR``. A venv used without activating it
    (``.venv/bin/agentflan``, and the Ray workers it starts) finds the system's ninja in some processes and the
    venv's in others. Two ninja versions read each other's build log as invalid (1.11 writes log v5, 1.13 v7)
    and rebuild the op from scratch, ~35 s on 2 cores, at every switch. One interpreter, one ninja."""
    bin_dir = Path(sys.executable).parent
    path = os.environ.get("PATH", "")
    if (bin_dir / "ninja").exists() and path.split(os.pathsep)[0] != str(bin_dir):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"


class DeepSpeedStrategy:
    """How one rank drives DeepSpeed for ``cfg``: built first, before the model."""

    def __init__(self, cfg: Config, rank: int, world: int, local_rank: int) -> None:
        t = cfg.train
        self.cfg, self.rank, self.world = cfg, rank, world
        # before DeepSpeed's process group (ours in init_distributed, or deepspeed.initialize's own under
        # ZeRO-2), which builds or finds the cached CPU comm op
        use_interpreter_ninja()
        if t.scaling.use_gpu:
            self.device = torch.device(f"cuda:{local_rank}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
            torch.set_num_threads(max(1, int(t.scaling.resources_per_worker.get("CPU", 1))))
        self.dtype: torch.dtype = getattr(torch, model_dtype(cfg))
        self.ds_config = deepspeed_config(cfg, use_bf16=self.dtype == torch.bfloat16)
        self.zero3 = t.deepspeed.zero_stage == 3
        self.engine: Any = None  # deepspeed.DeepSpeedEngine, from prepare()
        self.scheduler: Any = None
        self.hf_ds_config: Any = None  # transformers' HfDeepSpeedConfig under ZeRO-3: alive while training
        self.env_set: list[str] = []  # environment variables init_distributed set, unset by cleanup

    def init_distributed(self, single_process: bool = False) -> None:
        """Join the process group (Ray Train has set its address; ``single_process`` makes a group of one).
        DeepSpeed's config checks the batch sizes against its world size, so ZeRO-3 model building needs the
        group first."""
        import deepspeed

        backend = "nccl" if self.device.type == "cuda" else "gloo"
        if single_process:
            # DeepSpeed reads LOCAL_RANK from the environment while the engine lives (ZeRO-3's partitioning);
            # cleanup() takes back what was set here, or every process started later from this one (a Ray
            # node, a job driver) inherits a rank and lm-eval's accelerate takes itself for a distributed run.
            for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
                if key not in os.environ:
                    os.environ[key] = value
                    self.env_set.append(key)
            if not torch.distributed.is_initialized():
                # A group of one has no one to meet: an in-process store, not a TCP port. A port picked free
                # and bound seconds later (after DeepSpeed's import) was taken meanwhile by another process's
                # connection often enough to fail runs beside a busy Ray (EADDRINUSE).
                torch.distributed.init_process_group(
                    backend, store=torch.distributed.HashStore(), rank=0, world_size=1
                )
        # Always through DeepSpeed: when Ray Train (or the group of one above) already made the torch group,
        # init_distributed only wraps it; skipping it leaves DeepSpeed's config at world size 1.
        deepspeed.init_distributed(dist_backend=backend)

    def prepare(self, module: torch.nn.Module, steps: int) -> Any:
        """The engine around ``module``: AdamW (or DeepSpeed's CPU Adam when the optimizer is offloaded) with
        a cosine schedule after ``train.warmup_ratio`` of ``steps`` warming up."""
        import deepspeed
        import transformers

        t = self.cfg.train
        params = [p for p in module.parameters() if p.requires_grad]
        warmup = int(t.warmup_ratio * steps)
        optimizer = None  # offloaded: DeepSpeed builds its CPU Adam from the config, we give the schedule
        if "optimizer" not in self.ds_config:
            optimizer = torch.optim.AdamW(
                params,
                lr=t.lr,
                weight_decay=t.weight_decay,
                betas=(0.9, 0.95),
                fused=self.device.type == "cuda",
            )
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=module,
            model_parameters=params,
            optimizer=optimizer,
            lr_scheduler=lambda opt: transformers.get_cosine_schedule_with_warmup(opt, warmup, steps),
            config=self.ds_config,
        )
        return self.engine

    def backward(self, loss: torch.Tensor) -> None:
        """Backward on a loss already scaled to the global mean (no division by the accumulation steps)."""
        self.engine.backward(loss, scale_wrt_gas=False)

    def step(self) -> None:
        """DeepSpeed's step after each micro-batch: it steps the optimizer at the accumulation boundary."""
        self.engine.step()

    def lr(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def save_ckpt(self, directory: str | Path, tag: str, client_state: dict[str, Any]) -> None:
        """DeepSpeed's checkpoint: sharded model and optimizer state and the schedule (collective)."""
        self.engine.save_checkpoint(str(directory), tag=tag, client_state=client_state)

    def load_ckpt(self, directory: str | Path, tag: str) -> None:
        self.engine.load_checkpoint(str(directory), tag=tag)

    def gathered_state_dict(self, scratch: Path) -> dict[str, torch.Tensor] | None:
        """Under ZeRO-3, the whole model's 16-bit weights on rank 0 (None on the others): DeepSpeed's public
        export, in which every rank takes part and rank 0 writes layer by layer to ``scratch``, read back
        memory-mapped. None without ZeRO-3 (the module holds its weights)."""
        if not self.zero3:
            return None
        self.engine.save_16bit_model(str(scratch), "weights.pt")
        if self.rank != 0:
            return None
        loaded = torch.load(scratch / "weights.pt", map_location="cpu", weights_only=True, mmap=True)
        return {k.removeprefix("model."): v for k, v in loaded.items()}

    def cleanup(self) -> None:
        """Let go of the engine, transformers' ZeRO-3 switch and the ranks set in the environment, so the next
        run in this process (a test) starts as the first did. The process group stays: DeepSpeed keeps the
        groups it derives from it in module globals (``deepspeed.utils.groups``), so a group destroyed and
        made again breaks the next engine; the next run joins the one there is."""
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = self.scheduler = None
        if self.hf_ds_config is not None:
            self.hf_ds_config = None
            unset_hf_deepspeed_config()
        for key in self.env_set:
            os.environ.pop(key, None)
        self.env_set = []


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, the ones held on this rank): under ZeRO-3 a parameter keeps only its partition
    (``ds_tensor``) between uses, and ``ds_numel`` is its full size. Tied embeddings count once."""
    total = local = 0
    for p in module.parameters():
        total += getattr(p, "ds_numel", p.numel())
        local += p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
    return total, local
