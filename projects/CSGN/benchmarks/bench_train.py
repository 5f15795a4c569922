"""Training-step throughput of the CLIP models through the plugin's own engine step.

For each model: stage 1 (``PromptStage.step_loss``: prompt features of the batch's distinct
identities, text tower forward + backward, the mutual loss, Adam) and stage 2
(``CCEngine.forward_backward``: the model, the objective's ID + triplet + HSF losses against the
text bank, fused AdamW, bf16 on CUDA), on random weights and random input tensors (no data
loading). The engine, runtime and objective are the ones ``builders`` makes for training.
Reports images/s, peak memory and model FLOP utilisation (FLOPs counted by torch's
FlopCounterMode on one step, against --peak-tflops).

With ``--data CONFIG`` the same model is also fed by the real data pipeline of that config's
dataset (SynthCC by default: decoding, augmentation, sampler, DataLoader workers, pinned host
memory): the stage-1 feature cache is ``PromptStage.cache_features`` and stage 2 is
``CCEngine.train`` over whole epochs (the first one, with worker start-up, is not timed).
``--profile N`` writes torch.profiler's per-operator table of N eager stage-2 steps.

    python projects/CSGN/benchmarks/bench_train.py --device cuda --out projects/CSGN/results \
        --data configs/csgn_synthcc.yaml --workers 8 --profile 5
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

from csgn_plugin import builders  # noqa: E402
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
    opts += ["test.batch_size", str(args.batch * 4)]
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
    """Stage-1 cache and stage-2 epochs fed by the real data pipeline."""
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


def bench_model(name, args, dm=None, num_ids=150, num_cameras=6):
    opts = ["model.name", name, "train.optim", "adamw", "train.lr", "5e-6"]
    opts += ["runtime.device", args.device, "runtime.amp", args.amp]
    opts += ["data.height", str(args.height), "data.width", str(args.width)]
    opts += ["sampler.train_sampler", "RandomIdentitySampler", "train.batch_size", str(args.batch)]
    opts += ["stage1.batch_size", str(args.batch), "test.batch_size", str(args.batch * 4)]
    opts += ["runtime.channels_last", str(args.channels_last)]
    if args.tiny:
        opts += ["clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch", "csgn-tiny-rn"]
    cfg = load_config("", opts)
    use_gpu = args.device == "cuda"
    if dm is not None:
        num_ids, num_cameras = dm.num_train_pids, dm.num_train_cams
    model = builders.build_clip_model(cfg, num_classes=num_ids, num_cameras=num_cameras)
    model = model.to(args.device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = builders.build_optimizer(cfg, model, use_gpu)
    runtime = builders.build_runtime(cfg, use_gpu)
    data_source = dm or SimpleNamespace(
        train_loader=SimpleNamespace(batch_size=args.batch), test_loader={}
    )
    engine = builders.build_engine(cfg, data_source, model, optimizer, None, runtime)
    device, b = args.device, args.batch
    x = torch.randn(b, 3, args.height, args.width, device=device)
    pids = (torch.arange(b, device=device) // 4) % num_ids
    data = {"img": x, "pid": pids, "camid": torch.zeros(b, dtype=torch.long, device=device)}
    result = {"model": name, "batch": b}

    # stage 1: prompts only, over a batch of cached features (the stage's own step: each
    # distinct identity's prompt encoded once), --stage1-batch samples over num_ids identities
    model.set_stage(1)
    b1 = args.stage1_batch or b
    generator = torch.Generator(device=device).manual_seed(0)
    cached = {
        m: torch.randn(b1, model.embed_dim, device=device, generator=generator)
        for m in model.modalities
    }
    prompt_params = [p for p in model.parameters() if p.requires_grad]
    opt1 = torch.optim.Adam(prompt_params, lr=cfg.stage1.lr)
    mutual, stage = MutualLoss(cfg.stage1.cross_modal_weight), engine.stages[0]
    index, labels = torch.arange(b1), torch.randint(num_ids, (b1,), generator=torch.Generator())

    def stage1_step():
        with runtime.autocast():
            loss = stage.step_loss(model, mutual, cached, labels, index)
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()

    result["stage1_batch"] = b1
    result["stage1_img_s"] = b1 / timed(stage1_step, device, 3, args.steps)

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
    if dm is not None:
        result.update(bench_with_data(engine, model, args))
        model.set_stage(2)
        model.train()
    if args.compile:
        engine.model = torch.compile(model, mode=args.compile_mode)
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
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    p.add_argument(
        "--compile-mode",
        default="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile mode ('reduce-overhead' adds CUDA graphs)",
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC images and weights")
    p.add_argument("--tiny", action="store_true", help="tiny towers (CPU smoke run)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM)")
    p.add_argument("--data", default="", help="also feed the step from this config's dataset")
    p.add_argument("--workers", type=int, default=8, help="DataLoader workers with --data")
    p.add_argument("--preset", default="", help="SynthCC preset with --data (config's if empty)")
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
        "channels_last": args.channels_last,
        "compile_mode": args.compile_mode if args.compile else None,
        "data": f"{args.data}, {args.workers} workers" if args.data else None,
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
        "| model | stage 1 img/s | stage 2 img/s | GFLOP/img | MFU | peak GB | compiled img/s "
        "| data: stage-1 cache img/s | data: stage 2 img/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r, key):
        return f"{r[key]:.0f}" if r.get(key) is not None else "-"

    for r in rows:
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        lines.append(
            f"| {r['model']} | {r['stage1_img_s']:.0f} | {r['stage2_img_s']:.0f} | "
            f"{r['stage2_gflop_per_img']:.1f} | {100 * r['stage2_mfu']:.1f}% | {mem} | "
            f"{cell(r, 'stage2_compiled_img_s')} | {cell(r, 'data_stage1_cache_img_s')} | "
            f"{cell(r, 'data_stage2_img_s')} |"
        )
    atomic_write_text(stem + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
