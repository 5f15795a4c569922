"""Losses against hand-computed values: supervised contrastive, mutual, label smoothing, HSF."""

import math

import pytest
import torch

from csgn_plugin.losses import HSFLoss, MutualLoss, label_smoothed_cross_entropy, supcon_loss

E = math.e


def _toy():
    anchors = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    contrast = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    return anchors, contrast, torch.tensor([0, 1]), torch.tensor([0, 1, 0])


def test_supcon_by_hand():
    anchors, contrast, a_labels, c_labels = _toy()
    # anchor 0: logits (1, 0, 1), positives {0, 2}: both log(e / (2e + 1))
    # anchor 1: logits (0, 1, 1), positive {1}: log(e / (2e + 1))  -> loss = log(2 + 1/e)
    loss = supcon_loss(anchors, contrast, a_labels, c_labels)
    assert loss.item() == pytest.approx(math.log(2 + 1 / E), rel=1e-6)
    # temperature 0.5 doubles the logits: log(2 + e^-2)
    loss = supcon_loss(anchors, contrast, a_labels, c_labels, temperature=0.5)
    assert loss.item() == pytest.approx(math.log(2 + E**-2), rel=1e-6)


def test_supcon_raw_dot_products_and_unequal_positives():
    anchors = torch.tensor([[2.0, 0.0]])
    contrast = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    # logits (2, 6, 0), positives {0, 1}: -(1/2) [log(e^2/Z) + log(e^6/Z)], Z = e^2 + e^6 + 1
    z = E**2 + E**6 + 1
    expected = -0.5 * ((2 - math.log(z)) + (6 - math.log(z)))
    loss = supcon_loss(anchors, contrast, torch.tensor([4]), torch.tensor([4, 4, 1]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_supcon_anchor_without_positive_is_left_out():
    anchors, contrast, _, c_labels = _toy()
    loss = supcon_loss(anchors, contrast, torch.tensor([0, 9]), c_labels)  # anchor 1: none
    assert loss.item() == pytest.approx(math.log(2 + 1 / E), rel=1e-6)
    with pytest.raises(ValueError, match="no anchor has a positive"):
        supcon_loss(anchors, contrast, torch.tensor([8, 9]), c_labels)
    with pytest.raises(ValueError, match=r"\(N, E\) and \(M, E\)"):
        supcon_loss(anchors, contrast[:, :1], torch.tensor([0, 1]), c_labels)


def test_mutual_loss_terms_and_cross_modal_weight():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2])
    img = {"rgb": torch.randn(4, 8), "gray": torch.randn(4, 8)}
    txt = {"rgb": torch.randn(4, 8), "gray": torch.randn(4, 8)}

    def pair(i, t):
        return supcon_loss(i, t, labels, labels) + supcon_loss(t, i, labels, labels)

    total, terms = MutualLoss()(img, txt, labels)
    own = pair(img["rgb"], txt["rgb"]) + pair(img["gray"], txt["gray"])
    torch.testing.assert_close(total, own)
    assert set(terms) == {"rgb_i2t", "rgb_t2i", "gray_i2t", "gray_t2i"}
    torch.testing.assert_close(
        terms["gray_t2i"], supcon_loss(txt["gray"], img["gray"], labels, labels)
    )
    total, terms = MutualLoss(cross_modal_weight=0.5)(img, txt, labels)
    cross = pair(img["rgb"], txt["gray"]) + pair(img["gray"], txt["rgb"])
    torch.testing.assert_close(total, own + 0.5 * cross)
    torch.testing.assert_close(terms["cross"], cross)
    rgb_only, terms = MutualLoss(cross_modal_weight=0.5)(
        {"rgb": img["rgb"]}, {"rgb": txt["rgb"]}, labels
    )
    torch.testing.assert_close(rgb_only, pair(img["rgb"], txt["rgb"]))
    with pytest.raises(ValueError, match="same modalities"):
        MutualLoss()(img, {"rgb": txt["rgb"]}, labels)


def test_label_smoothing_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    log_z = math.log(E**2 + E + 1)
    log_p = [2 - log_z, 1 - log_z, -log_z]
    targets = [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]  # (1 - eps) onehot + eps / K
    expected = -sum(t * lp for t, lp in zip(targets, log_p))
    loss = label_smoothed_cross_entropy(logits, torch.tensor([0]), 0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = label_smoothed_cross_entropy(logits, torch.tensor([0]), 0.0)
    assert plain.item() == pytest.approx(-log_p[0], rel=1e-6)


def test_hsf_by_hand():
    feature = torch.tensor([[1.0, 0.0]])
    bank = {
        "rgb": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "gray": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
    }
    log_hi, log_lo = 1 - math.log(E + 1), -math.log(E + 1)  # log-softmax of (1, 0)
    rgb = -(0.95 * log_hi + 0.05 * log_lo)  # logits (1, 0), label 0, eps 0.1, K 2
    gray = -(0.95 * log_lo + 0.05 * log_hi)  # logits (0, 1)
    total, terms = HSFLoss({"rgb": 1.0, "gray": 0.5})(feature, bank, torch.tensor([0]))
    assert total.item() == pytest.approx(rgb + 0.5 * gray, rel=1e-6)
    assert terms["rgb"].item() == pytest.approx(rgb, rel=1e-6)
    assert terms["gray"].item() == pytest.approx(gray, rel=1e-6)
    rgb_only, terms = HSFLoss({"rgb": 1.0, "gray": 0.0})(feature, bank, torch.tensor([0]))
    assert rgb_only.item() == pytest.approx(rgb, rel=1e-6) and set(terms) == {"rgb"}


def test_hsf_modalities_without_prompts():
    feature = torch.randn(2, 4, requires_grad=True)
    bank = {"rgb": torch.randn(3, 4)}
    labels = torch.tensor([0, 2])
    # CLIP-ReID baselines have RGB prompts only: a gray weight has nothing to apply to
    total, terms = HSFLoss({"rgb": 1.0, "gray": 1.0})(feature, bank, labels)
    assert set(terms) == {"rgb"}
    total.backward()
    assert feature.grad.abs().sum() > 0
    zero, terms = HSFLoss({"rgb": 0.0, "gray": 0.0})(feature, bank, labels)
    assert zero.item() == 0.0 and terms == {}
    with pytest.raises(ValueError, match="prompt banks only for"):
        HSFLoss({"gray": 1.0})(feature, bank, labels)
    with pytest.raises(ValueError, match=">= 0"):
        HSFLoss({"rgb": -1.0})
