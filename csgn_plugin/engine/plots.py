"""Training curves and CMC plots written next to the log.

Figures are drawn on matplotlib's Agg canvas directly: no display is needed and the global
backend (which the user's own code may have chosen) is left alone.
"""

from __future__ import annotations

import os
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def plot_history(
    history: dict[str, list], results: dict[str, dict[str, Any]], save_dir: str
) -> str:
    """Write ``save_dir/training.png`` (losses, test metrics, CMC curves); return its path."""
    train = {k[len("Train/") :]: v for k, v in history.items() if k.startswith("Train/")}
    train.pop("lr", None)
    stage1 = history.get("stage1/loss", [])
    tests = {k[len("Test/") :]: v for k, v in history.items() if k.startswith("Test/")}
    fig = Figure(figsize=(20, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 4)
    ax = axes[0]
    if stage1:
        ax.plot(*zip(*stage1), label="mutual")
    ax.set(title="Stage 1 (prompt learning) loss", xlabel="epoch")
    ax = axes[1]
    for name, points in sorted(train.items()):
        ax.plot(*zip(*points), label=name)
    ax.set(title="Training losses", xlabel="step")
    ax = axes[2]
    for name, points in sorted(tests.items()):
        ax.plot(*zip(*points), marker="o", label=name)
    ax.set(title="Test metrics", xlabel="epoch", ylim=(0, 1))
    ax = axes[3]
    for dataset, per_mode in results.items():
        for mode, res in per_mode.items():
            ranks = range(1, len(res.cmc) + 1)
            ax.plot(ranks, res.cmc, label=f"{dataset} {mode.upper()} (mAP {res.mAP:.1%})")
    ax.set(title="CMC (last evaluation)", xlabel="rank", ylim=(0, 1.01))
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(save_dir, "training.png")
    fig.savefig(path, dpi=90)
    return path
