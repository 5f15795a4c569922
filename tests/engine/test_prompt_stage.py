"""The prompt stage's step: encoding each distinct identity of a batch once gives the loss and the
gradients of encoding every sample's prompt (CLIP-ReID's way), with fewer text-tower passes; under
fp16 every step goes through the gradient scaler, whose state resumes with the stage."""

import copy
import os

import torch
from stage_helpers import SIZE, memory_data, run_prompt_stage, tiny_cfg, tiny_model

from csgn_plugin import builders
from csgn_plugin.builders import build_clip_model as build_model_from_config
from csgn_plugin.config import load_config
from csgn_plugin.losses import MutualLoss
from csgn_plugin.runtime import Runtime

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


# ----------------------------------------------------------------- fp16: the gradient scaler
class RecordingScaler(torch.amp.GradScaler):
    """A real CPU scaler (scale 1, doubled after every step without overflow) that records what
    the stage asks of it."""

    def __init__(self):
        super().__init__("cpu", init_scale=1.0, growth_interval=1)
        self.calls = []

    def scale(self, outputs):
        self.calls.append(("scale", self.get_scale()))
        return super().scale(outputs)

    def step(self, optimizer, *args, **kwargs):
        self.calls.append(("step", optimizer))
        return super().step(optimizer, *args, **kwargs)

    def update(self, new_scale=None):
        self.calls.append(("update",))
        return super().update(new_scale)


def _fp16_runtime(scaler):
    """fp16 on the CPU (the config checks want CUDA for it; the runtime itself does not care),
    with ``scaler`` as the scaler every stage gets."""
    runtime = Runtime(torch.device("cpu"), "fp16", False, 0, 1, SIZE)
    runtime.make_scaler = lambda: scaler
    return runtime


def _twelve_images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(12, 3, *SIZE, generator=g), torch.arange(12) % 4


def test_stage_one_steps_through_the_gradient_scaler_under_fp16_and_resumes_it_exactly():
    """Two epochs of three batches (12 images, batch 4): every step is scale -> step -> update
    on the stage's optimizer, the scale doubles per step (1, 2, 4, ...), and the scaler's state is
    in the stage's checkpointed state: a run resumed after epoch 1 goes on from scale 8 and ends
    where the uninterrupted run ends."""
    cfg = tiny_cfg("stage1.max_epoch", "2", "stage1.warmup_epochs", "1", "stage1.batch_size", "4")
    imgs, pids = _twelve_images()
    model = tiny_model(cfg, num_ids=4)
    start = copy.deepcopy(model)
    scaler = RecordingScaler()
    stage, _, history = run_prompt_stage(cfg, model, memory_data(imgs, pids), _fp16_runtime(scaler))

    kinds = [call[0] for call in scaler.calls]
    assert kinds == ["scale", "step", "update"] * 6
    optimizers = {id(call[1]) for call in scaler.calls if call[0] == "step"}
    assert len(optimizers) == 1  # one optimizer, the stage's
    assert [call[1] for call in scaler.calls if call[0] == "scale"] == [1, 2, 4, 8, 16, 32]
    after_epoch_1, prompts_1 = history["saved"][0]
    assert after_epoch_1["scaler"]["scale"] == 8.0 and after_epoch_1["epoch"] == 1
    assert stage.state_dict()["scaler"] is None  # not needed once the stage finished

    resumed_scaler = RecordingScaler()
    start.prompt_learner.load_state_dict(prompts_1)
    run_prompt_stage(
        cfg, start, memory_data(imgs, pids), _fp16_runtime(resumed_scaler), after_epoch_1
    )
    assert [call[1] for call in resumed_scaler.calls if call[0] == "scale"] == [8, 16, 32]
    assert resumed_scaler.get_scale() == scaler.get_scale() == 64.0
    for modality in ("rgb", "gray"):
        torch.testing.assert_close(
            start.prompt_learner.ctx[modality], model.prompt_learner.ctx[modality], rtol=0, atol=0
        )
