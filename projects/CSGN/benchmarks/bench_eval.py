"""Benchmark of the plugin's evaluator (csgn_plugin.evaluation) on random problems of real sizes.

(a) distance-matrix input: our ``evaluate_rank`` against torchreid's Python ``evaluate_rank`` on
    the same float64 matrix (times, speed-up, identical CMC/mAP), for the sizes not larger than
    2,000 x 20,000 (``--no-torchreid`` times ours only: for machines without torchreid);
(b) features input: ``evaluate_features`` on every size (LaST's 10,176 x 125,353 included), with
    the distance time measured by a separate distance-only pass, and the peak memory.

Random problems have a realistic label structure: every identity in the gallery, query
identities drawn from them, several cameras and outfits per identity (LaST: one camera per image
and clothes id = pid, as its parser sets them, so only the general protocol applies), and
features = identity centre + outfit centre + noise.

    python projects/CSGN/benchmarks/bench_eval.py --device cpu
    python projects/CSGN/benchmarks/bench_eval.py --device cuda --sizes ltcc mid last

Writes eval_benchmark_<cpu|cuda>.json and .md into --out (default projects/CSGN/results).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import re
import resource
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO_ROOT))

from csgn_plugin.evaluation import (  # noqa: E402
    PairwiseDistance,
    compute_distance_matrix,
    evaluate_features,
    evaluate_rank_detailed,
    evaluate_rank_modes,
)
from csgn_plugin.fileio import atomic_write_text  # noqa: E402


@dataclass(frozen=True)
class ProblemSize:
    name: str
    num_query: int
    num_gallery: int
    num_ids: int
    num_cams: int  # 0: every image its own camera (LaST)
    outfits: int  # 0: clothes id = pid (LaST)
    modes: tuple[str, ...]


SIZES = {
    "ltcc": ProblemSize("ltcc", 493, 7050, 75, 12, 4, ("general", "cc", "sc")),
    "mid": ProblemSize("mid", 2000, 20000, 3333, 8, 3, ("general", "cc", "sc")),
    "last": ProblemSize("last", 10176, 125353, 5000, 0, 0, ("general",)),
}
# (a) holds the whole float64 matrix (LaST's would be 10 GB) and torchreid's loop takes about a
# minute at 2,000 x 20,000 already: run it up to that size
DISTMAT_MAX_GALLERY = 20000


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--sizes", nargs="+", choices=tuple(SIZES), default=list(SIZES))
    parser.add_argument("--dim", type=int, default=1280, help="feature dimension")
    parser.add_argument("--chunk-size", type=int, default=1024, help="queries ranked at a time")
    parser.add_argument(
        "--no-torchreid", action="store_true", help="in (a), time only our evaluator"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "projects/CSGN/results")
    return parser.parse_args()


# --- measurement helpers -----------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        cores = len(re.findall(r"^processor\s*:", cpuinfo, re.MULTILINE))
        return f"{model.group(1).strip() if model else platform.processor()} ({cores} cores)"
    except OSError:
        return platform.processor() or "unknown CPU"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of one stage: CUDA allocator peak, or the process's peak RSS on the CPU.

    On Linux the RSS high-water mark is reset by writing 5 to /proc/self/clear_refs, so each
    stage gets its own peak; where that is refused, ru_maxrss (peak over the whole run) is used.
    Freed heap memory is first handed back to the system (malloc_trim), so that memory left over
    from earlier stages does not hide this stage's own allocations.
    """

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_mb = torch.cuda.memory_allocated(self.device) / 2**20
            self.kind = "torch.cuda.max_memory_allocated"
        else:
            libc_path = ctypes.util.find_library("c")
            if libc_path and hasattr(ctypes.CDLL(libc_path), "malloc_trim"):
                ctypes.CDLL(libc_path).malloc_trim(0)
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.kind = "peak RSS (VmHWM, reset per stage)"
            except OSError:
                self.kind = "peak RSS of the whole run (ru_maxrss)"
            self.before_mb = self._status_mb("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.kind.startswith("peak RSS (VmHWM"):
            self.peak_mb = self._status_mb("VmHWM")
        else:
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    @staticmethod
    def _status_mb(field: str) -> float:
        status = Path("/proc/self/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1)) / 1024

    def as_dict(self) -> dict:
        return {
            "kind": self.kind,
            "before_mb": round(self.before_mb, 1),
            "peak_mb": round(self.peak_mb, 1),
            "added_mb": round(self.peak_mb - self.before_mb, 1),
        }


def timed(device: torch.device, function, *args, **kwargs):
    synchronize(device)
    start = time.perf_counter()
    value = function(*args, **kwargs)
    synchronize(device)
    return value, time.perf_counter() - start


# --- problems ----------------------------------------------------------------------------------


def make_labels(size: ProblemSize, rng: np.random.Generator) -> dict[str, np.ndarray]:
    # every identity appears in the gallery; the rest of the gallery and the queries are random ids
    extra = rng.integers(size.num_ids, size=size.num_gallery - size.num_ids)
    g_pids = rng.permutation(np.concatenate([np.arange(size.num_ids), extra]))
    q_pids = rng.integers(size.num_ids, size=size.num_query)
    if size.num_cams:
        q_cams = rng.integers(size.num_cams, size=size.num_query)
        g_cams = rng.integers(size.num_cams, size=size.num_gallery)
    else:
        q_cams = np.arange(size.num_query)
        g_cams = size.num_query + np.arange(size.num_gallery)
    if size.outfits:
        q_clothes = q_pids * size.outfits + rng.integers(size.outfits, size=size.num_query)
        g_clothes = g_pids * size.outfits + rng.integers(size.outfits, size=size.num_gallery)
    else:
        q_clothes, g_clothes = q_pids.copy(), g_pids.copy()
    return {
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": q_cams,
        "g_camids": g_cams,
        "q_clothes_ids": q_clothes,
        "g_clothes_ids": g_clothes,
    }


def make_features(
    labels: dict[str, np.ndarray], dim: int, device: torch.device, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator(device=device).manual_seed(seed)
    num_clothes = int(max(labels["q_clothes_ids"].max(), labels["g_clothes_ids"].max())) + 1
    num_ids = int(max(labels["q_pids"].max(), labels["g_pids"].max())) + 1
    id_centres = torch.randn(num_ids, dim, generator=generator, device=device, dtype=dtype)
    outfit_centres = torch.randn(num_clothes, dim, generator=generator, device=device, dtype=dtype)

    def features(prefix: str) -> torch.Tensor:
        pids = torch.from_numpy(labels[f"{prefix}_pids"]).to(device)
        clothes = torch.from_numpy(labels[f"{prefix}_clothes_ids"]).to(device)
        noise = torch.randn(len(pids), dim, generator=generator, device=device, dtype=dtype)
        # scales chosen so that the random problems are neither trivial nor hopeless
        return noise.add_(id_centres[pids], alpha=0.25).add_(outfit_centres[clothes], alpha=0.15)

    return features("q"), features("g")


# --- the two benchmarks ------------------------------------------------------------------------


def distmat_benchmark(
    size: ProblemSize,
    labels: dict,
    qf: torch.Tensor,
    gf: torch.Tensor,
    device: torch.device,
    with_torchreid: bool,
) -> dict:
    """(a): one float64 distance matrix through our evaluator and, optionally, torchreid's."""
    # float64 keeps the distances of a row distinct, so both rankings are fully determined
    distmat = compute_distance_matrix(qf.double(), gf.double())
    args = [labels[k] for k in ("q_pids", "g_pids", "q_camids", "g_camids")]
    ours, ours_s = timed(device, evaluate_rank_detailed, distmat, *args, max_rank=50)
    modes, all_modes_s = timed(device, evaluate_rank_modes, distmat, **labels, modes=size.modes)
    entry = {
        "distmat": f"{size.num_query} x {size.num_gallery} float64 on {device.type}",
        "ours_general_s": round(ours_s, 4),
        "ours_all_modes_s": round(all_modes_s, 4),
        "ours": {mode: summarize(result) for mode, result in modes.items()},
    }
    if with_torchreid:
        from csgn_plugin.compat import torchreid_api

        evaluate = torchreid_api().metrics.evaluate_rank
        distmat_numpy = distmat.cpu().numpy()
        (tr_cmc, tr_map), torchreid_s = timed(
            device, evaluate, distmat_numpy, *args, max_rank=50, use_cython=False
        )
        entry.update(
            torchreid_s=round(torchreid_s, 3),
            speedup=round(torchreid_s / ours_s, 1),
            identical=bool(np.array_equal(ours.cmc, tr_cmc) and abs(ours.mAP - tr_map) < 1e-9),
            max_abs_map_difference=float(abs(ours.mAP - tr_map)),
            torchreid={"rank1": float(tr_cmc[0]), "mAP": float(tr_map)},
        )
    return entry


def features_benchmark(
    size: ProblemSize,
    labels: dict,
    qf: torch.Tensor,
    gf: torch.Tensor,
    device: torch.device,
    chunk_size: int,
) -> dict:
    """(b): evaluate_features, plus a distance-only pass to split the time."""

    def distances_only() -> None:
        distance = PairwiseDistance(gf)
        for start in range(0, qf.shape[0], chunk_size):
            distance(qf[start : start + chunk_size], gallery_major=True)  # as evaluate_features

    # CPU time of the process (all its threads) beside the wall time: on a shared machine the
    # wall time waits for other processes, the CPU time much less
    cpu = time.process_time()
    _, distance_s = timed(device, distances_only)
    distance_cpu_s = time.process_time() - cpu
    with PeakMemory(device) as memory:
        cpu = time.process_time()
        results, total_s = timed(
            device, evaluate_features, qf, gf, **labels, modes=size.modes, chunk_size=chunk_size
        )
        total_cpu_s = time.process_time() - cpu
    return {
        "modes": list(size.modes),
        "distance_s": round(distance_s, 3),
        "total_s": round(total_s, 3),
        "metric_s": round(total_s - distance_s, 3),
        "distance_cpu_s": round(distance_cpu_s, 3),
        "total_cpu_s": round(total_cpu_s, 3),
        "memory": memory.as_dict(),
        "results": {mode: summarize(result) for mode, result in results.items()},
    }


def summarize(result) -> dict:
    return {
        "rank1": round(float(result.cmc[0]), 4),
        "rank5": round(float(result.cmc[4]), 4),
        "mAP": round(result.mAP, 4),
        "num_valid": result.num_valid,
        "num_skipped": result.num_skipped,
    }


def warm_up(device: torch.device) -> None:
    """First CUDA calls load kernels; keep that out of the timings."""
    rng = np.random.default_rng(0)
    size = ProblemSize("warmup", 64, 512, 20, 4, 2, ("general", "cc", "sc"))
    labels = make_labels(size, rng)
    qf, gf = make_features(labels, 32, device, torch.float32, 0)
    evaluate_features(qf, gf, **labels, modes=size.modes)
    evaluate_rank_modes(compute_distance_matrix(qf.double(), gf.double()), **labels)


# --- report ------------------------------------------------------------------------------------


def markdown(report: dict) -> str:
    lines = [
        f"# Evaluation benchmark ({report['device_kind']})",
        "",
        f"- device: {report['device']}",
        f"- date: {report['date']}",
        f"- command: `{report['command']}`",
        f"- torch {report['torch']}, numpy {report['numpy']}, torch threads "
        f"{report['torch_threads']}, feature dim {report['dim']}, chunk {report['chunk_size']}",
        f"- 1-min load average at start / end: {report['load_average_1min_at_start']} / "
        f"{report['load_average_1min_at_end']} (on {os.cpu_count()} logical CPUs)",
        "",
        "## (a) distance matrix in: ours vs torchreid's Python evaluate_rank (general, R50)",
        "",
        "| size | Q x G | torchreid s | ours s | speed-up | identical | ours, all modes s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["sizes"].items():
        bench = entry.get("distmat")
        if bench:
            speedup = f"{bench['speedup']}x" if "speedup" in bench else "-"
            lines.append(
                f"| {name} | {entry['shape']} | {bench.get('torchreid_s', 'not run')} | "
                f"{bench['ours_general_s']} | {speedup} | {bench.get('identical', '-')} | "
                f"{bench['ours_all_modes_s']} |"
            )
    lines += [
        "",
        "## (b) features in: evaluate_features (chunked distances, ranked without sorting rows)",
        "",
        "| size | Q x G | modes | distance s | metric s | total s | CPU s: distance / total | "
        "peak MB | added MB | R1/mAP |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["sizes"].items():
        bench = entry["features"]
        scores = ", ".join(
            f"{mode} {r['rank1']:.3f}/{r['mAP']:.3f}" for mode, r in bench["results"].items()
        )
        lines.append(
            f"| {name} | {entry['shape']} | {'+'.join(bench['modes'])} | {bench['distance_s']} | "
            f"{bench['metric_s']} | {bench['total_s']} | "
            f"{bench['distance_cpu_s']} / {bench['total_cpu_s']} | {bench['memory']['peak_mb']} | "
            f"{bench['memory']['added_mb']} | {scores} |"
        )
    memory_kind = next(iter(report["sizes"].values()))["features"]["memory"]["kind"]
    lines += [
        "",
        f"Memory: {memory_kind}; 'added' is the peak minus the memory held before the call "
        "(features and labels). Metric time = total - distance-only pass. CPU s: the process's "
        "CPU time (all its threads) of the distance-only pass and of the whole call. Scores are "
        "of random features, only there to show the protocols run.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        warm_up(device)
    report = {
        "device_kind": device.type,
        "device": device_name(device),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, *sys.argv]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "torch_threads": torch.get_num_threads(),
        # other processes on the machine slow the CPU timings: keep the load beside them
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
        "dim": args.dim,
        "chunk_size": args.chunk_size,
        "sizes": {},
    }
    for index, name in enumerate(args.sizes):
        size = SIZES[name]
        labels = make_labels(size, np.random.default_rng(args.seed + index))
        qf, gf = make_features(labels, args.dim, device, torch.float32, args.seed + index)
        entry = {
            "shape": f"{size.num_query} x {size.num_gallery}",
            "structure": {
                "ids": size.num_ids,
                "cameras": size.num_cams or "one per image",
                "outfits_per_id": size.outfits or "clothes id = pid",
            },
        }
        if size.num_gallery <= DISTMAT_MAX_GALLERY:
            entry["distmat"] = distmat_benchmark(
                size, labels, qf, gf, device, with_torchreid=not args.no_torchreid
            )
            print(name, "distmat", entry["distmat"], flush=True)
        entry["features"] = features_benchmark(size, labels, qf, gf, device, args.chunk_size)
        print(name, "features", entry["features"], flush=True)
        report["sizes"][name] = entry
        del qf, gf
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"eval_benchmark_{device.type}"
    atomic_write_text(str(stem.with_suffix(".json")), json.dumps(report, indent=2) + "\n")
    atomic_write_text(str(stem.with_suffix(".md")), markdown(report))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
