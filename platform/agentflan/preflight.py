"""Checks that run before any work (before Ray starts), so a mistake costs a second and one line, not a
traceback after minutes: the inputs exist, mixture ratios name real buckets, model and tokenizer paths
resolve, the optional packages the config asks for are installed, and no other job is writing the same
output directory.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from agentflan.config import Config

# A hub repo id: "name" or "owner/name" made of word characters, dots and dashes, not a path on disk.
_HUB_ID = re.compile(r"^[\w][\w.-]*(/[\w][\w.-]*)?$")
FIXED_BUCKETS = ("general", "negatives", "format_following")
LOCK_FILE = ".agentflan.lock"
# Modules of the optional paths and how to install them (the base install, `pip install agentflan`, has
# everything else). Checked on the driver: on a cluster the workers run the same environment (docs/install.md).
INSTALL_HINTS = {
    "peft": "pip install 'agentflan[lora]'",
    "liger_kernel": "pip install 'agentflan[liger]'",
    "flash_attn": "pip install flash-attn --no-build-isolation (CUDA)",
    "flash_attn_interface": "build FlashAttention-3 from its hopper/ folder (CUDA, Hopper GPUs)",
    "vllm": "pip install vllm (on the GPU workers)",
    "bfcl_eval": "pip install --no-deps bfcl-eval==2026.3.23 mpmath",
    "mpmath": "pip install --no-deps bfcl-eval==2026.3.23 mpmath",
    "lm_eval": "pip install 'lm-eval>=0.4.13,<0.5' (a base dependency: pip install -e . brings it)",
}
# The package transformers needs for each flash attention implementation.
FLASH_ATTN_MODULES = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface"}


class PreflightError(ValueError):
    """What is wrong, in one line naming the key, file or path."""


def check_mixture_keys(cfg: Config, sources: list[str]) -> None:
    """Every key of ``data.mixture.ratios`` is a bucket (``general``, ``negatives``, ``format_following``, an
    agent source) or the source name of an input; a typo would otherwise silently change nothing."""
    known = set(FIXED_BUCKETS) | set(sources)
    unknown = sorted(k for k in cfg.data.mixture.ratios if k not in known)
    if unknown:
        raise PreflightError(
            f"data.mixture.ratios: {', '.join(map(repr, unknown))} is not a bucket or source name "
            f"(buckets: {', '.join(FIXED_BUCKETS)}; sources: {', '.join(sorted(set(sources)))})"
        )


def check_model_path(key: str, value: str | None) -> None:
    """A local path must exist; a hub id must be in the local cache or reachable."""
    if not value:
        return
    path = Path(value).expanduser()
    if path.exists():
        return
    if value.startswith((".", "/", "~")) or not _HUB_ID.match(value):
        raise PreflightError(f"{key}: no such file or directory: {value}")
    if _in_hub_cache(value):
        return
    try:
        from huggingface_hub import HfApi

        HfApi().model_info(value, timeout=10)
    except Exception as e:  # offline, unknown repo, gated: all mean this run cannot load it
        why = type(e).__name__
        raise PreflightError(
            f"{key}: {value!r} is not a local path and the Hugging Face hub cannot serve it ({why}); "
            "download it first or give a local path"
        ) from None


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str) or isinstance(
            try_to_load_from_cache(repo_id, "tokenizer_config.json"), str
        )
    except Exception:
        return False


def check_models(cfg: Config, command: str) -> None:
    """The model paths the command will load."""
    m = cfg.train.model
    if command in ("train", "run", "tune"):
        check_model_path("train.model.name_or_path", m.name_or_path)
        check_model_path("train.model.tokenizer", m.tokenizer)
    if command in ("data", "train", "run", "tune") and cfg.data.negatives.responder.kind in ("hf", "vllm"):
        check_model_path("data.negatives.responder.model", cfg.data.negatives.responder.model)
    if command == "eval" and cfg.eval.model and cfg.eval.kind == "hf":
        check_model_path("model", cfg.eval.model)
    backend = cfg.rollout.backend
    if command in ("rollout", "eval") and cfg.rollout.envs and backend.kind == "hf" and backend.model:
        check_model_path("rollout.backend.model", backend.model)


def require_module(module: str, key: str) -> None:
    """``key`` (``name=value`` as the config says it) needs ``module``: one line naming both and the install."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails to import, a module without a spec
        found = False
    if not found:
        hint = INSTALL_HINTS.get(module, f"pip install {module}")
        raise PreflightError(f"{key} needs the {module} package, which is not installed: {hint}")


def check_optional_packages(cfg: Config, command: str) -> None:
    """The optional packages the configured paths import, in the order a job would meet them."""
    responder = cfg.data.negatives.responder
    if command in ("data", "train", "run", "tune") and responder.kind == "vllm":
        require_module("vllm", "data.negatives.responder.kind=vllm")
    if cfg.eval.general.tasks and _evaluates(cfg, command):
        require_module("lm_eval", "eval.general.tasks")
    if command in ("rollout", "eval", "run") and "bfcl_multi_turn" in cfg.rollout.envs:
        require_module("bfcl_eval", "rollout.envs=[bfcl_multi_turn]")
        require_module("mpmath", "rollout.envs=[bfcl_multi_turn]")
    if command not in ("train", "run", "tune"):
        return
    m = cfg.train.model
    if m.attn_implementation in FLASH_ATTN_MODULES:
        key = f"train.model.attn_implementation={m.attn_implementation}"
        require_module(FLASH_ATTN_MODULES[m.attn_implementation], key)
    if m.lora.enabled:
        require_module("peft", "train.model.lora.enabled=true")
    if cfg.train.loss == "liger":
        require_module("liger_kernel", "train.loss=liger")


def preflight(cfg: Config, command: str) -> None:
    """Everything checkable without starting work; raises :class:`PreflightError`."""
    from agentflan.data.pipeline import PipelineError, resolve_inputs

    if command in ("data", "train", "run", "tune"):
        if not cfg.data.inputs:
            raise PreflightError(f"data.inputs: `agentflan {command}` needs inputs (the spec has none)")
        try:
            files = resolve_inputs(cfg.data.inputs)
        except PipelineError as e:
            raise PreflightError(str(e)) from None
        check_mixture_keys(cfg, [f.source for f in files])
    check_optional_packages(cfg, command)
    check_models(cfg, command)
    check_general_data(cfg, command)


def _evaluates(cfg: Config, command: str) -> bool:
    """The command runs ``agentflan eval`` (a Tune study's trials do unless tune.evaluate is false)."""
    return command in ("eval", "run") or (command == "tune" and cfg.tune.evaluate)


def check_general_data(cfg: Config, command: str) -> None:
    """The files of every general task (eval.general) are under its data_dir."""
    if not cfg.eval.general.tasks or not _evaluates(cfg, command):
        return
    from agentflan.eval.general.tasks import GeneralTaskError, resolve

    try:
        resolve(cfg.eval.general)
    except GeneralTaskError as e:
        raise PreflightError(str(e)) from None


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path) -> Iterator[Path]:
    """Hold ``<output_dir>/.agentflan.lock`` (pid, host, start time) while a job writes there.

    A second job on the same directory is refused, naming the holder; a lock whose process is gone (a
    killed job) is taken over. Created atomically (``O_EXCL``), removed on exit."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    owner = {"pid": os.getpid(), "host": os.uname().nodename, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read_lock(lock)
            if holder and _alive(holder) and holder.get("pid") != os.getpid():
                raise PreflightError(
                    f"output_dir {out} is in use by another agentflan job (pid {holder.get('pid')} on "
                    f"{holder.get('host')}, since {holder.get('started')}); wait for it or use another "
                    f"output_dir (remove {lock} if that job is gone)"
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
        break
    try:
        yield lock
    finally:
        if _read_lock(lock).get("pid") == os.getpid():
            lock.unlink(missing_ok=True)


def _read_lock(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def _alive(holder: dict) -> bool:
    """The holder runs (on this host; a lock from another host is trusted as held)."""
    if holder.get("host") != os.uname().nodename:
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True
