"""Why OSNet x0.25 trained from scratch with ID + batch-hard triplet loss learns nothing on SynthCC.

The former ``configs/synthcc_osnet.yaml`` (the recipe in ``FORMER_RECIPE``: ID loss with label
smoothing + batch-hard triplet, weights 1 and 1, margin 0.3, Adam 3.5e-4, identity sampler) kept
its ID loss at ln(ids) while its triplet loss fell. This probe measures, with the engine's own
loss code (the objective ``builders.build_objective`` gives the engine):

1. at initialisation, on a few batches: the gradient norm each loss term sends into the backbone
   (everything but the classifier), and the share of backbone weights whose gradient entry the
   triplet term outweighs;
2. over the first epochs of that recipe: the mean loss terms, the mean norm of the triplet feature
   (OSNet's 512-d ``fc`` output, after its ReLU), and the mean distance between images of the same
   id and of different ids within a batch. If the triplet loss falls while the ratio of those two
   distances stays put, it is falling by shrinking the features, not by separating identities.

    python projects/CSGN/triplet_probe.py --epochs 3    # a few minutes on a 2-core CPU
    python projects/CSGN/triplet_probe.py --epochs 1 cc_data.synthcc_preset tiny   # KEY VALUE
"""

import argparse
import json
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from csgn_plugin import builders, checks  # noqa: E402
from csgn_plugin.config import load_config  # noqa: E402
from csgn_plugin.fileio import atomic_write_text  # noqa: E402
from csgn_plugin.launcher import command_line  # noqa: E402
from csgn_plugin.losses.objective import Labels  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "synthcc_osnet.yaml")
# configs/synthcc_osnet.yaml before it became torchreid's softmax recipe
FORMER_RECIPE = [
    "loss.name", "triplet", "loss.triplet.weight_x", "1.0", "loss.triplet.weight_t", "1.0",
    "loss.triplet.margin", "0.3", "sampler.train_sampler", "ClothesIdentitySampler",
    "train.optim", "adam", "train.lr", "0.00035", "train.warmup_epochs", "1",
    "train.max_epoch", "12", "test.normalize_feature", "True",
]  # fmt: skip


def build(data_root: str, save_dir: str, overrides: list[str]):
    opts = [*FORMER_RECIPE, "data.root", data_root, "data.save_dir", save_dir, *overrides]
    cfg = load_config(CONFIG, opts)
    checks.check_config(cfg)
    torch.manual_seed(cfg.train.seed)
    datamanager = builders.build_datamanager(cfg, use_gpu=False)
    model = builders.build_model(cfg, datamanager, use_gpu=False)
    optimizer = builders.build_optimizer(cfg, model)
    scheduler = builders.build_scheduler(cfg, optimizer)
    runtime = builders.build_runtime(cfg, use_gpu=False)
    return builders.build_engine(cfg, datamanager, model, optimizer, scheduler, runtime)


def gradient_shares(engine, batches: int) -> list[dict]:
    """Per batch at initialisation: |grad| of each loss term on the backbone, and the share of
    backbone entries where the triplet term's gradient is the larger one."""
    model = engine.model.train()
    backbone = [p for n, p in model.named_parameters() if not n.startswith("classifier")]
    engine.datamanager.train_sampler.set_epoch(0)
    rows = []
    for _, data in zip(range(batches), engine.datamanager.train_loader):
        labels = Labels(pid=data["pid"], camid=data["camid"])
        terms = engine.objective(model(data["img"]), labels).terms
        grads = {
            name: torch.cat(
                [g.flatten() for g in torch.autograd.grad(terms[name], backbone, retain_graph=True)]
            )
            for name in ("softmax", "triplet")
        }
        rows.append(
            {
                "id_loss": terms["softmax"].item(),
                "triplet_loss": terms["triplet"].item(),
                "grad_id": grads["softmax"].norm().item(),
                "grad_triplet": grads["triplet"].norm().item(),
                "triplet_larger": (grads["triplet"].abs() > grads["softmax"].abs())
                .float()
                .mean()
                .item(),
            }
        )
    return rows


def train_epochs(engine, epochs: int) -> list[dict]:
    """The recipe's first epochs, step by step as the engine trains, with feature statistics."""
    model, sampler = engine.model, engine.datamanager.train_sampler
    rows = []
    for epoch in range(epochs):
        model.train()
        sampler.set_epoch(epoch)
        sums, steps = dict.fromkeys(("id", "triplet", "norm", "same", "other"), 0.0), 0
        start = time.time()
        for data in engine.datamanager.train_loader:
            logits, features = model(data["img"])
            losses = engine.objective((logits, features), Labels(data["pid"], data["camid"]))
            terms = losses.terms
            engine.optimizer.zero_grad()
            losses.total.backward()
            engine.optimizer.step()
            with torch.no_grad():
                distance = torch.cdist(features, features)
                same = data["pid"][:, None] == data["pid"][None, :]
                off_diagonal = ~torch.eye(len(same), dtype=torch.bool)
                sums["id"] += terms["softmax"].item()
                sums["triplet"] += terms["triplet"].item()
                sums["norm"] += features.norm(dim=1).mean().item()
                sums["same"] += distance[same & off_diagonal].mean().item()
                sums["other"] += distance[~same].mean().item()
            steps += 1
        engine.scheduler.step()
        row = {k: v / steps for k, v in sums.items()}
        row.update(epoch=epoch + 1, ratio=row["same"] / row["other"], seconds=time.time() - start)
        rows.append(row)
        print(f"epoch {epoch + 1}: {row}", flush=True)
    return rows


def report(gradients: list[dict], epochs: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU, "
        f"torch {torch.__version__})",
        "",
        "At initialisation (one row per batch; gradients on every weight but the classifier):",
        "",
        "| batch | ID loss | triplet loss | grad ID | grad triplet | triplet / ID | entries where "
        "triplet's is larger |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, g in enumerate(gradients):
        lines.append(
            f"| {i + 1} | {g['id_loss']:.3f} | {g['triplet_loss']:.3f} | {g['grad_id']:.2f} | "
            f"{g['grad_triplet']:.2f} | {g['grad_triplet'] / g['grad_id']:.1f} | "
            f"{100 * g['triplet_larger']:.1f}% |"
        )
    lines += [
        "",
        "Training (means over the epoch's batches; distances between triplet features within a "
        "batch):",
        "",
        "| epoch | ID loss | triplet loss | feature norm | same-id distance | other-id distance "
        "| same / other |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in epochs:
        lines.append(
            f"| {e['epoch']} | {e['id']:.3f} | {e['triplet']:.3f} | {e['norm']:.2f} | "
            f"{e['same']:.2f} | {e['other']:.2f} | {e['ratio']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--gradient-batches", type=int, default=4)
    p.add_argument("--data-root", default="reid-data")
    p.add_argument("--out", default=os.path.join(HERE, "results", "baselines"))
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    engine = build(args.data_root, os.path.join("log", "triplet_probe"), args.opts)  # saves nothing
    gradients = gradient_shares(engine, args.gradient_batches)
    epochs = train_epochs(engine, args.epochs)
    command = command_line(__file__, argv)
    text = report(gradients, epochs, command)
    atomic_write_text(os.path.join(args.out, "triplet_probe.md"), text)
    payload = {"command": command, "gradients": gradients, "epochs": epochs}
    atomic_write_text(os.path.join(args.out, "triplet_probe.json"), json.dumps(payload, indent=2))
    print(text)


if __name__ == "__main__":
    main()
