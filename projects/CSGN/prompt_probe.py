"""Do the learned identity prompts follow the person or the clothes? (CSGN's premise, measured.)

CSGN's stage 1 learns, per training identity, one prompt from its RGB images and one from their
grayscale versions. The paper's premise: CLIP's text side leans on colour, so an RGB prompt
learned from a person's images describes their clothes, and the grayscale prompt less so. This
script runs stage 1 (MDG) exactly as training does, on SynthCC's training set with one outfit of
every identity that has several held out, then asks, per modality: for an image, is the nearest
prompt (the highest dot product, as the stage-1 and HSF losses score them) its own identity's?

* **seen outfits** - images of the outfits the prompts were learned from;
* **new outfit** - images of the held-out outfit: the same people in other clothes.

A prompt that follows identity scores well on both; one that follows clothes scores well on seen
outfits only. Chance is one over the number of identities.

    python projects/CSGN/prompt_probe.py                     # SynthCLIP towers (the main job's)
    python projects/CSGN/prompt_probe.py --random            # the same from random towers
"""

import argparse
import datetime
import json
import os
import sys
import time
from collections import defaultdict

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

from csgn_plugin import builders  # noqa: E402
from csgn_plugin.config import load_config  # noqa: E402
from csgn_plugin.data.image_io import read_image  # noqa: E402
from csgn_plugin.engine.stages import StageContext  # noqa: E402
from csgn_plugin.fileio import atomic_write_text  # noqa: E402
from csgn_plugin.launcher import command_line  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "csgn_synthcc.yaml")


def split_outfits(items: list) -> tuple[list, list]:
    """(seen, new): for every identity with several outfits, its highest clothes id held out."""
    outfits = defaultdict(set)
    for item in items:
        outfits[item[1]].add(item[4])
    held_out = {pid: max(c) for pid, c in outfits.items() if len(c) > 1}
    seen = [it for it in items if held_out.get(it[1]) != it[4]]
    new = [it for it in items if held_out.get(it[1]) == it[4]]
    return seen, new


@torch.no_grad()
def nearest_prompt_accuracy(model, dataset, transform, bank, batch_size=128) -> dict:
    """Per modality: the share of images whose nearest prompt (same modality) is their own."""
    hits = dict.fromkeys(bank, 0)
    for start in range(0, len(dataset), batch_size):
        chunk = dataset[start : start + batch_size]
        imgs = torch.stack([transform(read_image(item[0])) for item in chunk])
        pids = torch.tensor([item[1] for item in chunk])
        for modality, prompts in bank.items():
            batch = imgs if modality == "rgb" else model.to_grayscale(imgs)
            features = model.prompt_image_features(batch).float()
            predicted = (features @ prompts.t()).argmax(dim=1)
            hits[modality] += int((predicted == pids).sum())
    return {m: hits[m] / len(dataset) for m in bank}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--random", action="store_true", help="random towers instead of SynthCLIP")
    p.add_argument("--stage1-epochs", type=int, default=20)
    p.add_argument("--preset", default="default")
    p.add_argument("--data-root", default="reid-data")
    p.add_argument("--out", default=os.path.join(HERE, "results", "prompt_probe"))
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = p.parse_args(argv)
    args.command = command_line(__file__, argv)
    opts = ["data.root", args.data_root, "cc_data.synthcc_preset", args.preset]
    opts += ["stage1.max_epoch", str(args.stage1_epochs), "runtime.device", "cpu", *args.opts]
    if args.random:
        opts += ["model.pretrained", "False"]
    cfg = load_config(CONFIG, opts)
    cfg, _ = builders.resolve_synthclip(cfg)
    torch.manual_seed(cfg.train.seed)
    datamanager = builders.build_datamanager(cfg, use_gpu=False)
    seen, new = split_outfits(datamanager.trainset.train)
    datamanager.trainset.train = seen  # stage 1 learns the prompts from the seen outfits only
    model = builders.build_model(cfg, datamanager, use_gpu=False)
    runtime = builders.build_runtime(cfg, use_gpu=False)
    objective = builders.build_objective(cfg, model, datamanager)
    (stage,) = builders.build_stages(cfg, model, objective)
    losses = []  # the stage's logged mutual loss per epoch

    def record(key: str, epoch: int, value: float) -> None:
        if key == "stage1/loss":
            losses.append(value)

    context = StageContext(runtime, model, datamanager, lambda: None, record, 0)
    started = time.time()
    stage.run(context)
    stage.attach(context)  # hands the text bank of every identity to the objective
    model.eval()
    transform = datamanager.transform_te
    result = {
        "command": args.command,
        "date": datetime.date.today().isoformat(),
        "device": f"CPU ({os.cpu_count()} cores)",
        "towers": "random" if args.random else "SynthCLIP",
        "preset": args.preset,
        "identities": model.num_ids,
        "chance": 1 / model.num_ids,
        "seen_images": len(seen),
        "new_outfit_images": len(new),
        "stage1_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "seen": nearest_prompt_accuracy(model, seen, transform, objective.text_bank),
        "new_outfit": nearest_prompt_accuracy(model, new, transform, objective.text_bank),
        "seconds": time.time() - started,
    }
    os.makedirs(args.out, exist_ok=True)
    name = "random" if args.random else "synthclip"
    atomic_write_text(os.path.join(args.out, f"{name}.json"), json.dumps(result, indent=2))
    lines = [
        f"towers {result['towers']}, {model.num_ids} ids (chance {result['chance']:.3f}), "
        f"{len(seen)} seen-outfit and {len(new)} new-outfit images",
        "| prompts | seen outfits | new outfit |",
        "|---|---|---|",
    ]
    for modality in objective.text_bank:
        lines.append(
            f"| {modality} | {result['seen'][modality]:.3f} | "
            f"{result['new_outfit'][modality]:.3f} |"
        )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
