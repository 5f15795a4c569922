"""The models learn: each family overfits a tiny fixed batch; CSGN's prompt stage learns prompts.

* Overfitting: a torchreid baseline (OSNet x0.25), both CLIP-ReID models and CSGN (tiny towers)
  take a few Adam steps on one fixed batch of 8 random images of 4 identities, with the losses the
  plugin trains them with (label-smoothed ID loss and batch-hard triplet; for the CLIP models one
  ID loss per classifier, one triplet loss per feature, and HSF against the frozen prompt bank).
  The total must fall below half its start and every term must fall: a model whose features or
  classifiers get no gradient, or a loss that pulls the wrong way, cannot do that.
* Stage 1 runs through the launcher (tiny SynthCC, no stage-2 epoch): the mutual loss logged per
  epoch in the checkpoint's history falls, and the prompt vectors are the only tensors that differ
  from the untrained model's.
"""

import os
import sys

import pytest
import torch
from run_helpers import ROOT, checkpoint, opts

from csgn_plugin.builders import CLIP_MODEL_FACTORIES as MODEL_FACTORIES
from csgn_plugin.compat import torchreid_api
from csgn_plugin.launcher import main
from csgn_plugin.losses import HardTripletLoss, HSFLoss, label_smoothed_cross_entropy

STEPS = 10
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
TINY_TOWERS = {
    "clipreid_vitb16": {"vit_arch": "csgn-tiny-vit"},
    "clipreid_rn50": {"resnet_arch": "csgn-tiny-rn"},
    "csgn": {"vit_arch": "csgn-tiny-vit", "resnet_arch": "csgn-tiny-rn"},
}


def build(name):
    if name == "osnet_x0_25":
        api = torchreid_api()
        return api.models.build_model(name, num_classes=4, loss="triplet", pretrained=False)
    towers = TINY_TOWERS[name]
    return MODEL_FACTORIES[name](num_classes=4, pretrained=False, image_size=(64, 32), **towers)


def loss_terms(model, imgs, bank):
    """The training loss terms of one forward pass of the batch."""
    triplet = HardTripletLoss(margin=0.3)
    out = model(imgs)
    if bank is None:  # torchreid baseline with loss 'triplet': (logits, features)
        logits, features = out
        return {
            "id": label_smoothed_cross_entropy(logits, LABELS, 0.1),
            "triplet": triplet(features, LABELS),
        }
    hsf, _ = HSFLoss({"rgb": 1.0, "gray": 1.0}, label_smoothing=0.1)(
        out["image_feature"], bank, LABELS
    )
    return {
        "id": sum(label_smoothed_cross_entropy(x, LABELS, 0.1) for x in out["logits"]),
        "triplet": sum(triplet(f, LABELS) for f in out["features"]),
        "hsf": hsf,
    }


@pytest.mark.parametrize("name", ["osnet_x0_25", "clipreid_vitb16", "clipreid_rn50", "csgn"])
def test_model_overfits_a_fixed_batch(name):
    model = build(name).train()
    imgs = torch.randn(8, 3, 64, 32)
    bank = None
    if name in TINY_TOWERS:  # stage 2: the prompts are frozen, their features a fixed bank
        with torch.no_grad():
            ids = torch.arange(4)
            bank = {m: model.prompt_features(ids, m) for m in model.modalities}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    start = {k: v.item() for k, v in loss_terms(model, imgs, bank).items()}
    for _ in range(STEPS):
        loss = sum(loss_terms(model, imgs, bank).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    end = {k: v.item() for k, v in loss_terms(model, imgs, bank).items()}
    assert sum(end.values()) < 0.5 * sum(start.values()), (start, end)
    assert all(end[k] < start[k] for k in start), (start, end)


def test_prompt_stage_lowers_its_loss_and_moves_only_the_prompts(tmp_path):
    data = tmp_path / "data"
    # no prompt epoch, no stage-2 epoch: the evaluation's best.pth holds the untrained model
    main(
        opts(data, tmp_path / "untrained", "csgn", "stage1.max_epoch", "0", "train.max_epoch", "0")
    )
    stage1 = ["stage1.max_epoch", "5", "stage1.lr", "0.005", "train.max_epoch", "0"]
    main(opts(data, tmp_path / "stage1", "csgn", *stage1))
    untrained = checkpoint(tmp_path / "untrained", "best")["state_dict"]
    state = checkpoint(tmp_path / "stage1")
    losses = [loss for _, loss in state["history"]["stage1/loss"]]
    assert len(losses) == 5 and state["stages"]["prompt"]["finished"]
    assert losses[-1] < 0.75 * losses[0], losses
    trained = state["state_dict"]
    assert untrained.keys() == trained.keys()
    changed = sorted(k for k in trained if not torch.equal(trained[k], untrained[k]))
    assert changed == ["prompt_learner.ctx.gray", "prompt_learner.ctx.rgb"]


@pytest.mark.slow
def test_a_short_run_of_the_main_job_kind_ends_above_chance_on_every_protocol(tmp_path):
    """The main job's config (CSGN, both stages) on SynthCC 'default', short and small: random
    tiny towers (SynthCLIP's pretraining takes minutes), 64x32, flips only, 5 + 6 epochs. Every
    protocol ends above the study's chance row of the same test split (mAP by half again)."""
    sys.path.insert(0, os.path.join(ROOT, "projects", "CSGN"))
    import study

    data = tmp_path / "data"
    args = opts(
        data, tmp_path / "run", "csgn", "cc_data.synthcc_preset", "default",
        "train.max_epoch", "6", "stage1.max_epoch", "5", "stage1.batch_size", "64",
        "train.batch_size", "32", "train.print_freq", "100", "data.transforms", "['random_flip']",
    )  # fmt: skip
    results = main(args).last_results["synthcc"]
    chance = study.chance_metrics(str(data), "default")
    assert set(results) == {"general", "cc", "sc"}
    for protocol, res in results.items():
        assert float(res.cmc[0]) > chance[protocol]["r1"], protocol
        assert float(res.mAP) > 1.5 * chance[protocol]["mAP"], protocol
