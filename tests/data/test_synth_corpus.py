"""The captioned corpus: colour naming, captions checked against the pixels, determinism, safety.

Only the 'tiny' corpus (48 images of 12 people) is generated here.
"""

import json
import os
import re

import numpy as np
import pytest

from csgn_plugin.data.synth import corpus as corpus_module
from csgn_plugin.data.synth.captions import (
    COLOUR_NAMES,
    MAX_TOKENS,
    MENTION_ODDS,
    PALETTE,
    Attributes,
    caption_tokens,
    name_colour,
    srgb_to_lab,
    write_caption,
)
from csgn_plugin.data.synth.corpus import (
    CORPUS_PRESETS,
    CorpusError,
    ensure_corpus,
    load_corpus,
    render_sample,
    sample_keys,
)
from csgn_plugin.data.synth.render import (
    ACCESSORY,
    BAG,
    BOTTOM,
    HAIR,
    MIXED,
    SHOES,
    SKIN,
    TOP,
    TOP_PATTERN,
)
from csgn_plugin.data.synth.world import CORPUS_PERSON, IMAGE, identity_from, stream

TINY = CORPUS_PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return ensure_corpus(str(tmp_path_factory.mktemp("corpus")), "tiny", 0, workers=1)


def test_lab_matches_published_values():
    # CIELAB (D65) of sRGB white, red and blue as colour references list them
    np.testing.assert_allclose(srgb_to_lab([1.0, 1.0, 1.0]), [100.0, 0.0, 0.0], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab([1.0, 0.0, 0.0]), [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab([0.0, 0.0, 1.0]), [32.30, 79.19, -107.86], atol=0.05)


@pytest.mark.parametrize(
    "rgb,name",
    [
        ((1.0, 0.0, 0.0), "red"),
        ((0.0, 0.0, 1.0), "blue"),
        ((0.0, 0.5, 0.0), "green"),
        ((1.0, 1.0, 0.0), "yellow"),
        ((1.0, 0.5, 0.0), "orange"),
        ((0.5, 0.0, 0.5), "purple"),
        ((1.0, 0.6, 0.75), "pink"),
        ((0.4, 0.25, 0.1), "brown"),
        ((0.0, 0.0, 0.0), "black"),
        ((1.0, 1.0, 1.0), "white"),
        ((0.5, 0.5, 0.5), "grey"),
        ((0.1, 0.15, 0.4), "blue"),  # navy
    ],
)
def test_colours_get_their_everyday_names(rgb, name):
    assert name_colour(rgb) == name


def test_every_prototype_names_itself():
    for name, prototypes in PALETTE.items():
        for rgb in prototypes:
            assert name_colour(rgb) == name


# ------------------------------------------------------------- captions against the pixels
NOUNS = {
    **dict.fromkeys(("t-shirt", "tee", "sweater", "jumper", "shirt", "top"), TOP),
    **dict.fromkeys(("trousers", "pants", "shorts", "skirt"), BOTTOM),
    **dict.fromkeys(("backpack", "bag"), BAG),
    "hair": HAIR,
    "shoes": SHOES,
    "cap": ACCESSORY,
}
COLOUR_WORDS = set(COLOUR_NAMES) | {"blond"}
# words that may stand between colour words and their noun
BETWEEN = {"and", "striped", "checked", "plaid", "dotted", "polka-dot", "long", "short", "curly"}
BETWEEN |= {"shoulder", "long-sleeved"}


def _interior_median(image, parts, label):
    """The test's own reading of a part's colour: the median of its pixels whose 4 neighbours
    are the same part (the image border never counts); None under 4 such pixels."""
    padded = np.pad(parts.astype(np.int32), 1, constant_values=-1)
    same = padded[1:-1, 1:-1] == label
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        same &= padded[dy : dy + parts.shape[0], dx : dx + parts.shape[1]] == label
    same[0, :] = same[-1, :] = same[:, 0] = same[:, -1] = False
    if same.sum() < 4:
        return None
    return np.median(image[same].astype(np.float64), axis=0) / 255.0


def _colour_claims(caption):
    """(colour words, part label) of every noun that colour words stand before; asserts that
    every colour word stands before a noun."""
    claims, pending = [], []
    for word in re.findall(r"[a-z-]+|[,.]", caption):
        if word in COLOUR_WORDS:
            pending.append(word)
        elif word in NOUNS:
            if pending:
                claims.append((pending, NOUNS[word]))
            pending = []
        elif word not in BETWEEN:
            assert not pending, f"'{caption}': {pending} name no garment"
    assert not pending, caption
    return claims


def test_caption_colours_match_the_rendered_pixels(tiny):
    corpus = load_corpus(tiny)
    checked = 0
    for index in range(len(corpus.captions)):
        image, parts, _, caption, _ = render_sample(TINY, 0, index)
        np.testing.assert_array_equal(image, corpus.images[index])  # the stored pixels
        assert caption.text == corpus.captions[index]
        for colours, label in _colour_claims(caption.text):
            expected = [_interior_median(image, parts, label)]
            if label == TOP and len(colours) == 2:  # 'red and white striped shirt'
                expected.append(_interior_median(image, parts, TOP_PATTERN))
            assert len(colours) == len(expected), caption.text
            for word, rgb in zip(colours, expected):
                assert rgb is not None, f"'{caption.text}' names a colour of an unseen part"
                named = name_colour(rgb)
                assert word == ("blond" if named == "yellow" and label == HAIR else named), (
                    f"'{caption.text}': '{word}' but the pixels are {named} {rgb.round(2)}"
                )
                checked += 1
    assert checked > 60  # most of the 48 captions name at least one colour


def test_part_map_marks_the_garments_where_they_are_drawn(tiny):
    image, parts, attributes, _, _ = render_sample(TINY, 0, 0)
    ys_top, _ = np.nonzero(parts == TOP)
    ys_bottom, _ = np.nonzero(parts == BOTTOM)
    assert ys_top.mean() < ys_bottom.mean()  # the top above the bottom
    assert (parts == SKIN).any() and (parts == MIXED).any()  # a face and anti-aliased edges
    assert set(np.unique(parts)) <= set(range(11)) | {MIXED}
    assert image.shape == (*TINY.image_size, 3) and parts.shape == TINY.image_size


def test_captions_fit_the_text_context_and_follow_their_mentions(tiny):
    corpus = load_corpus(tiny)
    for sample in corpus.samples:
        text, attrs = sample["caption"], sample["attributes"]
        assert caption_tokens(text) <= MAX_TOKENS
        if "top_colour" in sample["mentions"]:
            assert attrs["top_colour"] in text
        if "bottom_colour" in sample["mentions"]:
            assert attrs["bottom_colour"] in text
        if "build" in sample["mentions"]:
            assert any(word in text for word in attrs["build"])


def test_clothing_colour_is_mentioned_far_more_often_than_build():
    attributes = Attributes(
        top_colour="red",
        top_pattern="hstripes",
        top_pattern_colour="white",
        long_sleeves=True,
        bottom_colour="grey",
        bottom_style="skirt",
        bottom_checked=False,
        shoes_colour="black",
        hair_style="long",
        hair_colour="brown",
        bag="backpack",
        bag_colour="blue",
        accessory="cap",
        accessory_colour="green",
        build=("slim", "long-legged"),
    )
    captions = [write_caption(attributes, stream(0, 999, i)) for i in range(400)]
    rate = {
        tag: sum(tag in c.mentions for c in captions) / len(captions)
        for tag in ("top_colour", "bottom_colour", "build")
    }
    assert rate["top_colour"] == pytest.approx(MENTION_ODDS["top_colour"], abs=0.05)
    assert rate["bottom_colour"] == pytest.approx(MENTION_ODDS["bottom_colour"], abs=0.07)
    assert rate["build"] < 0.15 and rate["top_colour"] > 5 * rate["build"]
    assert len({c.text for c in captions}) > 300  # the templates vary the wording


# ------------------------------------------------------------- determinism and layout
def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path, tiny):
    other = ensure_corpus(str(tmp_path), "tiny", 0, workers=2)
    for name in ("images.npy", "samples.json", "corpus.json"):
        assert _bytes(os.path.join(other, name)) == _bytes(os.path.join(tiny, name)), name
    third = ensure_corpus(str(tmp_path), "tiny", 1, workers=1)
    assert _bytes(os.path.join(third, "images.npy")) != _bytes(os.path.join(tiny, "images.npy"))


def test_layout_splits_and_manifest(tiny):
    corpus = load_corpus(tiny)
    assert corpus.images.shape == (48, 128, 64, 3) and corpus.images.dtype == np.uint8
    # the last 3 of 12 people (4 images each) are held out
    np.testing.assert_array_equal(corpus.heldout_index, np.arange(36, 48))
    np.testing.assert_array_equal(corpus.train_index, np.arange(36))
    assert sample_keys(TINY, 13) == (3, 0, 1)  # 4 images a person, 2 an outfit
    assert [corpus.samples[13][k] for k in ("person", "outfit")] == [3, 0]
    with open(os.path.join(tiny, "corpus.json")) as f:
        manifest = json.load(f)
    assert manifest["counts"] == {"images": 48, "train": 36, "heldout": 12}
    assert manifest["seed"] == 0 and manifest["preset"] == "tiny"


def test_corpus_people_are_not_synthcc_identities():
    # the corpus draws people from its own stream kind, not SynthCC's IDENTITY stream
    assert CORPUS_PERSON > IMAGE
    corpus_person = identity_from(stream(0, CORPUS_PERSON, 0), 0)
    from csgn_plugin.data.synth.world import sample_identity

    assert corpus_person != sample_identity(0, 0)


# ------------------------------------------------------------- crash safety
def test_a_killed_generation_leaves_no_corpus(tmp_path, monkeypatch):
    real = corpus_module._render_range

    def die(job):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(corpus_module, "_render_range", die)
    with pytest.raises(KeyboardInterrupt):
        ensure_corpus(str(tmp_path), "tiny", 0, workers=1)
    parent = os.path.join(str(tmp_path), "synthclip_corpus")
    assert [e for e in os.listdir(parent) if not e.endswith(".lock")] == []
    monkeypatch.setattr(corpus_module, "_render_range", real)
    assert load_corpus(ensure_corpus(str(tmp_path), "tiny", 0, workers=1)).images.shape[0] == 48


def test_foreign_folders_and_bad_options_are_refused(tmp_path):
    foreign = os.path.join(str(tmp_path), "synthclip_corpus", "tiny_seed0")
    os.makedirs(foreign)
    with pytest.raises(CorpusError, match="not a SynthCLIP corpus folder"):
        ensure_corpus(str(tmp_path), "tiny", 0)
    with pytest.raises(ValueError, match="unknown captioned-corpus preset 'huge'"):
        ensure_corpus(str(tmp_path), "huge", 0)
    with pytest.raises(ValueError, match="non-negative"):
        ensure_corpus(str(tmp_path), "tiny", -1)


def test_a_corpus_of_another_version_is_regenerated(tmp_path, tiny):
    path = ensure_corpus(str(tmp_path), "tiny", 0, workers=1)
    manifest_path = os.path.join(path, "corpus.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["synthcc_generator_version"] -= 1  # made by an older SynthCC renderer
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    assert ensure_corpus(str(tmp_path), "tiny", 0, workers=1) == path
    assert _bytes(manifest_path) == _bytes(os.path.join(tiny, "corpus.json"))
