"""Training-step throughput of the CLIP models through the plugin's own engine step.

For each model: stage 1 (prompt learning over cached features: text tower forward + backward for
a batch of prompts, the mutual loss, Adam) and stage 2 (``CCEngine.forward_backward``: the model,
ID + triplet + HSF losses against the text bank, fused AdamW, bf16 on CUDA), on random weights
and random input tensors (no data loading). Reports images/s, peak memory and model FLOP
utilisation (FLOPs counted by torch's FlopCounterMode on one step, against --peak-tflops).

    python projects/CSGN/benchmarks/bench_train.py --device cuda --out projects/CSGN/results
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
from csgn_plugin.engine.engine import CCEngine  # noqa: E402
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


def bench_model(name, args, num_ids=150):
    opts = [
        "model.name",
        name,
        "train.optim",
        "adamw",
        "train.lr",
        "5e-6",
        "runtime.device",
        args.device,
    ]
    opts += ["data.height", str(args.height), "data.width", str(args.width)]
    opts += ["sampler.train_sampler", "RandomIdentitySampler", "runtime.amp", args.amp]
    if args.tiny:
        opts += ["clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch", "csgn-tiny-rn"]
    cfg = load_config("", opts)
    use_gpu = args.device == "cuda"
    model = builders.build_model_from_config(cfg, num_classes=num_ids, num_cameras=6)
    model = model.to(args.device)
    optimizer = builders.build_optimizer(cfg, model, use_gpu)
    dm = SimpleNamespace(train_loader=None, test_loader={}, datamanager=None)
    engine = CCEngine(
        dm,
        model,
        optimizer,
        None,
        builders.EngineOptions(
            amp=builders.resolve_amp(cfg, use_gpu), loss=builders.loss_options(cfg)
        ),
        use_gpu=use_gpu,
    )
    device, b = args.device, args.batch
    x = torch.randn(b, 3, args.height, args.width, device=device)
    pids = (torch.arange(b, device=device) // 4) % num_ids
    data = {"img": x, "pid": pids, "camid": torch.zeros(b, dtype=torch.long, device=device)}
    result = {"model": name, "batch": b}

    # stage 1: prompts only, over cached features of the batch
    model.set_stage(1)
    with torch.no_grad(), engine.autocast():
        cached = {
            m: model.prompt_image_features(x if m == "rgb" else model.to_grayscale(x)).float()
            for m in model.modalities
        }
    prompt_params = [p for p in model.parameters() if p.requires_grad]
    opt1 = torch.optim.Adam(prompt_params, lr=3.5e-4)
    mutual = MutualLoss()

    def stage1_step():
        with engine.autocast():
            text = {m: model.prompt_features(pids, m).float() for m in model.modalities}
            loss, _ = mutual(cached, text, pids)
        opt1.zero_grad(set_to_none=True)
        loss.backward()
        opt1.step()

    result["stage1_img_s"] = b / timed(stage1_step, device, 3, args.steps)

    # stage 2: the engine's own step (text bank attached as after stage 1)
    model.set_stage(2)
    model.train()
    with torch.no_grad(), engine.autocast():
        ids = torch.arange(num_ids, device=device)
        engine.text_bank = {m: model.prompt_features(ids, m).float() for m in model.modalities}
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
    if args.compile:
        engine.model = torch.compile(model)
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        result["compile_s"] = time.perf_counter() - start
        seconds = timed(step, device, 3, args.steps)
        result["stage2_compiled_img_s"] = b / seconds
        result["stage2_compiled_mfu"] = flops / seconds / (args.peak_tflops * 1e12)
    print(json.dumps(result), flush=True)
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
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--amp", default="auto")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd step")
    p.add_argument("--tiny", action="store_true", help="tiny towers (CPU smoke run)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM)")
    p.add_argument("--out", default="projects/CSGN/results")
    args = p.parse_args()
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    rows = []
    for name in args.models:
        rows.append(bench_model(name, args))
        if args.device == "cuda":
            torch.cuda.empty_cache()
    report = {
        "device": device_name(args.device),
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"train_benchmark_{args.device}")
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=2)
    lines = [
        f"Device: {report['device']}; torch {report['torch']}; {report['date']}",
        f"Command: `{report['command']}`",
        "",
        "| model | stage 1 img/s | stage 2 img/s | GFLOP/img | MFU | peak GB | compiled img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_mem_gb']:.1f}" if r["peak_mem_gb"] is not None else "-"
        comp = f"{r['stage2_compiled_img_s']:.0f}" if "stage2_compiled_img_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['stage1_img_s']:.0f} | {r['stage2_img_s']:.0f} | "
            f"{r['stage2_gflop_per_img']:.1f} | {100 * r['stage2_mfu']:.1f}% | {mem} | {comp} |"
        )
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
