"""Feature-extraction throughput of evaluation: the plugin's own ``Evaluator.extract`` (the code
every evaluation runs: runtime autocast, channels-last as training resolves it, sharded loader,
progress, gathered tensors) over a gallery of N images.

The gallery is N JPEG files held in memory (one encoded image per identity-camera draw, 128x64
noise with a per-identity colour, so decoding costs what a real JPEG costs), resized to the
model's input with the evaluation transform. By default (``--cache``) the images are decoded
once (``data/image_cache.py``: DataLoader workers, uint8 on the device; the decoding is timed
apart) and every extraction pass reads them from there, as a training run's evaluations do;
``--no-cache`` decodes in the workers during the pass. ``--graphs`` (CUDA) replays the model's
forward from a CUDA graph (``GraphedModule``). The model has random weights (real size by
default). The first ``--warmup`` batches are timed apart (worker start-up, autotuning, capture).

    python projects/CSGN/benchmarks/bench_extract.py --device cuda --images 20000 \
        --batch 512 --workers 12 --graphs --out projects/CSGN/results
"""

import argparse
import datetime
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from csgn_plugin import builders, checks  # noqa: E402
from csgn_plugin.config import load_config  # noqa: E402
from csgn_plugin.data.batch_augment import batch_augmentation  # noqa: E402
from csgn_plugin.data.image_cache import CachedEvalLoader, timed_decode  # noqa: E402
from csgn_plugin.evaluation.evaluator import Evaluator  # noqa: E402
from csgn_plugin.fileio import atomic_write_text  # noqa: E402
from csgn_plugin.inference import test_transform  # noqa: E402


class JpegGallery(Dataset):
    """N in-memory JPEGs; items as the plugin's datasets give them (img, pid, camid, clothes)."""

    def __init__(self, n: int, transform, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.transform = transform
        self.items = []
        for i in range(n):
            colour = rng.integers(0, 256, size=3)
            pixels = np.clip(colour + rng.normal(0, 40, size=(128, 64, 3)), 0, 255)
            buffer = io.BytesIO()
            Image.fromarray(pixels.astype(np.uint8)).save(buffer, format="JPEG", quality=90)
            self.items.append((buffer.getvalue(), i // 20, i % 6))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        data, pid, camid = self.items[index]
        img = self.transform(Image.open(io.BytesIO(data)).convert("RGB"))
        return {"img": img, "pid": pid, "camid": camid, "clothes_id": pid}


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="csgn")
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--workers", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3, help="batches timed apart")
    p.add_argument("--amp", default="auto")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--cache", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--graphs", action="store_true", help="the forward from a CUDA graph")
    p.add_argument("--tiny", action="store_true", help="tiny towers at 128x64 (CPU smoke run)")
    p.add_argument("--tag", default="")
    p.add_argument("--out", default="projects/CSGN/results")
    args = p.parse_args()
    opts = ["model.name", args.model, "runtime.device", args.device, "runtime.amp", args.amp]
    opts += ["runtime.channels_last", args.channels_last, "test.batch_size", str(args.batch)]
    if args.tiny:
        opts += ["clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch", "csgn-tiny-rn"]
        opts += ["data.height", "128", "data.width", "64"]
    cfg = load_config("", opts)
    use_gpu = args.device == "cuda"
    if use_gpu:
        torch.backends.cudnn.benchmark = True
    runtime = builders.build_runtime(cfg, use_gpu)
    model = builders.build_clip_model(cfg, num_classes=100).to(runtime.device).eval()
    runtime.channels_last = checks.resolve_channels_last(cfg, model, use_gpu)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.graphs and use_gpu:
        runtime.graphs = True
        model = runtime.graphed(model, "eval")
    transform = test_transform(builders.model_input(cfg))
    dataset = JpegGallery(args.images, transform)
    decode_s = None
    if args.cache:
        normalise = batch_augmentation(transform)
        size = (cfg.data.height, cfg.data.width)
        decoded, decode_s = timed_decode(
            dataset, size, [normalise.interpolation], runtime.device, False, args.workers, "gallery"
        )
        loader = CachedEvalLoader(decoded, args.batch, normalise, runtime.device)
        warm_loader = loader.subset(range(min(len(dataset), args.warmup * args.batch)))
    else:
        loader = DataLoader(
            dataset,
            batch_size=args.batch,
            num_workers=args.workers,
            pin_memory=use_gpu,
            persistent_workers=args.workers > 0,
            prefetch_factor=4 if args.workers > 0 else None,
        )
        warm = torch.utils.data.Subset(dataset, range(min(len(dataset), args.warmup * args.batch)))
        warm_loader = DataLoader(warm, batch_size=args.batch, num_workers=0)
    evaluator = Evaluator(runtime, None, builders.evaluation_options(cfg))
    start = time.perf_counter()
    evaluator.extract(model, warm_loader, "warm-up")
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    features, _ = evaluator.extract(model, loader, "gallery")
    seconds = time.perf_counter() - start  # extract returns CPU labels and device features
    if use_gpu:
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    device = torch.cuda.get_device_name() if use_gpu else f"CPU ({os.cpu_count()} cores)"
    report = {
        "device": device,
        "date": datetime.date.today().isoformat(),
        "torch": torch.__version__,
        "command": "python " + " ".join(sys.argv),
        "model": args.model,
        "amp": runtime.amp,
        "images": len(dataset),
        "feature_dim": int(features.shape[1]),
        "batch": args.batch,
        "workers": args.workers,
        "channels_last": runtime.channels_last,
        "cache": args.cache,
        "graphs": runtime.graphs,
        # a failed capture falls back to the eager pass (with a warning): was it a graph
        "graph_captured": "eval_graph_capture" in runtime.throughput.phases,
        "decode_s": decode_s,
        "decode_img_per_s": len(dataset) / decode_s if decode_s else None,
        "warmup_s": warmup_s,
        "seconds": seconds,
        "img_per_s": len(dataset) / seconds,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"extract_benchmark_{args.device}{args.tag}")
    atomic_write_text(stem + ".json", json.dumps(report, indent=2))
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
