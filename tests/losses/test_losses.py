"""Losses against hand-computed values and torchreid's own losses: supervised contrastive, mutual,
label smoothing, HSF, batch-hard triplet."""

import math

import pytest
import torch

from csgn_plugin.compat import torchreid_api
from csgn_plugin.losses import (
    HardTripletLoss,
    HSFLoss,
    MutualLoss,
    label_smoothed_cross_entropy,
    supcon_loss,
)

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

    total, terms = MutualLoss(cross_modal_weight=0.0)(img, txt, labels)
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
        MutualLoss(cross_modal_weight=0.0)(img, {"rgb": txt["rgb"]}, labels)


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
    total, terms = HSFLoss({"rgb": 1.0, "gray": 0.5}, label_smoothing=0.1)(
        feature, bank, torch.tensor([0])
    )
    assert total.item() == pytest.approx(rgb + 0.5 * gray, rel=1e-6)
    assert terms["rgb"].item() == pytest.approx(rgb, rel=1e-6)
    assert terms["gray"].item() == pytest.approx(gray, rel=1e-6)
    rgb_only, terms = HSFLoss({"rgb": 1.0, "gray": 0.0}, label_smoothing=0.1)(
        feature, bank, torch.tensor([0])
    )
    assert rgb_only.item() == pytest.approx(rgb, rel=1e-6) and set(terms) == {"rgb"}


def test_hsf_modalities_without_prompts():
    feature = torch.randn(2, 4, requires_grad=True)
    bank = {"rgb": torch.randn(3, 4)}
    labels = torch.tensor([0, 2])
    # CLIP-ReID baselines have RGB prompts only: a gray weight has nothing to apply to
    total, terms = HSFLoss({"rgb": 1.0, "gray": 1.0}, label_smoothing=0.1)(feature, bank, labels)
    assert set(terms) == {"rgb"}
    total.backward()
    assert feature.grad.abs().sum() > 0
    zero, terms = HSFLoss({"rgb": 0.0, "gray": 0.0}, label_smoothing=0.1)(feature, bank, labels)
    assert zero.item() == 0.0 and terms == {}
    with pytest.raises(ValueError, match="prompt banks only for"):
        HSFLoss({"gray": 1.0}, label_smoothing=0.1)(feature, bank, labels)
    with pytest.raises(ValueError, match=">= 0"):
        HSFLoss({"rgb": -1.0}, label_smoothing=0.1)


# ----------------------------------------------------------------- batch-hard triplet
# Eight features on the line through (0.6, 0.8), at x = 0, 2, 5 (id 0), 3, 6, 10 (id 1), 20, 21
# (id 2): the euclidean distance of two of them is |x_i - x_j| (their L1 distance is 1.4 times
# that, their squared distance its square), so every mined distance can be read off the x.
LINE_X = [0.0, 2.0, 5.0, 3.0, 6.0, 10.0, 20.0, 21.0]
LINE_LABELS = [0, 0, 0, 1, 1, 1, 2, 2]


def _on_line(xs):
    return torch.tensor([[0.6 * x, 0.8 * x] for x in xs])


def test_hard_triplet_by_hand():
    # anchor x: farthest positive, closest negative -> max(0, d_ap - d_an + 0.5)
    #   0: positives 2, 5 -> 5;  negatives 3, 6, 10, 20, 21 -> 3;  5 - 3 + 0.5 = 2.5
    #   2: positives 0, 5 -> 3;  negative 3 at 1;                  3 - 1 + 0.5 = 2.5
    #   5: positives 0, 2 -> 5;  negative 6 at 1;                  5 - 1 + 0.5 = 4.5
    #   3: positives 6, 10 -> 7; negative 2 at 1;                  7 - 1 + 0.5 = 6.5
    #   6: positives 3, 10 -> 4; negative 5 at 1;                  4 - 1 + 0.5 = 3.5
    #  10: positives 3, 6 -> 7;  negative 5 at 5;                  7 - 5 + 0.5 = 2.5
    #  20: positive 21 at 1;     negative 10 at 10;                1 - 10 + 0.5 < 0 -> 0
    #  21: positive 20 at 1;     negative 10 at 11;                1 - 11 + 0.5 < 0 -> 0
    # (the easiest positive, 2 for anchor 0, would give 0 there; the farthest negative, 21,
    # would give 0 for every anchor of ids 0 and 1)
    loss = HardTripletLoss(margin=0.5)(_on_line(LINE_X), torch.tensor(LINE_LABELS))
    assert loss.item() == pytest.approx((2.5 + 2.5 + 4.5 + 6.5 + 3.5 + 2.5) / 8, rel=1e-5)
    # margin 0: the same pairs, 0.5 less for each of the six active anchors
    loss = HardTripletLoss(margin=0.0)(_on_line(LINE_X), torch.tensor(LINE_LABELS))
    assert loss.item() == pytest.approx((2 + 2 + 4 + 6 + 3 + 2) / 8, rel=1e-5)


def test_hard_triplet_gradient_reaches_only_the_mined_pairs():
    # anchor 20 (index 6) and anchor 21 (index 7) are inactive; the active anchors' mined
    # features are indices 0-5 only, so the features of id 2 get no gradient at all
    features = _on_line(LINE_X).requires_grad_(True)
    HardTripletLoss(margin=0.5)(features, torch.tensor(LINE_LABELS)).backward()
    assert features.grad[6:].abs().sum() == 0
    assert (features.grad[:6].abs().sum(dim=1) > 0).all()


def test_hard_triplet_separated_and_single_identity_batches_give_zero():
    separated = _on_line([0.0, 1.0, 10.0, 11.0])  # d_ap = 1, d_an >= 9: all below the margin
    assert HardTripletLoss(margin=0.3)(separated, torch.tensor([0, 0, 1, 1])).item() == 0.0
    # no negative at all: every anchor contributes 0 instead of failing
    assert HardTripletLoss(margin=0.3)(separated, torch.tensor([4, 4, 4, 4])).item() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [0.0, 0.3, 1.0])
def test_hard_triplet_matches_torchreid(seed, margin):
    """torchreid's TripletLoss (a loop over anchors + MarginRankingLoss): same value and
    gradient on random batches of P identities x K instances."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(4).repeat_interleave(4)[torch.randperm(16, generator=generator)]
    features = torch.randn(16, 32, generator=generator)
    ours_in = features.clone().requires_grad_(True)
    theirs_in = features.clone().requires_grad_(True)
    ours = HardTripletLoss(margin)(ours_in, labels)
    theirs = torchreid_api().losses.TripletLoss(margin=margin)(theirs_in, labels)
    assert theirs.item() > 0  # the batches exercise the hinge, not only its flat part
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------- label smoothing, batches
def test_label_smoothing_batch_mean_by_hand():
    # two samples, K = 2, eps 0.2: targets 0.9 / 0.1 for the labelled / other class
    logits = torch.tensor([[0.0, 0.0], [3.0, 1.0]])
    log_half = math.log(0.5)
    log_z = math.log(E**3 + E)
    first = -(0.9 * log_half + 0.1 * log_half)  # label 1, uniform logits: log 2
    second = -(0.9 * (1 - log_z) + 0.1 * (3 - log_z))  # label 1 of logits (3, 1)
    loss = label_smoothed_cross_entropy(logits, torch.tensor([1, 1]), 0.2)
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        label_smoothed_cross_entropy(logits, torch.tensor([1, 1]), 1.0)


def test_label_smoothing_matches_torchreid():
    """torchreid's CrossEntropyLoss(label_smooth=True) uses eps 0.1."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=generator)
    labels = torch.randint(0, 5, (8,), generator=generator)
    theirs = torchreid_api().losses.CrossEntropyLoss(num_classes=5, use_gpu=False)(logits, labels)
    ours = label_smoothed_cross_entropy(logits, labels, 0.1)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-6)


def test_hsf_uses_its_configured_label_smoothing():
    # the case of test_hsf_by_hand without smoothing: plain cross-entropy per modality
    feature = torch.tensor([[1.0, 0.0]])
    bank = {
        "rgb": torch.tensor([[1.0, 0.0], [0.0, 1.0]]),
        "gray": torch.tensor([[0.0, 1.0], [1.0, 0.0]]),
    }
    rgb = math.log(E + 1) - 1  # -log softmax of the higher logit
    gray = math.log(E + 1)  # -log softmax of the lower one
    loss = HSFLoss({"rgb": 1.0, "gray": 2.0}, label_smoothing=0.0)
    total, terms = loss(feature, bank, torch.tensor([0]))
    assert total.item() == pytest.approx(rgb + 2 * gray, rel=1e-6)
    assert terms["gray"].item() == pytest.approx(gray, rel=1e-6)
