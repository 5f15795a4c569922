"""CAL's losses against Simple-CCReID's arithmetic, written out here sample by sample (its files
and lines in guxinqian/Simple-CCReID, commit 88c5b0b, are named at each formula), on a hand-built
batch whose positive-outfit masks are written out too. The implementation computes the same
values another way (log-sum-exp, masks, one-hot): the expectations never come from it."""

import math

import pytest
import torch

from csgn_plugin.losses.cal import (
    clothes_adversarial_loss,
    cosface_loss,
    cosine_triplet_loss,
)
from csgn_plugin.losses.objective import CALObjective, Labels

# 3 identities wearing 6 outfits: id 0 outfits {0, 1}, id 1 outfit {2}, id 2 outfits {3, 4, 5}
OUTFITS = torch.tensor(
    [
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
    ],
    dtype=torch.bool,
)
PIDS = torch.tensor([0, 0, 1, 1, 2, 2, 2, 0])
CLOTHES = torch.tensor([0, 1, 2, 2, 3, 5, 4, 0])
# each sample's positive outfits: its identity's row, written out
POSITIVE = torch.tensor(
    [
        [1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [1, 1, 0, 0, 0, 0],
    ],
    dtype=torch.bool,
)


def smoothed_cross_entropy(logits, labels, eps):
    """``CrossEntropyWithLabelSmooth`` (cross_entropy_loss_with_label_smooth.py:27-31): targets
    (1 - eps) on the label + eps / K everywhere, mean over the batch of -sum target log p."""
    k = logits.shape[1]
    total = 0.0
    for row, label in zip(logits.double(), labels.tolist()):
        log_p = row - torch.log(torch.exp(row).sum())
        total += -sum((eps / k + (1 - eps) * (j == label)) * log_p[j] for j in range(k))
    return total / len(labels)


def cosface(cosines, labels, scale, margin):
    """``CosFaceLoss`` (cosface_loss.py:29-34): cross-entropy of s * (cos - m on the label)."""
    total = 0.0
    for row, label in zip(cosines.double(), labels.tolist()):
        z = [scale * (c - margin * (j == label)) for j, c in enumerate(row)]
        total += -(z[label] - math.log(sum(math.exp(v) for v in z)))
    return total / len(labels)


def adversarial(cosines, clothes, positive, scale, eps):
    """``ClothesBasedAdversarialLoss`` (clothes_based_adversarial_loss.py:32-41), its own
    arithmetic: exp, then log of (the negatives' sum + the class's own exp)."""
    total = 0.0
    for row, own, pos in zip(cosines.double(), clothes.tolist(), positive.tolist()):
        e = [math.exp(scale * c) for c in row]
        negatives = sum(v for v, p in zip(e, pos) if not p)
        log_prob = [scale * c - math.log(negatives + v) for c, v in zip(row, e)]
        count = sum(pos)
        total += -(1 - eps) * log_prob[own]
        total += -sum(eps / count * lp for lp, p in zip(log_prob, pos) if p)
    return total / len(clothes)


def cosine_triplet(features, labels, margin):
    """``TripletLoss`` (triplet_loss.py:30-51): cosine distances of L2-normalised features,
    hardest positive and negative per anchor, MarginRankingLoss(d_an, d_ap, 1)."""
    unit = [f / f.norm() for f in features.double()]
    total = 0.0
    for i, anchor in enumerate(unit):
        d = [1 - float(anchor @ other) for other in unit]
        ap = max(d[j] for j in range(len(unit)) if labels[j] == labels[i])
        an = min(d[j] for j in range(len(unit)) if labels[j] != labels[i])
        total += max(0.0, -(an - ap) + margin)
    return total / len(unit)


@pytest.fixture
def cosines():
    g = torch.Generator().manual_seed(7)
    return torch.rand(8, 6, generator=g) * 2 - 1


def close(value, expected):
    """float32 computation against the float64 reference."""
    assert math.isclose(float(value), float(expected), rel_tol=1e-5, abs_tol=1e-6), (
        float(value),
        float(expected),
    )


def test_positive_masks_of_the_batch_are_its_identities_outfits():
    assert torch.equal(OUTFITS[PIDS], POSITIVE)


@pytest.mark.parametrize("scale, eps", [(16.0, 0.1), (8.0, 0.4), (16.0, 0.0)])
def test_adversarial_loss_is_the_references(cosines, scale, eps):
    value = clothes_adversarial_loss(cosines, CLOTHES, POSITIVE, scale, eps)
    close(value, adversarial(cosines, CLOTHES, POSITIVE, scale, eps))


def test_adversarial_loss_ignores_the_identitys_other_outfits_as_competitors(cosines):
    """Raising the cosine of one's own other outfit changes only the terms of that outfit (its
    own log p): it never enters another positive's denominator, unlike a softmax over all."""
    raised = cosines.clone()
    raised[0, 1] += 0.5  # sample 0 (id 0, outfit 0): its other outfit, 1
    only_own = clothes_adversarial_loss(raised, CLOTHES, POSITIVE, 16.0, 0.0)
    before = clothes_adversarial_loss(cosines, CLOTHES, POSITIVE, 16.0, 0.0)
    torch.testing.assert_close(only_own, before)  # epsilon 0: outfit 1 carries no target
    # ... whereas a negative outfit's cosine raises every positive's denominator
    raised[0, 3] += 0.5
    assert clothes_adversarial_loss(raised, CLOTHES, POSITIVE, 16.0, 0.0) > before


@pytest.mark.parametrize("scale, margin", [(16.0, 0.0), (30.0, 0.35)])
def test_cosface_is_the_references(cosines, scale, margin):
    close(cosface_loss(cosines, CLOTHES, scale, margin), cosface(cosines, CLOTHES, scale, margin))


def test_cosine_triplet_is_the_references():
    g = torch.Generator().manual_seed(2)
    features = torch.randn(8, 5, generator=g)
    for margin in (0.3, 0.7):
        value = cosine_triplet_loss(features, PIDS, features, PIDS, margin)
        close(value, cosine_triplet(features, PIDS, margin))


def test_identity_terms_of_the_objective_are_the_references():
    """'cross_entropy' with smoothing 0.1 is ``CrossEntropyWithLabelSmooth`` (epsilon spread over
    all K classes, the label's included: torch's label_smoothing has the same meaning);
    'cosface' is ``CosFaceLoss`` with the identity margin; the pair term is weighted."""
    g = torch.Generator().manual_seed(4)
    features = torch.randn(8, 4, generator=g)
    logits = torch.randn(8, 3, generator=g)
    labels = Labels(pid=PIDS, camid=torch.zeros(8, dtype=torch.long), clothes_id=CLOTHES)
    outputs = {"features": features, "logits": logits}

    def objective(id_loss, smoothing, pair_weight):
        classifier = torch.nn.Linear(4, 6, bias=False)
        return CALObjective(classifier, OUTFITS, id_loss, smoothing, 16.0, 0.2, pair_weight, 0.5,
                            0.1, 0, 0)  # fmt: skip

    terms = objective("cross_entropy", 0.1, 0.0)(outputs, labels).terms
    close(terms["id"], smoothed_cross_entropy(logits, PIDS, 0.1))
    assert "pair" not in terms  # weight 0: no term (Simple-CCReID adds 0 x it)
    terms = objective("cross_entropy", 0.0, 0.6)(outputs, labels).terms
    close(terms["id"], smoothed_cross_entropy(logits, PIDS, 0.0))
    close(terms["pair"], 0.6 * cosine_triplet(features, PIDS, 0.5))
    cos = torch.tanh(logits)  # a normalised classifier's outputs are cosines
    terms = objective("cosface", 0.0, 0.0)({"features": features, "logits": cos}, labels).terms
    close(terms["id"], cosface(cos, PIDS, 16.0, 0.2))


def test_a_hand_made_break_is_caught(cosines):
    """The reference formulas tell a wrong epsilon spread apart (over the identity's outfits, not
    all classes), so the equality above is no coincidence."""
    wrong = clothes_adversarial_loss(cosines, CLOTHES, torch.ones_like(POSITIVE), 16.0, 0.1)
    assert abs(float(wrong) - adversarial(cosines, CLOTHES, POSITIVE, 16.0, 0.1)) > 1e-3
