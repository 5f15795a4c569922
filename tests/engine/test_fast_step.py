"""The fast step's pieces that run without a GPU: the stage-1 step with static shapes (identity
slots padded) gives today's loss and gradients; the text transformer cut at the end-of-text
token gives every position's features; the graph wrapper's routing (which calls are captured,
replayed, padded, left eager) and its buffer restore; ``runtime.compile`` /
``runtime.channels_last`` resolution. The graphs themselves are checked on a GPU in
``tests/end_to_end/test_cuda.py``."""

import os

import pytest
import torch
from torch import nn

from csgn_plugin import builders, checks
from csgn_plugin.builders import build_clip_model as build_model_from_config
from csgn_plugin.config import load_config
from csgn_plugin.graphs import GraphedModule
from csgn_plugin.losses import MutualLoss
from csgn_plugin.modeling.mdg import TextEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = [
    "model.pretrained", "False", "clip.vit_arch", "csgn-tiny-vit",
    "clip.resnet_arch", "csgn-tiny-rn", "data.height", "64", "data.width", "32",
]  # fmt: skip


def test_static_stage1_step_gives_the_per_sample_loss_and_gradients():
    cfg = load_config(os.path.join(ROOT, "configs", "csgn_synthcc.yaml"), TINY)
    model = build_model_from_config(cfg, num_classes=6, num_cameras=2)
    model.set_stage(1)
    stage = builders.build_stages(cfg, model, builders.build_objective(cfg, model, None))[0]
    criterion = MutualLoss(cross_modal_weight=0.0)
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0, 3, 3, 5, 0, 1, 3, 5, 2, 2, 4, 0])
    cached = {m: torch.randn(len(labels), model.embed_dim, generator=g) for m in model.modalities}
    index = torch.tensor([4, 1, 6, 2, 9, 0, 3, 7])  # 4 distinct identities
    prompts = [p for p in model.parameters() if p.requires_grad]

    seen = []

    def text_pass(ids):
        seen.append(ids.tolist())
        return tuple(model.prompt_features(ids, m) for m in model.modalities)

    loss = stage.step_loss(model, criterion, cached, labels, index, text_pass, id_slots=6)
    grads = torch.autograd.grad(loss, prompts)
    assert seen == [[0, 2, 3, 5, 0, 0]]  # distinct ids padded with the first, all modalities

    target = labels[index]  # CLIP-ReID: every sample's own prompt
    text = {m: model.prompt_features(target, m).float() for m in model.modalities}
    image = {m: cached[m][index] for m in model.modalities}
    expected, _ = criterion(image, text, target)
    expected_grads = torch.autograd.grad(expected, prompts)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))


def test_stage1_graphs_all_modalities_text_passes_as_one_module():
    """Both modalities in one graph: a second capture while the first pass's autograd graph is
    alive fails on CUDA (the grayscale pass then ran eagerly on an H200)."""
    cfg = load_config(os.path.join(ROOT, "configs", "csgn_synthcc.yaml"), TINY)
    model = build_model_from_config(cfg, num_classes=6, num_cameras=2)
    model.set_stage(1)
    stage = builders.build_stages(cfg, model, builders.build_objective(cfg, model, None))[0]
    runtime = builders.build_runtime(cfg, False)
    runtime.graphs = True
    text_pass, slots = stage.graphed_text_passes(runtime, model)
    assert isinstance(text_pass, GraphedModule) and slots == 6
    ids = torch.tensor([0, 2, 2, 5])
    features = text_pass(ids)
    assert len(features) == len(model.modalities) == 2
    for modality, got in zip(model.modalities, features):
        torch.testing.assert_close(got, model.prompt_features(ids, modality))


def test_text_features_up_to_the_end_of_text_token_are_the_full_ones():
    cfg = load_config(os.path.join(ROOT, "configs", "csgn_synthcc.yaml"), TINY)
    model = build_model_from_config(cfg, num_classes=5)
    encoder, eot = model.text_encoder, model.prompt_learner.eot_index
    assert eot + 1 < encoder.positional_embedding.shape[0]  # the cut leaves positions out
    ids = torch.tensor([4, 0, 2])
    for modality in model.modalities:
        # CLIP's text pass over every position under the full causal mask, written out here
        x = model.prompt_learner(ids, modality) + encoder.positional_embedding
        x = encoder.ln_final(encoder.transformer(x, attn_mask=encoder.attn_mask)[:, eot])
        projection = encoder.text_projection
        full = projection(x) if isinstance(projection, nn.Linear) else x @ projection
        torch.testing.assert_close(model.prompt_features(ids, modality), full)


def test_a_text_encoder_without_the_causal_mask_is_refused():
    cfg = load_config(os.path.join(ROOT, "configs", "csgn_synthcc.yaml"), TINY)
    encoder = build_model_from_config(cfg, num_classes=5).text_encoder
    parts = (encoder.positional_embedding, encoder.transformer, encoder.ln_final)
    with pytest.raises(ValueError, match="causal"):
        TextEncoder(*parts, encoder.text_projection, torch.zeros_like(encoder.attn_mask))


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 8 * 4, 5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def fake_training_capture(calls):
    """What a capture does to the module besides recording: make_graphed_callables runs three
    warm-up passes and the captured one, forward and backward (BatchNorm statistics move)."""

    def capture(module, args):
        calls.append(tuple(a.shape for a in args))
        for _ in range(4):
            module(*args).sum().backward()
        module.zero_grad(set_to_none=True)
        return module

    return capture


def fake_inference_capture(calls):
    """A capture at the first batch's size: smaller batches are padded to it, outputs trimmed."""

    def capture(module, args):
        size = args[0].shape[0]
        calls.append(size)

        def replay(x):
            padded = torch.cat([x, x.new_zeros((size - len(x), *x.shape[1:]))])
            return module(padded)[: len(x)]

        return replay

    return capture


def test_graph_wrapper_captures_once_per_key_and_restores_buffers():
    torch.manual_seed(0)
    eager, wrapped = SmallNet(), SmallNet()
    wrapped.load_state_dict(eager.state_dict())
    train_calls, eval_calls, recorded = [], [], []
    graphed = GraphedModule(
        wrapped,
        "stage2",
        lambda kind, seconds, what, error: recorded.append((kind, what)),
        train_capture=fake_training_capture(train_calls),
        inference_capture=fake_inference_capture(eval_calls),
        device_type="cpu",
    )
    opt_eager = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_wrapped = torch.optim.SGD(wrapped.parameters(), lr=0.1)
    x = torch.randn(6, 3, 8, 4)
    for step in range(2):
        for model, opt in ((eager, opt_eager), (graphed, opt_wrapped)):
            opt.zero_grad()
            model(x + step).pow(2).mean().backward()
            opt.step()
    assert train_calls == [((6, 3, 8, 4),)]  # one capture, replayed for the second step
    for key, value in eager.state_dict().items():  # weights and BatchNorm statistics
        torch.testing.assert_close(wrapped.state_dict()[key], value)

    graphed.eval()
    eager.eval()
    with torch.no_grad():
        for batch in (x, x[:4], x[:6]):
            torch.testing.assert_close(graphed(batch), eager(batch))
        graphed(torch.randn(9, 3, 8, 4))  # a larger batch: captured anew
    assert eval_calls == [6, 9]
    assert [kind for kind, _ in recorded] == ["training", "inference", "inference"]
    assert recorded[0][1] == "stage2 (6x3x8x4)"

    graphed.train()
    wrapped.bn.requires_grad_(False)  # another set of trained parameters: another graph
    graphed(x).sum().backward()
    assert len(train_calls) == 2
    graphed(x[:3]).sum().backward()  # over max_graphs: eager
    assert len(train_calls) == 2


def test_a_failed_capture_is_reported_and_its_key_runs_eagerly():
    def failing(module, args):
        module(*args)  # a warm-up pass moved the BatchNorm statistics, then the capture failed
        raise RuntimeError("operation not permitted when stream is capturing\nmore")

    net, errors = SmallNet(), []
    net.register_buffer("mask", torch.zeros(3), persistent=False)  # the capture leaves it alone
    reference = SmallNet()
    reference.load_state_dict(net.state_dict())
    mask_version = net.mask._version
    graphed = GraphedModule(
        net,
        "stage2",
        lambda kind, seconds, what, error: errors.append(str(error)),
        train_capture=failing,
        device_type="cpu",
    )
    x = torch.randn(6, 3, 8, 4)
    torch.testing.assert_close(graphed(x), reference(x))  # one eager step, statistics included
    assert errors == ["operation not permitted when stream is capturing\nmore"]
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(net.state_dict()[key], value)
    # not rewritten: an autograd graph holding a view of it (the text mask) stays valid
    assert net.mask._version == mask_version
    graphed(x)  # the same key: eager, no second attempt
    assert len(errors) == 1


@pytest.mark.parametrize(
    ("value", "cuda", "world", "steps", "expected"),
    [
        ("auto", False, 1, 1000, "off"),
        ("auto", True, 1, 1000, "graphs"),
        ("auto", True, 2, 1000, "off"),
        ("auto", True, 1, checks.MIN_GRAPHED_STEPS - 1, "off"),
        ("reduce-overhead", True, 1, 10, "reduce-overhead"),
        ("True", False, 1, 10, "default"),  # the old boolean keeps its meaning
        ("False", True, 1, 1000, "off"),
    ],
)
def test_compile_resolution(value, cuda, world, steps, expected):
    cfg = load_config("", ["runtime.compile", value])
    assert checks.resolve_compile(cfg, cuda, world, steps) == expected


def test_compile_and_channels_last_refusals_and_auto():
    with pytest.raises(ValueError, match="'graphs' needs CUDA"):
        checks.resolve_compile(load_config("", ["runtime.compile", "graphs"]), False, 1, 100)
    with pytest.raises(ValueError, match="single process"):
        checks.resolve_compile(load_config("", ["runtime.compile", "graphs"]), True, 2, 100)
    with pytest.raises(ValueError, match="runtime.compile must be one of"):
        checks.check_config(load_config("", ["runtime.compile", "fast"]))
    cfg = load_config("", [*TINY, "model.name", "csgn"])
    csgn = build_model_from_config(cfg, num_classes=3)  # ViT + ResNet towers
    vit_only = build_model_from_config(
        load_config("", [*TINY, "model.name", "clipreid_vitb16"]), num_classes=3
    )
    assert checks.resolve_channels_last(cfg, csgn, use_gpu=True)
    assert not checks.resolve_channels_last(cfg, vit_only, use_gpu=True)  # one conv: patches
    assert not checks.resolve_channels_last(cfg, csgn, use_gpu=False)
    on = load_config("", ["runtime.channels_last", "True"])
    assert on.runtime.channels_last == "on" and checks.resolve_channels_last(on, vit_only, False)
