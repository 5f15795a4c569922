"""The prompt stage's step: encoding each distinct identity of a batch once gives the loss and the
gradients of encoding every sample's prompt (CLIP-ReID's way), with fewer text-tower passes."""

import os

import torch

from csgn_plugin import builders
from csgn_plugin.builders import build_clip_model as build_model_from_config
from csgn_plugin.config import load_config
from csgn_plugin.losses import MutualLoss

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# random tiny towers instead of the main job's SynthCLIP (which pretrains for minutes)
TINY = [
    "model.pretrained", "False", "clip.vit_arch", "csgn-tiny-vit",
    "clip.resnet_arch", "csgn-tiny-rn",
]  # fmt: skip


def test_one_text_pass_per_identity_gives_the_per_sample_loss_and_gradients():
    cfg = load_config(
        os.path.join(ROOT, "configs", "csgn_synthcc.yaml"),
        ["data.height", "64", "data.width", "32", "stage1.cross_modal_weight", "0.5", *TINY],
    )
    model = build_model_from_config(cfg, num_classes=6, num_cameras=2)
    model.set_stage(1)
    stage = builders.build_stages(cfg, model, builders.build_objective(cfg, model, None))[0]
    criterion = MutualLoss(cross_modal_weight=0.5)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 3, 5, 0, 1, 3, 5, 2, 2, 4, 0])  # repeated identities
    cached = {m: torch.randn(len(labels), model.embed_dim, generator=g) for m in model.modalities}
    index = torch.tensor([4, 1, 6, 2, 9, 0, 3, 7])
    prompts = [p for p in model.parameters() if p.requires_grad]

    calls = []
    handle = model.text_encoder.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    loss = stage.step_loss(model, criterion, cached, labels, index)
    handle.remove()
    grads = torch.autograd.grad(loss, prompts)
    assert calls == [4, 4]  # one pass per modality over the 4 distinct ids, not 8 samples

    target = labels[index]  # CLIP-ReID: the prompt of every sample, duplicates included
    text = {m: model.prompt_features(target, m).float() for m in model.modalities}
    image = {m: cached[m][index] for m in model.modalities}
    expected, _ = criterion(image, text, target)
    expected_grads = torch.autograd.grad(expected, prompts)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, expected_grads):  # float32 sums in another order
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
