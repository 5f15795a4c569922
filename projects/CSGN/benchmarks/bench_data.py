"""Data-loading throughput of the training loader (SynthCC by default) per number of workers.

    python projects/CSGN/benchmarks/bench_data.py --workers 0 1 2 --out projects/CSGN/results

Iterates ``builders.build_datamanager(cfg).train_loader`` exactly as training does (sampler,
seeded augmentation, collation), without a model, and reports images/s per worker count, of
wall time and of CPU time (this process and its workers: the figure that a shared machine does
not distort). ``data.cache on`` (an override) measures the loader of images decoded once.
"""

import argparse
import datetime
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))

import torch  # noqa: E402

from csgn_plugin import builders  # noqa: E402
from csgn_plugin.config import load_config  # noqa: E402
from csgn_plugin.fileio import atomic_write_text  # noqa: E402


def cpu_seconds(pids):
    """CPU time (user + system) of the processes ``pids`` (this one and the loader's workers)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / os.sysconf("SC_CLK_TCK")


def loader_rate(cfg_file, opts, workers, batches):
    cfg = load_config(cfg_file, [*opts, "data.workers", str(workers)])
    dm = builders.build_datamanager(cfg, use_gpu=torch.cuda.is_available())
    epoch = 0
    dm.train_sampler.set_epoch(epoch)
    iterator = iter(dm.train_loader)
    next(iterator)  # worker start-up is not throughput
    # the workers' processes (a private attribute of the DataLoader's iterator, read for CPU time)
    pids = [os.getpid(), *(w.pid for w in getattr(iterator, "_workers", []))]
    cpu_start = cpu_seconds(pids)
    start, images = time.perf_counter(), 0
    for _ in range(batches):
        try:
            data = next(iterator)
        except StopIteration:  # short epochs: go on with the next one, as training does
            epoch += 1
            dm.train_sampler.set_epoch(epoch)
            iterator = iter(dm.train_loader)
            data = next(iterator)
        images += data["img"].shape[0]
    seconds, cpu = time.perf_counter() - start, cpu_seconds(pids) - cpu_start
    return images / seconds, images / cpu


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config-file", default="configs/csgn_synthcc.yaml")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--tag", default="cpu", help="output files: data_benchmark_<tag>.{json,md}")
    p.add_argument("--out", default="projects/CSGN/results")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = []
    for workers in args.workers:
        rate, cpu_rate = loader_rate(args.config_file, args.opts, workers, args.batches)
        rows.append({"workers": workers, "img_s": rate, "img_per_cpu_s": cpu_rate})
        print(json.dumps(rows[-1]), flush=True)
    cfg = load_config(args.config_file, args.opts)
    report = {
        "date": datetime.date.today().isoformat(),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "command": "python " + " ".join(sys.argv),
        "input": (
            f"{cfg.data.height}x{cfg.data.width}, batch {cfg.train.batch_size}, "
            f"transforms {list(cfg.data.transforms)}"
        ),
        "rows": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"data_benchmark_{args.tag}")
    atomic_write_text(stem + ".json", json.dumps(report, indent=2))
    lines = [
        f"{report['date']}, {report['cpu_count']} CPUs, load average {report['load_average']}",
        f"Command: `{report['command']}`; {report['input']}",
        "",
        "| workers | images/s | images per CPU second |",
        "|---|---|---|",
    ] + [f"| {r['workers']} | {r['img_s']:.0f} | {r['img_per_cpu_s']:.0f} |" for r in rows]
    atomic_write_text(stem + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
