"""The pictures people look for after a run: loss curves, held-out loss per capability, the mixture.

Written as PNG files beside the outputs (``train/plots/``, ``eval/plots/``), logged to the training run's
MLflow artifacts under ``plots/`` and embedded in ``eval/report.md``. Matplotlib with the Agg backend: no
display needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(steps_log: Path, path: Path) -> Path:
    """Training loss per optimizer step, validation loss where measured."""
    plt = _pyplot()
    steps = [json.loads(line) for line in steps_log.read_text().splitlines() if line]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=1, label="train")
    val = [(s["step"], s["val_loss"]) for s in steps if "val_loss" in s]
    if val:
        ax.plot(*zip(*val, strict=True), "o--", ms=4, lw=1, label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (mean token cross-entropy)")
    ax.set_title("Training and validation loss", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def mixture_composition(manifest: dict[str, Any], path: Path) -> Path:
    """Records and trained tokens per mixture bucket, and trained tokens per capability."""
    plt = _pyplot()
    buckets = sorted(manifest["buckets"].items())
    caps = sorted(manifest["capabilities"].items())
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    names = [b for b, _ in buckets]
    axes[0].barh(names, [v.get("records", 0) for _, v in buckets], color="tab:blue")
    axes[0].set_title("records per bucket", fontsize=10)
    axes[1].barh(names, [v.get("trained_tokens", 0) for _, v in buckets], color="tab:orange")
    axes[1].set_title("trained tokens per bucket", fontsize=10)
    axes[2].barh([c for c, _ in caps], [v.get("trained_tokens", 0) for _, v in caps], color="tab:green")
    axes[2].set_title("trained tokens per capability", fontsize=10)
    for ax in axes:
        ax.tick_params(labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(f"Mixture of the corpus ({manifest['rows']['corpus']} records)", fontsize=11)
    return _save(fig, path)


def heldout_loss(validation_loss: dict[str, dict[str, float]], path: Path) -> Path:
    """Held-out loss of the trained model per capability, with each capability's token count."""
    plt = _pyplot()
    caps = list(validation_loss)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bars = ax.bar(caps, [validation_loss[c]["loss"] for c in caps], color="tab:purple")
    for bar, c in zip(bars, caps, strict=True):
        ax.annotate(
            f"{validation_loss[c]['loss']:.2f}\n({validation_loss[c]['tokens']} tok)",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    ax.set_ylabel("held-out loss")
    ax.set_title("Held-out loss per capability", fontsize=10)
    ax.tick_params(axis="x", labelsize=8, rotation=15)
    ax.margins(y=0.2)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
