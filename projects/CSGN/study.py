"""Clothes-changing accuracy study on SynthCC (v2): the CLIP models from SynthCLIP beside
random towers, CSGN's ablations and choices, a torchreid baseline, CAL (with and without its
adversarial loss).

Every run goes through the same launcher as ``tools/train.py`` with the main job's config
(``configs/csgn_synthcc.yaml``: tiny CLIP towers at 128x64, SynthCLIP weights); each (preset,
variant, seed) is one run whose metrics are stored in ``<out>/runs/.../metrics.json`` (an
interrupted study skips the runs it already has). Variants ending in ``@random`` start from
random towers instead of SynthCLIP. The summary is mean +- std over seeds of R1 and mAP under
the general, CC and SC protocols, and, for the questions in :data:`QUESTIONS`, the paired
difference over the same seeds with a 95% t-interval, as ``<out>/study.{json,md,png}``.

    python projects/CSGN/study.py          # default + hard, 5 seeds, in parallel
    python projects/CSGN/study.py --smoke   # one tiny run per variant, random towers
    python projects/CSGN/study.py --variants csgn --against OLD_OUT   # this code vs a study
        # run with the same options at another commit: paired differences over the seeds
"""

import argparse
import concurrent.futures
import ctypes
import datetime
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from csgn_plugin.builders import resolve_synthclip  # noqa: E402
from csgn_plugin.compat import load_checkpoint  # noqa: E402
from csgn_plugin.config import load_config  # noqa: E402
from csgn_plugin.data.atomic_dir import exclusive_lock, lock_path  # noqa: E402
from csgn_plugin.data.synth import ensure_synthcc  # noqa: E402
from csgn_plugin.engine.checkpoint import config_differences  # noqa: E402
from csgn_plugin.fileio import atomic_write_text  # noqa: E402
from csgn_plugin.launcher import command_line  # noqa: E402
from csgn_plugin.launcher import main as launch  # noqa: E402
from csgn_plugin.pretraining import ensure_synthclip_towers  # noqa: E402

CSGN = os.path.join(ROOT, "configs", "csgn_synthcc.yaml")
OSNET = os.path.join(ROOT, "configs", "synthcc_osnet.yaml")
CAL = os.path.join(ROOT, "configs", "synthcc_cal.yaml")
RANDOM = ["model.pretrained", "False"]  # the '@random' arm: the same model from random towers
CLIPREID = ["loss.hsf.gray_weight", "0.0"]
# name -> (config file, overrides): METHOD.md's ablations, CSGN's own choices, the baselines
VARIANTS = {
    "osnet_x0_25": (OSNET, []),
    "clipreid_vitb16": (CSGN, ["model.name", "clipreid_vitb16", *CLIPREID]),
    "clipreid_rn50": (CSGN, ["model.name", "clipreid_rn50", *CLIPREID]),
    "csgn": (CSGN, []),
    "csgn_no_gray_prompts": (CSGN, ["csgn.modalities", "['rgb']", "loss.hsf.gray_weight", "0.0"]),
    "csgn_no_resnet": (CSGN, ["csgn.use_resnet", "False"]),
    "csgn_hsf_rgb_only": (CSGN, ["loss.hsf.gray_weight", "0.0"]),
    "csgn_fusion_sum": (CSGN, ["csgn.fusion", "sum"]),
    "csgn_fusion_cross_attn": (CSGN, ["csgn.fusion", "cross_attn"]),
    "csgn_cross_modal": (CSGN, ["stage1.cross_modal_weight", "0.5"]),
    "csgn_vit_lr_0.1": (CSGN, ["csgn.vit_lr_factor", "0.1"]),
    "csgn_fusion_init": (CSGN, ["csgn.fusion_init_std", "0.01"]),
    "csgn_part_norm": (CSGN, ["csgn.test_part_norm", "True"]),
    "cal_osnet_x0_25": (CAL, []),
    # the same run without the adversarial term (its gate never opens; the clothes classifier
    # still trains, on detached features: it cannot reach the backbone)
    "cal_osnet_x0_25_no_adv": (CAL, ["loss.cal.start_epoch_adv", "1000"]),
}
# the random-tower arm of the variants the questions compare
for _name in ("clipreid_vitb16", "clipreid_rn50", "csgn", "csgn_no_gray_prompts"):
    VARIANTS[f"{_name}@random"] = (CSGN, [*VARIANTS[_name][1], *RANDOM])
# (question, variant A, variant B): the paired difference A - B over the same seeds
QUESTIONS = [
    ("grayscale prompts (SynthCLIP)", "csgn", "csgn_no_gray_prompts"),
    ("grayscale prompts (random towers)", "csgn@random", "csgn_no_gray_prompts@random"),
    ("CSGN vs CLIP-ReID ViT (SynthCLIP)", "csgn", "clipreid_vitb16"),
    ("CSGN vs CLIP-ReID RN50 (SynthCLIP)", "csgn", "clipreid_rn50"),
    ("SynthCLIP vs random towers (CSGN)", "csgn", "csgn@random"),
    ("HSF gray term", "csgn", "csgn_hsf_rgb_only"),
    ("ResNet branch", "csgn", "csgn_no_resnet"),
    ("cross-modal mutual term", "csgn_cross_modal", "csgn"),
    ("ViT lr x0.1", "csgn_vit_lr_0.1", "csgn"),
    ("fusion init std 0.01", "csgn_fusion_init", "csgn"),
    ("per-part normalised feature", "csgn_part_norm", "csgn"),
    ("CSGN vs OSNet", "csgn", "osnet_x0_25"),
    ("CAL vs OSNet", "cal_osnet_x0_25", "osnet_x0_25"),
    ("CAL vs CSGN", "cal_osnet_x0_25", "csgn"),
    ("CAL's adversarial loss", "cal_osnet_x0_25", "cal_osnet_x0_25_no_adv"),
]
PROTOCOLS = ("general", "cc", "sc")
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies
CHANCE_TRIALS = 200


def chance_metrics(data_root, preset, trials=CHANCE_TRIALS):
    """Expected metrics of a model that ranks at random: ``trials`` uniform random distance
    matrices over the preset's real query/gallery labels, scored by the same evaluator."""
    import torch

    from csgn_plugin.data.datasets.synthcc import SynthCC
    from csgn_plugin.evaluation import evaluate_rank_modes

    data = SynthCC(root=data_root, synthcc_preset=preset, synthcc_seed=0, verbose=False)
    (_, q_pids, q_cams, _, q_clothes), (_, g_pids, g_cams, _, g_clothes) = (
        zip(*data.query),
        zip(*data.gallery),
    )
    generator = torch.Generator().manual_seed(0)
    sums = {p: {"r1": 0.0, "mAP": 0.0} for p in PROTOCOLS}
    for _ in range(trials):
        distances = torch.rand(len(q_pids), len(g_pids), generator=generator)
        results = evaluate_rank_modes(
            distances, q_pids, g_pids, q_cams, g_cams, q_clothes, g_clothes, modes=PROTOCOLS
        )
        for p in PROTOCOLS:
            sums[p]["r1"] += float(results[p].cmc[0]) / trials
            sums[p]["mAP"] += float(results[p].mAP) / trials
    return sums


def run_spec(out, preset, variant, seed, args):
    """(config file, overrides, run folder) of one (preset, variant, seed) run."""
    run_dir = os.path.join(out, "runs", preset, variant, f"seed{seed}")
    config, overrides = VARIANTS[variant]
    opts = [
        *overrides,
        "data.root", args.data_root, "data.save_dir", run_dir,
        "cc_data.synthcc_preset", preset, "train.seed", str(seed),
        "test.visrank", "False", "runtime.plot", "False", "test.eval_freq", "-1",
        "runtime.cpu_threads", str(args.threads),
    ]  # fmt: skip
    if args.epochs is not None:
        opts += ["train.max_epoch", str(args.epochs)]
    if args.stage1_epochs is not None and config == CSGN:
        opts += ["stage1.max_epoch", str(args.stage1_epochs)]
    if args.smoke:  # random tiny towers: no SynthCLIP pretraining in a smoke run
        opts += ["data.height", "64", "data.width", "32", "train.batch_size", "16"]
        if config == CSGN:
            opts += ["stage1.batch_size", "16", *RANDOM]
            opts += ["clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch", "csgn-tiny-rn"]
    return config, opts, run_dir


def stored_metrics(out, preset, variant, seed, args):
    """The metrics of this run if it has finished with exactly this config, else None."""
    return _stored_metrics(*run_spec(out, preset, variant, seed, args))


def _stored_metrics(config, opts, run_dir):
    # compared as the run saved its config: with 'synthclip' weights resolved to their files
    cfg, _ = resolve_synthclip(load_config(config, opts))
    return finished_metrics(run_dir, cfg.dump())


def run_one(out, preset, variant, seed, args):
    config, opts, run_dir = run_spec(out, preset, variant, seed, args)
    # a run folder belongs to one run at a time: a second study on the same folder waits here,
    # then reuses what the first one finished
    with exclusive_lock(lock_path(run_dir)):
        metrics = _stored_metrics(config, opts, run_dir)
        if metrics is not None:
            return metrics
        shutil.rmtree(run_dir, ignore_errors=True)  # an unfinished or differently configured run
        started = time.time()
        engine = launch(["--config-file", config, *opts])
        results = engine.last_results["synthcc"]
        metrics = {
            p: {"r1": float(results[p].cmc[0]), "mAP": float(results[p].mAP)} for p in results
        }
        metrics["seconds"] = time.time() - started
        atomic_write_text(os.path.join(run_dir, "metrics.json"), json.dumps(metrics))
        return metrics


def finished_metrics(run_dir, config_dump):
    """The metrics of a finished run made with exactly this config (read from its checkpoint),
    or None: a study rerun with other settings must not reuse old numbers."""
    metrics_path = os.path.join(run_dir, "metrics.json")
    checkpoint_path = os.path.join(run_dir, "checkpoints", "last.pth")
    if not (os.path.isfile(metrics_path) and os.path.isfile(checkpoint_path)):
        return None
    if config_differences(load_checkpoint(checkpoint_path)["config"], config_dump, limit=1):
        return None
    with open(metrics_path) as f:
        return json.load(f)


def _quiet_worker(study_pid):
    """A study worker process: console output dropped (every run keeps its own log file in its
    run folder), and on Linux it dies with the study: a killed study must not leave workers that
    go on rewriting run folders. Each run sets its threads (``runtime.cpu_threads``)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != study_pid:  # the study died before the line above
            os._exit(1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (lives as long as the process)


def run_all(args):
    """Every (preset, variant, seed) run, ``args.jobs`` at a time, each on ``args.threads``
    threads: on a small CPU, independent single-threaded runs use the cores better than one run
    on all of them. Returns {(preset, variant): [metrics per seed]}."""
    if args.report_only:  # train nothing: the pairs whose runs have all finished
        return collect_runs(args, lambda p, v, seed: stored_metrics(args.out, p, v, seed, args))
    for preset in args.presets:  # generate each tree once, before runs race to do it
        ensure_synthcc(args.data_root, preset, 0)
    if not args.smoke:  # and SynthCLIP, pretrained once for every run
        ensure_synthclip_towers(args.data_root)
    keys = [(p, v, s) for p in args.presets for v in args.variants for s in args.seeds]
    pool = concurrent.futures.ProcessPoolExecutor(
        args.jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_quiet_worker,
        initargs=(os.getpid(),),
    )
    with pool:
        futures = {key: pool.submit(run_one, args.out, *key, args) for key in keys}
        for done, key in enumerate(keys, 1):
            futures[key].result()
            print(f"[{done}/{len(keys)}] {key[0]} {key[1]} seed {key[2]}", flush=True)
    return collect_runs(args, lambda p, v, seed: futures[(p, v, seed)].result())


def collect_runs(args, metrics_of):
    """{(preset, variant): [metrics per seed]} with each preset's chance row first, from
    ``metrics_of(preset, variant, seed)`` (None: not run with these settings). A pair with a seed
    missing gets no row (a study spread over several invocations, e.g. fewer variants on one
    preset, is reported in one table; the report names the pairs left out)."""
    runs = {}
    for p in args.presets:
        runs[(p, "chance (random ranking)")] = [chance_metrics(args.data_root, p)]
        for v in args.variants:
            per_seed = [metrics_of(p, v, seed) for seed in args.seeds]
            if all(m is not None for m in per_seed):
                runs[(p, v)] = per_seed
    return runs


def add_against(runs, args):
    """Add, for each (preset, variant) here, the same runs of the study in ``args.against`` (the
    same options at another commit) as the row ``'<variant> @<its folder name>'``, when it has
    every seed. Returns the (preset, this, that) pairs added."""
    label = os.path.basename(os.path.normpath(args.against))
    added = []
    for preset, variant in list(runs):
        if variant not in VARIANTS:  # the chance rows
            continue
        paths = [
            os.path.join(args.against, "runs", preset, variant, f"seed{seed}", "metrics.json")
            for seed in args.seeds
        ]
        if all(os.path.isfile(path) for path in paths):
            other = f"{variant} @{label}"
            runs[(preset, other)] = [json.load(open(path)) for path in paths]
            added.append((preset, variant, other))
    return added


def summarise(runs):
    """{(preset, variant): [metrics per seed]} -> {(preset, variant, protocol, metric): (m, s)}"""
    summary = {}
    for (preset, variant), per_seed in runs.items():
        for protocol in PROTOCOLS:
            for metric in ("r1", "mAP"):
                values = np.array([100 * m[protocol][metric] for m in per_seed])
                summary[(preset, variant, protocol, metric)] = (values.mean(), values.std())
    return summary


def paired_difference(runs, preset, a, b, protocol, metric):
    """Mean of (A - B) over the seeds both have, in points, with a 95% t-interval:
    (mean, low, high, seeds)."""
    from scipy import stats

    pairs = list(zip(runs[(preset, a)], runs[(preset, b)]))
    diffs = np.array([100 * (x[protocol][metric] - y[protocol][metric]) for x, y in pairs])
    mean = float(diffs.mean())
    if len(diffs) < 2:
        return mean, float("nan"), float("nan"), len(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
    return mean, mean - half, mean + half, len(diffs)


def write_report(out, runs, summary, args, against=()):
    def cells(p, v, pr, m):
        mean, std = summary[(p, v, pr, m)]
        # one value (the chance row) has no spread to show
        return f"{mean:.1f}" if len(runs[(p, v)]) == 1 else f"{mean:.1f} ± {std:.1f}"

    lines = [
        f"SynthCC accuracy study, {datetime.date.today().isoformat()}, "
        f"seeds {args.seeds}, command: `{args.command}`",
        "",
        "| preset | variant | general R1 | general mAP | CC R1 | CC mAP | SC R1 | SC mAP |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for preset, variant in runs:
        row = [cells(preset, variant, pr, m) for pr in PROTOCOLS for m in ("r1", "mAP")]
        lines.append(f"| {preset} | {variant} | " + " | ".join(row) + " |")
    differences = []
    asked = [
        (p, q, a, b)
        for p in args.presets
        for q, a, b in QUESTIONS
        if (p, a) in runs and (p, b) in runs
    ] + [(p, "this code vs --against", a, b) for p, a, b in against]
    missing = [f"{p}/{v}" for p in args.presets for v in args.variants if (p, v) not in runs]
    if missing:
        lines += ["", "Not run with these settings (no row): " + ", ".join(missing) + "."]
    if asked:
        lines += [
            "",
            "Paired differences A - B over the same seeds, in points (95% t-interval):",
            "",
            "| preset | question | A | B | CC R1 | CC mAP | general mAP |",
            "|---|---|---|---|---|---|---|",
        ]
    for preset, question, a, b in asked:
        cells_ = []
        for protocol, metric in (("cc", "r1"), ("cc", "mAP"), ("general", "mAP")):
            mean, low, high, n = paired_difference(runs, preset, a, b, protocol, metric)
            cells_.append(f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]")
            differences.append(
                {"preset": preset, "question": question, "a": a, "b": b,
                 "protocol": protocol, "metric": metric, "mean": mean, "low": low,
                 "high": high, "seeds": n}
            )  # fmt: skip
        lines.append(f"| {preset} | {question} | {a} | {b} | " + " | ".join(cells_) + " |")
    atomic_write_text(os.path.join(out, "study.md"), "\n".join(lines) + "\n")
    keys = ("preset", "variant", "protocol", "metric")
    rows = [{**dict(zip(keys, k)), "mean": v[0], "std": v[1]} for k, v in summary.items()]
    seconds = [m.get("seconds", 0.0) for per_seed in runs.values() for m in per_seed]
    report = {
        "command": args.command,
        "seeds": args.seeds,
        "rows": rows,
        "paired_differences": differences,
        "run_seconds_total": float(sum(seconds)),
    }
    atomic_write_text(os.path.join(out, "study.json"), json.dumps(report, indent=2))
    plot(out, runs, summary)
    print("\n".join(lines))


def plot(out, runs, summary):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = sorted({p for p, _ in runs})
    fig, axes = plt.subplots(1, len(presets), figsize=(7 * len(presets), 4.5), squeeze=False)
    for ax, preset in zip(axes[0], presets):
        variants = [v for p, v in runs if p == preset]
        x = np.arange(len(variants))
        for i, protocol in enumerate(PROTOCOLS):
            means = [summary[(preset, v, protocol, "mAP")][0] for v in variants]
            stds = [summary[(preset, v, protocol, "mAP")][1] for v in variants]
            ax.bar(x + (i - 1) * 0.27, means, 0.27, yerr=stds, label=protocol.upper())
        ax.set_xticks(x, variants, rotation=35, ha="right", fontsize=8)
        ax.set(title=f"SynthCC '{preset}': mAP (mean ± std over seeds)", ylabel="mAP (%)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "study.png"), dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["default", "hard"])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--epochs", type=int, default=10, help="train.max_epoch of every run")
    p.add_argument("--stage1-epochs", type=int, default=20, help="stage1.max_epoch (CLIP)")
    p.add_argument("--data-root", default="reid-data")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--out", default=os.path.join(HERE, "results", "study"))
    p.add_argument("--smoke", action="store_true", help="tiny preset, 1 + 1 epochs, 1 seed")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: report the (preset, variant) pairs whose runs have all finished",
    )
    p.add_argument(
        "--against",
        help="another study's --out (the same options, another commit): its runs become rows "
        "and the paired differences this - that are reported",
    )
    args = p.parse_args(argv)
    args.command = command_line(__file__, argv)
    if args.smoke:
        args.presets, args.seeds, args.epochs, args.stage1_epochs = ["tiny"], [0], 1, 1
    os.makedirs(args.out, exist_ok=True)
    runs = run_all(args)
    against = add_against(runs, args) if args.against else []
    write_report(args.out, runs, summarise(runs), args, against)


if __name__ == "__main__":
    main()
