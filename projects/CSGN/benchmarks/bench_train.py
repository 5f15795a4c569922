"""Training-step throughput of the CLIP models through the plugin's own engine step.

For each model, on random weights:

* stage 1 (``PromptStage.step_loss``: prompt features of the batch's distinct identities, text
  tower forward + backward, the mutual loss, Adam) over random cached features: eager (every
  text position), and with ``--graphs`` (CUDA) as training runs it with CUDA graphs: each
  modality's text pass replayed from a graph over a fixed number of identity slots, cut at the
  end-of-text token;
* stage 2 (``CCEngine.forward_backward``: the model, the objective's ID + triplet + HSF losses
  against the text bank, fused AdamW, bf16 on CUDA) on random input tensors: eager, with
  ``--graphs`` the model's forward and backward replayed from CUDA graphs (``GraphedModule``),
  with ``--compile MODE`` ``torch.compile``'d (the first step, compilation, timed apart);
* with ``--data CONFIG``, the same step fed by that config's training data (``CCEngine.train``
  over whole epochs after an untimed one; the stage-1 feature pass): images decoded once and
  augmented on the device (``--cache auto``, the default on CUDA) or loaded per image in
  ``--workers`` processes (``--cache off``); with ``--graphs`` the fed step is the graphed one,
  so ``data_fraction`` (fed / bare) says whether the loader keeps up with it.

``runtime.channels_last`` is resolved as training resolves it (``--channels-last auto``: NHWC on
CUDA for models with a convolutional tower). FLOPs are counted by torch's FlopCounterMode on one
eager step, MFU against ``--peak-tflops``. ``--profile N`` writes torch.profiler's per-operator
table of N eager stage-2 steps.

    python projects/CSGN/benchmarks/bench_train.py --device cuda --out OUT \\
        --data configs/csgn_synthcc.yaml --graphs --models clipreid_vitb16 csgn
"""

import argparse
import datetime
import json
import os
import platform
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from csgn_plugin import builders, checks  # noqa: E402
from csgn_plugin.config import load_config  # noqa: E402
from csgn_plugin.engine.stages import StageContext  # noqa: E402
from csgn_plugin.fileio import atomic_write_text  # noqa: E402
from csgn_plugin.losses import MutualLoss  # noqa: E402


def timed(fn, device, warmup, steps):
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def count_flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def build_data(args):
    """The training data of ``--data``'s dataset at the benchmark's size, batch and workers."""
    opts = ["data.height", str(args.height), "data.width", str(args.width)]
    opts += ["train.batch_size", str(args.batch), "data.workers", str(args.workers)]
    opts += ["test.batch_size", str(args.batch * 4), "data.cache", args.cache]
    if args.data_root:
        opts += ["data.root", args.data_root]
    if args.preset:
        opts += ["cc_data.synthcc_preset", args.preset]
    cfg = load_config(args.data, opts)
    return builders.build_datamanager(cfg, use_gpu=args.device == "cuda")


def profile_table(step, device, steps):
    """torch.profiler's per-operator table over ``steps`` calls of ``step``, slowest first."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "cuda_time_total" if device == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=60)


def bench_with_data(engine, model, args):
    """Stage-1 feature pass and stage-2 epochs fed by the real data pipeline."""
    runtime = engine.runtime
    stage = engine.stages[0]
    context = StageContext(runtime, model, engine.datamanager, lambda: None, engine.record, 0)
    model.set_stage(1)
    stage.cache_features(context)  # warm-up: worker start-up, cudnn autotuning
    runtime.throughput.clear()
    stage.cache_features(context)
    cache_items, cache_s = runtime.throughput.phases["stage1_cache_img"]
    model.set_stage(2)
    model.train()
    engine.max_epoch = 2
    for epoch in range(2):
        engine.epoch = epoch
        if epoch == 1:
            runtime.throughput.clear()
        engine.train(print_freq=10_000)
    items, seconds = runtime.throughput.phases["stage2_train_img"]
    return {"data_stage1_cache_img_s": cache_items / cache_s, "data_stage2_img_s": items / seconds}


def stage1_rate(model, runtime, stage, cfg, args, num_ids, graphed):
    """Samples/s of the stage-1 step over --stage1-batch random cached features."""
    device = args.device
    model.set_stage(1)
    b1 = args.stage1_batch or args.batch
    generator = torch.Generator(device=device).manual_seed(0)
    cached = {
        m: torch.randn(b1, model.embed_dim, device=device, generator=generator)
        for m in model.modalities
    }
    prompt_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(prompt_params, lr=cfg.stage1.lr)
    mutual = MutualLoss(cfg.stage1.cross_modal_weight)
    index, labels = torch.arange(b1), torch.randint(num_ids, (b1,), generator=torch.Generator())
    text_pass, slots = stage.graphed_text_passes(runtime, model) if graphed else (None, 0)

    def step():
        with runtime.autocast():
            loss = stage.step_loss(model, mutual, cached, labels, index, text_pass, slots)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return b1 / timed(step, device, 3, args.steps)


def bench_model(name, args, dm=None, num_ids=150, num_cameras=6):
    opts = ["model.name", name, "train.optim", "adamw", "train.lr", "5e-6"]
    opts += ["runtime.device", args.device, "runtime.amp", args.amp]
    opts += ["data.height", str(args.height), "data.width", str(args.width)]
    opts += ["sampler.train_sampler", "RandomIdentitySampler", "train.batch_size", str(args.batch)]
    opts += ["stage1.batch_size", str(args.batch), "test.batch_size", str(args.batch * 4)]
    opts += ["runtime.channels_last", args.channels_last]
    if args.tiny:
        opts += ["clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch", "csgn-tiny-rn"]
    cfg = load_config("", opts)
    use_gpu = args.device == "cuda"
    if dm is not None:
        num_ids, num_cameras = dm.num_train_pids, dm.num_train_cams
    model = builders.build_clip_model(cfg, num_classes=num_ids, num_cameras=num_cameras)
    model = model.to(args.device)
    runtime = builders.build_runtime(cfg, use_gpu)
    runtime.channels_last = checks.resolve_channels_last(cfg, model, use_gpu)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = builders.build_optimizer(cfg, model)
    data_source = dm or SimpleNamespace(
        train_loader=SimpleNamespace(batch_size=args.batch), test_loader={}
    )
    engine = builders.build_engine(cfg, data_source, model, optimizer, None, runtime)
    graphed_runtime = graphed = None
    if args.graphs and use_gpu:
        graphed_runtime = builders.build_runtime(cfg, use_gpu)
        graphed_runtime.channels_last, graphed_runtime.graphs = runtime.channels_last, True
        stepped = graphed_runtime.graphed(model, "stage2")
        graphed = builders.build_engine(cfg, data_source, stepped, optimizer, None, graphed_runtime)
    device, b = args.device, args.batch
    x = torch.randn(b, 3, args.height, args.width, device=device)
    pids = (torch.arange(b, device=device) // 4) % num_ids
    data = {"img": x, "pid": pids, "camid": torch.zeros(b, dtype=torch.long, device=device)}
    result = {"model": name, "batch": b, "channels_last": runtime.channels_last}

    # stage 1: prompts only, over a batch of cached features (the stage's own step)
    stage = engine.stages[0]
    result["stage1_batch"] = args.stage1_batch or b
    result["stage1_img_s"] = stage1_rate(model, runtime, stage, cfg, args, num_ids, False)
    if graphed is not None:
        result["stage1_graphed_img_s"] = stage1_rate(
            model, graphed_runtime, stage, cfg, args, num_ids, True
        )

    # stage 2: the engine's own step (text bank attached as after stage 1)
    model.set_stage(2)
    model.train()
    with torch.no_grad(), runtime.autocast():
        ids = torch.arange(num_ids, device=device)
        bank = {m: model.prompt_features(ids, m).float() for m in model.modalities}
    engine.objective.set_text_bank(bank)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    step = lambda: engine.forward_backward(data)  # noqa: E731
    seconds = timed(step, device, 3, args.steps)
    flops = count_flops(step)
    result.update(
        stage2_img_s=b / seconds,
        stage2_gflop_per_img=flops / b / 1e9,
        stage2_mfu=flops / seconds / (args.peak_tflops * 1e12),
        peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None,
    )
    if args.profile:
        result["profile"] = profile_table(step, device, args.profile)
    if graphed is not None:
        graphed.objective.set_text_bank(bank)
        graphed_step = lambda: graphed.forward_backward(data)  # noqa: E731
        start = time.perf_counter()
        graphed_step()  # captures
        torch.cuda.synchronize()
        result["stage2_capture_s"] = time.perf_counter() - start
        seconds = timed(graphed_step, device, 3, args.steps)
        result["stage2_graphed_img_s"] = b / seconds
        result["stage2_graphed_mfu"] = flops / seconds / (args.peak_tflops * 1e12)
        # a failed capture falls back to the eager pass (with a warning): say which were graphs
        captured = graphed_runtime.throughput.phases
        result["graphs_captured"] = sorted(k for k in captured if k.endswith("_graph_capture"))
    if dm is not None:
        fed = graphed if graphed is not None else engine
        result.update(bench_with_data(fed, model, args))
        bare = result.get("stage2_graphed_img_s", result["stage2_img_s"])
        result["data_fraction"] = result["data_stage2_img_s"] / bare
        model.set_stage(2)
        model.train()
    if args.compile:
        engine.model = torch.compile(model, mode=args.compile)
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        result["compile_s"] = time.perf_counter() - start
        seconds = timed(step, device, 3, args.steps)
        result["stage2_compiled_img_s"] = b / seconds
        result["stage2_compiled_mfu"] = flops / seconds / (args.peak_tflops * 1e12)
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}), flush=True)
    return result


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    return platform.processor()


COLUMNS = [
    ("stage 1 img/s", "stage1_img_s"),
    ("stage 1 graphed", "stage1_graphed_img_s"),
    ("stage 2 img/s", "stage2_img_s"),
    ("stage 2 graphed", "stage2_graphed_img_s"),
    ("compiled", "stage2_compiled_img_s"),
    ("GFLOP/img", "stage2_gflop_per_img"),
    ("peak GB", "peak_mem_gb"),
    ("data: stage-1 cache img/s", "data_stage1_cache_img_s"),
    ("data: stage 2 img/s", "data_stage2_img_s"),
    ("data / bare step", "data_fraction"),
]


def cell(row, key):
    value = row.get(key)
    if value is None:
        return "-"
    if key == "data_fraction":
        return f"{100 * value:.0f}%"
    return f"{value:.1f}" if key in ("stage2_gflop_per_img", "peak_mem_gb") else f"{value:.0f}"


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=["clipreid_vitb16", "clipreid_rn50", "csgn"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--stage1-batch", type=int, default=0, help="stage-1 samples a step (--batch)")
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--amp", default="auto")
    p.add_argument("--graphs", action="store_true", help="also time the CUDA-graphed steps")
    p.add_argument(
        "--compile",
        default="",
        choices=["", "default", "reduce-overhead", "max-autotune"],
        help="also time the torch.compile'd stage-2 step in this mode",
    )
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--tiny", action="store_true", help="tiny towers (CPU smoke run)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM)")
    p.add_argument("--data", default="", help="also feed the step from this config's dataset")
    p.add_argument("--cache", default="auto", choices=["auto", "on", "off"], help="data.cache")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers with --data")
    p.add_argument("--preset", default="", help="SynthCC preset with --data (config's if empty)")
    p.add_argument("--data-root", default="", help="data.root with --data (config's if empty)")
    p.add_argument("--profile", type=int, default=0, help="profile N eager stage-2 steps")
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="projects/CSGN/results")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    dm = build_data(args) if args.data else None
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args, dm))
        if args.device == "cuda":
            torch.cuda.empty_cache()
    report = {
        "device": device_name(args.device),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "graphs": args.graphs,
        "compile_mode": args.compile or None,
        "data": f"{args.data}, data.cache {args.cache}, {args.workers} workers"
        if args.data
        else None,
        "rows": [{k: v for k, v in r.items() if k != "profile"} for r in rows],
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"train_benchmark_{args.device}{args.tag}")
    atomic_write_text(stem + ".json", json.dumps(report, indent=2))
    if args.profile:
        atomic_write_text(
            stem + "_profile.txt",
            "".join(
                f"=== {r['model']}: {args.profile} eager stage-2 steps ===\n{r['profile']}\n\n"
                for r in rows
            ),
        )
    lines = [
        f"Device: {report['device']}; torch {report['torch']}; {report['date']}",
        f"Command: `{report['command']}`",
        "",
        "| model | NHWC | " + " | ".join(title for title, _ in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = " | ".join(cell(r, key) for _, key in COLUMNS)
        lines.append(f"| {r['model']} | {'yes' if r['channels_last'] else 'no'} | {cells} |")
    atomic_write_text(stem + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
