"""The objectives compute their recipe with the values they were given: every term against a
formula written out here (cross-entropy with label smoothing by hand, batch-hard triplet by
hand), with non-default weights, margins and smoothing, so that an option the code ignores
changes a value the test checks."""

import pytest
import torch
import torch.nn.functional as F

from csgn_plugin.losses.objective import CLIPReIDObjective, Labels, TorchreidObjective


def smoothed_ce(logits, labels, eps):
    k = logits.shape[1]
    targets = torch.full_like(logits, eps / k)
    targets[torch.arange(len(labels)), labels] += 1 - eps
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def batch_hard(features, labels, margin):
    losses = []
    for i in range(len(labels)):
        d = [(features[i] - features[j]).norm() for j in range(len(labels))]
        pos = max(d[j] for j in range(len(labels)) if labels[j] == labels[i])
        neg = min(d[j] for j in range(len(labels)) if labels[j] != labels[i])
        losses.append(torch.clamp(pos - neg + margin, min=0))
    return torch.stack(losses).mean()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(3)
    labels = Labels(pid=torch.tensor([0, 0, 1, 1, 2, 2]), camid=torch.zeros(6, dtype=torch.long))
    return g, labels


def test_torchreid_triplet_recipe_uses_its_weights_margin_and_smoothing(batch):
    g, labels = batch
    logits, features = torch.randn(6, 3, generator=g), torch.randn(6, 5, generator=g)
    objective = TorchreidObjective("triplet", 0.2, margin=0.7, weight_x=0.4, weight_t=1.7)
    terms = objective((logits, features), labels).terms
    torch.testing.assert_close(terms["softmax"], 0.4 * smoothed_ce(logits, labels.pid, 0.2))
    torch.testing.assert_close(terms["triplet"], 1.7 * batch_hard(features, labels.pid, 0.7))
    softmax_only = TorchreidObjective("softmax", 0.0, 0.3, 1.0, 1.0)((logits, features), labels)
    assert set(softmax_only.terms) == {"softmax"}
    torch.testing.assert_close(softmax_only.total, F.cross_entropy(logits, labels.pid))


def test_clip_recipe_uses_its_weights_margin_smoothing_and_each_bank(batch):
    g, labels = batch
    outputs = {
        "logits": [torch.randn(6, 3, generator=g) for _ in range(2)],
        "features": [torch.randn(6, 4, generator=g) for _ in range(3)],
        "image_feature": torch.randn(6, 4, generator=g),
    }
    bank = {"rgb": torch.randn(3, 4, generator=g), "gray": torch.randn(3, 4, generator=g)}
    objective = CLIPReIDObjective(
        id_weight=0.3, triplet_weight=0.6, label_smoothing=0.15, margin=0.5,
        hsf_weights={"rgb": 0.9, "gray": 0.4},
    )  # fmt: skip
    objective.set_text_bank(bank)
    losses = objective(outputs, labels)
    pids = labels.pid
    ident = sum(smoothed_ce(x, pids, 0.15) for x in outputs["logits"])
    triplet = sum(batch_hard(f, pids, 0.5) for f in outputs["features"])
    rgb = smoothed_ce(outputs["image_feature"] @ bank["rgb"].t(), pids, 0.15)
    gray = smoothed_ce(outputs["image_feature"] @ bank["gray"].t(), pids, 0.15)
    torch.testing.assert_close(losses.terms["id"], 0.3 * ident)
    torch.testing.assert_close(losses.terms["triplet"], 0.6 * triplet)
    torch.testing.assert_close(losses.terms["hsf"], 0.9 * rgb + 0.4 * gray)
    torch.testing.assert_close(losses.details["hsf_rgb"], rgb)
    torch.testing.assert_close(losses.details["hsf_gray"], gray)
    torch.testing.assert_close(losses.total, 0.3 * ident + 0.6 * triplet + 0.9 * rgb + 0.4 * gray)
    # before the prompt stage hands its bank over there is no HSF term
    assert "hsf" not in CLIPReIDObjective(1, 1, 0.1, 0.3, {"rgb": 1})(outputs, labels).terms
