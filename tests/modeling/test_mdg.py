"""MDG: prompt template, per-identity prompt vectors, text encoding, the grayscale transform."""

import open_clip
import pytest
import torch

from csgn_plugin.modeling.clip_towers import clip_text_parts
from csgn_plugin.modeling.clip_weights import load_clip
from csgn_plugin.modeling.grayscale import to_grayscale
from csgn_plugin.modeling.mdg import PromptLearner, TextEncoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


CONTEXT = 16  # the tiny text tower's context length


@pytest.fixture(scope="module")
def clip():
    return load_clip("csgn-tiny-vit", "", "auto").eval()


def _learner(clip, **kwargs):
    parts = clip_text_parts(clip)
    options = {
        "num_ids": 3,
        "modalities": ("rgb", "gray"),
        "template": "A photo of a {} person.",
        "n_ctx": 4,
        "init_std": 0.02,
    } | kwargs
    return PromptLearner(parts["token_embedding"], CONTEXT, **options)


def _encoder(clip):
    parts = clip_text_parts(clip)
    return TextEncoder(
        parts["positional_embedding"],
        parts["transformer"],
        parts["ln_final"],
        parts["text_projection"],
        parts["attn_mask"],
    )


def test_template_layout_matches_clip_reid(clip):
    learner = _learner(clip)
    # <SOT> a photo of a | X X X X | person . <EOT> <pad>...: CLIP's tokenizer gives one token
    # per word here, so the prefix is 5 tokens, the suffix 16 - 5 - 4 = 7, EOT at index 11
    assert learner.token_prefix.shape == (1, 5, 64)
    assert learner.token_suffix.shape == (1, 7, 64)
    assert learner.eot_index == 11
    prompts = learner(torch.tensor([0, 2, 2]), "gray")
    assert prompts.shape == (3, 16, 64)
    torch.testing.assert_close(prompts[1, 5:9], learner.ctx["gray"][2])
    torch.testing.assert_close(prompts[0, 5:9], learner.ctx["gray"][0])


def test_prompt_features_equal_clip_text_features_for_word_vectors(clip):
    """With every context vector set to the embedding of the word 'x', the prompt is the
    tokenized sentence itself, so its feature must be CLIP's own text feature."""
    learner, encoder = _learner(clip, n_ctx=2, template="a {} standing."), _encoder(clip)
    x_id = open_clip.tokenize(["X"])[0, 1]
    with torch.no_grad():
        learner.ctx["rgb"][:] = clip.token_embedding.weight[x_id]
        ours = encoder(learner(torch.tensor([1]), "rgb"), learner.eot_index)
        expected = clip.encode_text(open_clip.tokenize(["a X X standing."], CONTEXT))
    torch.testing.assert_close(ours, expected)


def test_prompt_parameters_per_modality(clip):
    learner = _learner(clip, num_ids=500, modalities=("rgb",), n_ctx=3)
    assert learner.modalities == ("rgb",)
    assert [n for n, _ in learner.named_parameters()] == ["ctx.rgb"]
    assert learner.ctx["rgb"].shape == (500, 3, 64)
    assert abs(learner.ctx["rgb"].std().item() - 0.02) < 0.002  # N(0, 0.02) as CLIP-ReID
    with pytest.raises(KeyError, match="gray"):
        learner(torch.tensor([0]), "gray")


def test_prompt_gradients_reach_only_the_used_identities(clip):
    learner, encoder = _learner(clip), _encoder(clip)
    encoder.requires_grad_(False)
    encoder(learner(torch.tensor([1, 1]), "rgb"), learner.eot_index).sum().backward()
    grad = learner.ctx["rgb"].grad
    assert grad[1].abs().sum() > 0
    assert grad[0].abs().sum() == 0 and grad[2].abs().sum() == 0
    assert learner.ctx["gray"].grad is None


@pytest.mark.parametrize(
    "template,n_ctx,message",
    [
        ("A photo of a person.", 4, "exactly one"),
        ("{} and {}", 4, "exactly one"),
        ("X marks {}", 4, "must not contain the word 'X'"),
        ("a photo of {} " + "very " * 80, 4, "does not fit"),
    ],
)
def test_bad_templates_are_refused(clip, template, n_ctx, message):
    with pytest.raises(ValueError, match=message):
        _learner(clip, template=template, n_ctx=n_ctx)


def test_grayscale_of_a_known_pixel():
    raw = torch.tensor([0.2, 0.4, 0.6])
    luma = 0.299 * 0.2 + 0.587 * 0.4 + 0.114 * 0.6  # = 0.363, ITU-R BT.601
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    imgs = ((raw - mean) / std).view(1, 3, 1, 1).expand(2, 3, 4, 3).clone()
    gray = to_grayscale(imgs, IMAGENET_MEAN, IMAGENET_STD)
    assert gray.shape == imgs.shape
    expected = (luma - mean) / std  # per-channel normalisation of the same luma
    torch.testing.assert_close(gray[0, :, 2, 1], expected)
    # un-normalised, all three channels carry the luma
    torch.testing.assert_close(gray[1, :, 0, 0] * std + mean, torch.full((3,), luma))


def test_grayscale_with_clip_reid_vit_normalisation():
    imgs = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)  # raw (1.0, 0.5, 0.0) at 0.5/0.5
    luma = 0.299 * 1.0 + 0.587 * 0.5
    gray = to_grayscale(imgs, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    torch.testing.assert_close(gray.flatten(), torch.full((3,), (luma - 0.5) / 0.5))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        to_grayscale(torch.zeros(3, 4, 4), (0.5,) * 3, (0.5,) * 3)
