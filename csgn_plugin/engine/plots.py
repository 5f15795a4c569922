"""Training curves and CMC plots written next to the log.

Figures are drawn on matplotlib's Agg canvas directly: no display is needed and the global
backend (which the user's own code may have chosen) is left alone. A panel is drawn only when it
has something to show (a torchreid model has no prompt stage, a run without evaluation no
metrics), and the curves of one panel differ in line style and marker as well as colour, so that
curves lying on each other (e.g. the general and SC protocols of an easy test set) stay visible.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

_LINE_STYLES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D", "v", "x")


def _styles() -> Iterator[dict[str, Any]]:
    """Line style, marker and colour of each next curve: no two of a panel's first 12 alike."""
    for i in itertools.count():
        yield {
            "linestyle": _LINE_STYLES[i % len(_LINE_STYLES)],
            "marker": _MARKERS[i % len(_MARKERS)],
            "color": f"C{i % 10}",
        }


def _panels(history: dict[str, list], results: dict[str, dict[str, Any]]) -> list[tuple]:
    """``(title, x label, y limits, [(label, xs, ys)])`` of every panel that has a curve."""
    train = {k[len("Train/") :]: v for k, v in history.items() if k.startswith("Train/")}
    train.pop("lr", None)
    tests = {k[len("Test/") :]: v for k, v in history.items() if k.startswith("Test/")}
    cmc = [
        (f"{dataset} {mode.upper()} (mAP {res.mAP:.1%})", range(1, len(res.cmc) + 1), res.cmc)
        for dataset, per_mode in results.items()
        for mode, res in per_mode.items()
    ]
    panels = [
        ("Stage 1 (prompt learning) loss", "epoch", None, [("mutual", history.get("stage1/loss"))]),
        ("Training losses", "step", None, sorted(train.items())),
        ("Test metrics", "epoch", (0, 1), sorted(tests.items())),
    ]
    curves = [
        (title, xlabel, ylim, [(label, *zip(*points)) for label, points in named if points])
        for title, xlabel, ylim, named in panels
    ]
    curves.append(("CMC (last evaluation)", "rank", (0, 1.01), cmc))
    return [panel for panel in curves if panel[3]]


def training_figure(history: dict[str, list], results: dict[str, dict[str, Any]]) -> Figure:
    """The losses, test metrics and CMC curves of a run: one panel per non-empty kind."""
    panels = _panels(history, results)
    fig = Figure(figsize=(5 * max(len(panels), 1), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(panels), squeeze=False)[0] if panels else []
    for ax, (title, xlabel, ylim, curves) in zip(axes, panels):
        many = max(len(xs) for _, xs, _ in curves) > 40  # dense curves: a marker every few points
        for (label, xs, ys), style in zip(curves, _styles()):
            ax.plot(xs, ys, label=label, markevery=max(len(xs) // 12, 1) if many else 1, **style)
        ax.set(title=title, xlabel=xlabel)
        if ylim is not None:
            ax.set_ylim(*ylim)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_history(
    history: dict[str, list], results: dict[str, dict[str, Any]], save_dir: str
) -> str:
    """Write ``save_dir/training.png`` (:func:`training_figure`); return its path."""
    path = os.path.join(save_dir, "training.png")
    training_figure(history, results).savefig(path, dpi=90)
    return path
