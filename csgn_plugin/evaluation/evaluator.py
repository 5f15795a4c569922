"""Evaluation of a model on the target datasets: extract, pool, rank, tabulate.

:class:`Evaluator` runs the evaluation the engine (or ``tools/test.py``) asks for, in the shape of
fast-reid's evaluator: features of every query and gallery item are extracted once per target
(sharded over DDP ranks and gathered as tensors, with progress), video frames and clips are pooled
per tracklet, and every protocol the dataset declares (general / CC / SC, :data:`MODES`) is scored
from one ranking. It also formats the result table, writes it as JSON, and names the metric that
picks the best checkpoint.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..compat import torchreid_api
from ..fileio import atomic_write_text
from ..runtime import Runtime
from .distance import compute_distance_matrix
from .pooling import average_clip_features
from .ranking import MODES, RankResult, evaluate_features, evaluate_rank_modes, single_shot_evaluate
from .visrank import write_ranked_lists

__all__ = [
    "EvaluationOptions",
    "Evaluator",
    "call_model",
    "format_results",
    "results_to_dict",
    "selection_metric",
]

Results = dict[str, dict[str, RankResult]]


@dataclass(frozen=True)
class EvaluationOptions:
    """The ``test`` and ``cc_eval`` config keys (built by ``builders.evaluation_options``)."""

    protocols: tuple[str, ...]  # ('auto',) = those each dataset declares
    dist_metric: str
    normalize_feature: bool
    rerank: bool
    ranks: tuple[int, ...]
    visrank_topk: int
    single_shot: bool
    single_shot_trials: int
    single_shot_seed: int
    max_rank: int
    chunk_size: int
    pooling: str  # video: how frame features become a tracklet feature ('avg' or 'max')
    best_metric: str  # '<protocol>_<r1|mAP>' of the first target, or 'auto'


def takes_camids(model: nn.Module) -> bool:
    """Whether the model's forward accepts camera ids (CSGN's SIE) besides the images."""
    forward = model.forward
    return "camids" in getattr(forward, "__code__", forward).co_varnames


def call_model(model: nn.Module, imgs: torch.Tensor, camids: Optional[torch.Tensor]) -> Any:
    """``model(imgs, camids)`` for models that take camera ids, ``model(imgs)`` otherwise."""
    inner = model
    while hasattr(inner, "module") or hasattr(inner, "_orig_mod"):
        inner = getattr(inner, "_orig_mod", None) or inner.module
    return model(imgs, camids) if takes_camids(inner) else model(imgs)


class Evaluator:
    """Evaluates a model on every target of a data manager (see the module docstring).

    ``evaluated`` says, in an evaluation-only run, which model is evaluated: ``{"checkpoint":
    {"path", "sha256", "epoch", ...}}``, or ``{"checkpoint": None, "untrained": True}`` for a
    model evaluated as initialised. It heads the table and goes into ``results.json``.
    """

    def __init__(
        self,
        runtime: Runtime,
        datamanager: Any,
        options: EvaluationOptions,
        evaluated: Optional[dict] = None,
    ) -> None:
        self.runtime = runtime
        self.datamanager = datamanager
        self.options = options
        self.evaluated = evaluated

    # ------------------------------------------------------------------ features
    @torch.no_grad()
    def extract(
        self, model: nn.Module, loader: DataLoader, what: str
    ) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
        """Features and labels of a test split in dataset order (gathered over ranks), the model
        in eval mode (restored after).

        Video items are (B, S, C, H, W): frame features are pooled per item; a dataset tested on
        clips (batches carry ``video_index``) then averages its clips per tracklet. Items whose
        image could not be read (``cc_data.image_policy 'skip'``) are left out;
        ``labels['kept']`` holds the dataset indices of the items kept."""

        def batch_outputs(data: dict) -> dict[str, torch.Tensor]:
            flags = data.get("unreadable_path")
            outputs = {
                "features": self._features(model, data),
                "pids": data["pid"],
                "camids": data["camid"],
                "clothes": data.get("clothes_id", torch.full_like(data["pid"], -1)),
                "unreadable": torch.tensor([bool(p) for p in flags], dtype=torch.bool)
                if flags is not None
                else torch.zeros(len(data["pid"]), dtype=torch.bool),
            }
            if "video_index" in data:
                outputs["video_index"] = data["video_index"]
            return outputs

        was_training = model.training
        model.eval()
        try:
            labels = self.runtime.map_loader(loader, batch_outputs, what)
        finally:
            model.train(was_training)
        features = labels.pop("features")
        index = labels.pop("video_index", None)
        if index is not None:
            num_videos = int(index.max()) + 1
            features = average_clip_features(features, index.to(features.device), num_videos)
            positions = torch.arange(len(index))
            first = torch.full((num_videos,), len(index)).scatter_reduce(
                0, index, positions, reduce="amin"
            )
            labels = {key: value[first] for key, value in labels.items()}
        kept = torch.nonzero(~labels.pop("unreadable")).flatten()
        if len(kept) < len(features):
            features = features[kept.to(features.device)]
            labels = {key: value[kept] for key, value in labels.items()}
        labels["kept"] = kept
        return features, {key: value.numpy() for key, value in labels.items()}

    def _features(self, model: nn.Module, data: dict) -> torch.Tensor:
        imgs = self.runtime.images(data["img"])
        cams = data["camid"].to(self.runtime.device, non_blocking=True)
        video = imgs.dim() == 5
        if video:
            b, s = imgs.shape[:2]
            imgs = imgs.flatten(0, 1)
            cams = cams.repeat_interleave(s)
        with self.runtime.autocast():
            out = call_model(model, imgs, cams)
        out = out.float()
        if video:
            out = out.view(b, s, -1)
            out = out.max(dim=1)[0] if self.options.pooling == "max" else out.mean(dim=1)
        return out

    # ------------------------------------------------------------------ protocols
    def protocols_for(self, name: str) -> list[str]:
        declared = list(self.datamanager.protocols.get(name, ("general",)))
        asked = list(self.options.protocols)
        if asked == ["auto"]:
            return declared
        unknown = [p for p in asked if p not in MODES]
        if unknown:
            raise ValueError(f"cc_eval.protocols: unknown protocol(s) {unknown}; known: {MODES}")
        return asked

    def evaluate(self, model: nn.Module, visrank: bool = False, save_dir: str = "") -> Results:
        """Every protocol of every target (features extracted in eval mode)."""
        return {
            name: self.evaluate_target(model, name, visrank, save_dir)
            for name in self.datamanager.test_loader
        }

    def evaluate_target(
        self, model: nn.Module, name: str, visrank: bool = False, save_dir: str = ""
    ) -> dict[str, RankResult]:
        """Every protocol of one target dataset from one feature extraction."""
        runtime, opts = self.runtime, self.options
        runtime.log(f"##### Evaluating {name} #####")
        started = time.time()
        loaders = self.datamanager.test_loader[name]
        qf, q = self.extract(model, loaders["query"], f"{name} query features")
        gf, g = self.extract(model, loaders["gallery"], f"{name} gallery features")
        seconds = time.time() - started
        runtime.throughput.count("eval_extract_img", qf.shape[0] + gf.shape[0], seconds)
        runtime.log(
            f"Extracted {qf.shape[0]} query and {gf.shape[0]} gallery features "
            f"({qf.shape[1]}-d) in {seconds:.1f}s"
        )
        self._report_left_out(name, q["kept"], g["kept"])
        protocols = self.protocols_for(name)
        if any(p != "general" for p in protocols) and (q["clothes"] < 0).any():
            raise ValueError(
                f"cc_eval.protocols asks for {protocols} on '{name}', whose items carry no "
                "clothes ids; use ['general'] for this dataset"
            )
        labels = (q["pids"], g["pids"], q["camids"], g["camids"], q["clothes"], g["clothes"])
        if not (opts.rerank or visrank or opts.single_shot):
            with runtime.explain_out_of_memory(
                "ranking", f"cc_eval.chunk_size={opts.chunk_size} queries at a time", "lower it"
            ):
                return evaluate_features(
                    qf,
                    gf,
                    *labels,
                    modes=tuple(protocols),
                    metric=opts.dist_metric,
                    normalize=opts.normalize_feature,
                    max_rank=opts.max_rank,
                    chunk_size=opts.chunk_size,
                )
        distmat = compute_distance_matrix(qf, gf, opts.dist_metric, opts.normalize_feature)
        if opts.rerank:
            distmat = self._rerank(distmat, qf, gf)
        if opts.single_shot:
            results = {
                mode: single_shot_evaluate(
                    distmat,
                    *labels,
                    mode=mode,
                    trials=opts.single_shot_trials,
                    seed=opts.single_shot_seed,
                    max_rank=opts.max_rank,
                )
                for mode in protocols
            }
        else:  # one sort of the distance matrix serves every protocol
            results = evaluate_rank_modes(
                distmat, *labels, modes=tuple(protocols), max_rank=opts.max_rank
            )
        if visrank and runtime.is_main:
            items = self.datamanager.test_dataset[name]
            write_ranked_lists(
                _numpy(distmat),
                [items["query"][i][0] for i in q["kept"]],
                [items["gallery"][i][0] for i in g["kept"]],
                labels,
                protocols,
                os.path.join(save_dir, "visrank_" + name),
                opts.visrank_topk,
                (self.datamanager.height, self.datamanager.width),
            )
        return results

    def _report_left_out(self, name: str, query_kept: np.ndarray, gallery_kept: np.ndarray) -> None:
        items = self.datamanager.test_dataset[name]
        for split, kept in (("query", query_kept), ("gallery", gallery_kept)):
            left_out = np.setdiff1d(np.arange(len(items[split])), kept)
            paths = [items[split][i][0] for i in left_out]
            if paths:
                self.runtime.unreadable.add(f"{name} {split}", paths)
                self.runtime.log(
                    f"Warning: {name}: {len(paths)} {split} image(s) cannot be read and are left "
                    f"out of the evaluation (cc_data.image_policy 'skip'): "
                    f"{', '.join(paths[:10])}{', ...' if len(paths) > 10 else ''}"
                )

    def _rerank(self, distmat: Any, qf: torch.Tensor, gf: torch.Tensor) -> np.ndarray:
        self.runtime.log("Applying person re-ranking ...")
        metric, normalize = self.options.dist_metric, self.options.normalize_feature

        def full(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
            return _numpy(compute_distance_matrix(a, b, metric, normalize))

        return torchreid_api().utils.re_ranking(_numpy(distmat), full(qf, qf), full(gf, gf))

    # ------------------------------------------------------------------ reporting
    def format(self, results: Results) -> str:
        return format_results(results, self.options.ranks, describe_evaluated(self.evaluated))

    def selection_metric(self, results: Results) -> tuple[str, float]:
        return selection_metric(results, self.options.best_metric)

    def write_json(self, results: Results, path: str, extra: dict | None = None) -> None:
        """The results (every protocol's CMC up to ``max_rank``, mAP, query counts) as JSON."""
        payload = {**(self.evaluated or {}), **(extra or {}), "results": results_to_dict(results)}
        atomic_write_text(path, json.dumps(payload, indent=2))


def _numpy(distmat: Any) -> np.ndarray:
    return np.asarray(distmat.cpu() if torch.is_tensor(distmat) else distmat)


def selection_metric(results: Results, key: str) -> tuple[str, float]:
    """``cc_eval.best_metric`` on the first target ('auto': CC mAP if reported, else the first
    protocol's mAP); returns (key, value)."""
    first = results[list(results)[0]]
    if key == "auto":
        key = ("cc" if "cc" in first else next(iter(first))) + "_mAP"
    mode, _, metric = key.partition("_")
    if mode not in first or metric not in ("r1", "mAP"):
        raise ValueError(
            f"cc_eval.best_metric '{key}' is not one of "
            f"{[f'{m}_{x}' for m in first for x in ('r1', 'mAP')]}"
        )
    res = first[mode]
    return key, float(res.cmc[0] if metric == "r1" else res.mAP)


def results_to_dict(results: Results) -> dict:
    """dataset -> protocol -> {r1, r5, r10, r20, mAP, cmc, num_valid, num_skipped} (fractions)."""
    out: dict = {}
    for name, per_mode in results.items():
        out[name] = {}
        for mode, res in per_mode.items():
            ranks = {f"r{k}": float(res.cmc[min(k, len(res.cmc)) - 1]) for k in (1, 5, 10, 20)}
            out[name][mode] = {
                **ranks,
                "mAP": float(res.mAP),
                "cmc": [float(x) for x in res.cmc],
                "num_valid": int(res.num_valid),
                "num_skipped": int(res.num_skipped),
            }
    return out


def describe_evaluated(evaluated: Optional[dict]) -> str:
    """What an evaluation-only run evaluated, for the table's title ('' during training)."""
    if not evaluated:
        return ""
    checkpoint = evaluated.get("checkpoint")
    if checkpoint is None:
        return "UNTRAINED model (test.allow_untrained True: no weights loaded)"
    epoch = checkpoint.get("epoch")
    after = f", after {epoch} epochs" if epoch is not None else ""
    return f"checkpoint '{checkpoint['path']}'{after}, sha256 {checkpoint['sha256'][:12]}"


def format_results(results: Results, ranks: Sequence[int], evaluated: str = "") -> str:
    """One table: a row per (dataset, protocol), R-k and mAP columns, valid query counts;
    ``evaluated`` (what model was evaluated) extends the title."""
    ranks = list(ranks)
    header = f"  {'dataset':<16}{'protocol':<10}" + "".join(f"{'R' + str(r):>8}" for r in ranks)
    header += f"{'mAP':>8}{'queries':>10}"
    title = "** Results **" + (f" of the {evaluated}" if evaluated else "")
    lines = [title, header, "  " + "-" * (len(header) - 2)]
    for name, per_mode in results.items():
        for mode, res in per_mode.items():
            cells = "".join(f"{100 * res.cmc[min(r, len(res.cmc)) - 1]:8.1f}" for r in ranks)
            queries = f"{res.num_valid}" + (f" (-{res.num_skipped})" if res.num_skipped else "")
            lines.append(f"  {name:<16}{mode.upper():<10}{cells}{100 * res.mAP:8.1f}{queries:>10}")
    return "\n".join(lines)
