"""SynthCLIP pretraining: schedule, batches, loss, exact resume, export formats, cache, probe.

Pretraining runs here on the 'tiny' corpus (36 training images) with batches of 8 and a handful of
steps: a few seconds each.
"""

import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
from run_helpers import ROOT

from csgn_plugin.builders import build_clip_model as build_model_from_config
from csgn_plugin.config import get_default_config
from csgn_plugin.data.synth.corpus import ensure_corpus, load_corpus
from csgn_plugin.modeling.clip_weights import (
    load_clip,
    read_clip_checkpoint,
    transformer_activation,
)
from csgn_plugin.pretraining import (
    PretrainSettings,
    SynthCLIPEncoder,
    default_settings,
    ensure_synthclip,
    ensure_synthclip_towers,
    pretrain,
    synthclip_dir,
)
from csgn_plugin.pretraining import cache as cache_module
from csgn_plugin.pretraining import train as train_module
from csgn_plugin.pretraining.probe import colour_precision, neighbours, retrieval, run_probe
from csgn_plugin.pretraining.towers import (
    export_state_dict,
    stretch_columns,
    tokenize,
)
from csgn_plugin.pretraining.train import batch_indices, flip_mask, learning_rate


def _settings(tower="vit", **overrides):
    values = dict(tower=tower, corpus="tiny", steps=8, batch_size=8, warmup_steps=2, lr=2e-3)
    values.update(overrides)
    return PretrainSettings(**values)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data"))
    ensure_corpus(path, "tiny", 0, workers=1)
    return path


@pytest.fixture(scope="module")
def corpus(root):
    return load_corpus(ensure_corpus(root, "tiny", 0))


# ------------------------------------------------------------- schedule and batches
def test_learning_rate_warms_up_then_follows_a_cosine_over_the_steps():
    s = PretrainSettings(steps=110, warmup_steps=10, lr=1.0)
    assert [learning_rate(s, i) for i in (0, 4, 9)] == [0.1, 0.5, 1.0]
    assert learning_rate(s, 10) == 1.0  # cosine starts at the peak
    assert learning_rate(s, 60) == pytest.approx(0.5)  # half-way: cos(pi/2) = 0
    assert learning_rate(s, 85) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert learning_rate(s, 109) == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_batches_cover_each_training_image_once_an_epoch_and_are_reproducible():
    s = PretrainSettings(batch_size=4, seed=3)
    train = np.arange(100, 110)  # 10 images: 2 batches an epoch, 2 images left out
    epoch0 = np.concatenate([batch_indices(s, train, step) for step in (0, 1)])
    epoch1 = np.concatenate([batch_indices(s, train, step) for step in (2, 3)])
    for epoch in (epoch0, epoch1):
        assert len(set(epoch)) == 8 and set(epoch) <= set(train)
    assert not np.array_equal(epoch0, epoch1)  # a new order each epoch
    np.testing.assert_array_equal(batch_indices(s, train, 3), epoch1[4:])
    assert flip_mask(s, 5).tolist() == flip_mask(s, 5).tolist()
    assert not PretrainSettings(hflip=False, batch_size=4).__eq__(s)
    assert not flip_mask(PretrainSettings(hflip=False, batch_size=4), 5).any()


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="tower must be one of"):
        PretrainSettings(tower="vit-l")
    with pytest.raises(ValueError, match="warmup_steps"):
        PretrainSettings(steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="batch_size"):
        PretrainSettings(batch_size=1)
    with pytest.raises(ValueError, match="unknown SynthCLIP settings"):
        PretrainSettings.from_dict({"tower": "vit", "epochs": 3})


# ------------------------------------------------------------- training
def test_pretraining_lowers_the_loss(corpus, tmp_path):
    # 4 batches an epoch: 24 steps see each training image 6 times
    s = _settings(steps=24, warmup_steps=3)
    result = pretrain(corpus, s, str(tmp_path), checkpoint_every=100, log=lambda _: None)
    assert np.mean(result.losses[-4:]) < 0.7 * np.mean(result.losses[:4])


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_an_interrupted_run_resumes_to_the_identical_result(corpus, tmp_path, monkeypatch, tower):
    s = _settings(tower)
    quiet = {"checkpoint_every": 3, "log": lambda _: None}
    straight = pretrain(corpus, s, str(tmp_path / "straight"), **quiet)

    class Killed(Exception):
        pass

    passes = {"n": 0}

    def die_at_step_5(name):
        passes["n"] += 1
        if passes["n"] == 5:  # after step 5; the last checkpoint holds step 3
            raise Killed

    monkeypatch.setattr(train_module, "fault_point", die_at_step_5)
    with pytest.raises(Killed):
        pretrain(corpus, s, str(tmp_path / "resumed"), **quiet)
    monkeypatch.undo()
    logged = []
    resumed = pretrain(corpus, s, str(tmp_path / "resumed"), **{**quiet, "log": logged.append})
    assert resumed.resumed_from == 3 and resumed.steps_run == 5
    assert any("resuming at step 3/8" in line for line in logged)
    assert resumed.losses == straight.losses
    expected, got = _state(straight.model), _state(resumed.model)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


class _AllRowsEmbedding(train_module.UsedRowsEmbedding):
    """Every row a parameter: AdamW over the whole token table, as before the used-rows path."""

    def __init__(self, table, used):
        super().__init__(table, torch.arange(table.shape[0]))


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_training_the_used_token_rows_gives_the_whole_table_adamw_result(
    corpus, tmp_path, monkeypatch, tower
):
    s = _settings(tower, steps=6)
    quiet = {"checkpoint_every": 100, "log": lambda _: None}
    used_rows = _state(pretrain(corpus, s, str(tmp_path / "used"), **quiet).model)
    monkeypatch.setattr(train_module, "UsedRowsEmbedding", _AllRowsEmbedding)
    whole = _state(pretrain(corpus, s, str(tmp_path / "whole"), **quiet).model)
    assert used_rows.keys() == whole.keys()
    for key in whole:
        assert used_rows[key].shape == whole[key].shape, key
        torch.testing.assert_close(used_rows[key], whole[key], rtol=1e-5, atol=1e-7, msg=key)
    # the rows no caption uses only decayed: by the product of the schedule's factors
    table = whole["token_embedding.weight"]
    tokens = tokenize(corpus.captions, whole["positional_embedding"].shape[0])
    unused = torch.ones(table.shape[0], dtype=torch.bool)
    unused[torch.unique(tokens[torch.from_numpy(corpus.train_index)])] = False
    factor = math.prod(1 - learning_rate(s, t) * s.weight_decay for t in range(s.steps))
    torch.manual_seed(s.seed)
    model = train_module.build_training_clip(tower, tuple(corpus.images.shape[1:3]))
    initial = model.token_embedding.weight.detach()
    torch.testing.assert_close(table[unused], initial[unused] * factor, rtol=1e-5, atol=1e-8)
    assert not torch.allclose(table[~unused], initial[~unused] * factor)  # the used rows trained


def test_progress_of_other_settings_is_refused(corpus, tmp_path):
    pretrain(corpus, _settings(steps=3), str(tmp_path), checkpoint_every=1, log=lambda _: None)
    with pytest.raises(ValueError, match="progress of other settings"):
        pretrain(corpus, _settings(steps=3, lr=1e-4), str(tmp_path), log=lambda _: None)


def test_texts_longer_than_the_context_are_refused():
    tokens = tokenize(["a red shirt.", "a b"], 8)
    assert tokens.shape == (2, 8) and tokens[0, 0] == tokens[1, 0]  # start token
    with pytest.raises(ValueError, match="do not fit the text context of 8 tokens"):
        tokenize(["one two three four five six seven"], 8)  # 7 words + start + end


# ------------------------------------------------------------- export and loading
def test_stretched_columns_by_hand():
    # class row 9, a 2x1 grid (1 / 2) -> 2x2 (1 1 / 2 2)
    out = stretch_columns(torch.tensor([[9.0], [1.0], [2.0]]), (2, 1), 2)
    assert out.flatten().tolist() == [9.0, 1.0, 1.0, 2.0, 2.0]
    # rows (1 2) (3 4) (5 6) (7 8) -> (1 1 2 2) (3 3 4 4) (5 5 6 6) (7 7 8 8)
    grid = torch.tensor([[9.0], [1.0], [2.0], [3.0], [4.0], [5.0], [6.0], [7.0], [8.0]])
    out = stretch_columns(grid, (4, 2), 4)
    assert out.flatten().tolist() == [9.0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8]
    with pytest.raises(ValueError, match="cannot stretch"):
        stretch_columns(grid, (4, 2), 3)


def _trained(tower, corpus, tmp_path):
    result = pretrain(corpus, _settings(tower, steps=3), str(tmp_path), log=lambda _: None)
    return result.model.eval()


@pytest.mark.parametrize("tower", ["vit", "rn"])
def test_both_formats_load_every_tensor_and_reproduce_the_trained_model(corpus, tmp_path, tower):
    model = _trained(tower, corpus, tmp_path)
    state = export_state_dict(model, tower, (128, 64))
    arch = f"synthclip-{tower}"
    torch.save(state, tmp_path / "openai.pt")
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "open_clip.pt")
    x = torch.randn(3, 3, 128, 64)
    tokens = tokenize(["a person in a red shirt.", "blue trousers.", "someone."], 24)
    with torch.no_grad():
        expected_image, expected_text = model.encode_image(x), model.encode_text(tokens)
    for name, fmt in (("openai.pt", "openai-state-dict"), ("open_clip.pt", "open_clip")):
        path = str(tmp_path / name)
        read, detected = read_clip_checkpoint(path)
        assert detected == fmt and read.keys() == state.keys()
        loaded = load_clip(arch, path, "auto").eval()  # refuses any missing tensor
        assert transformer_activation(loaded.transformer) == "quick_gelu"  # as trained
        own = loaded.state_dict()
        assert set(own) - {"attn_mask"} == set(state)
        for key, value in state.items():
            assert torch.equal(own[key], value), key
        encoder = SynthCLIPEncoder(tower, path)
        with torch.no_grad():
            torch.testing.assert_close(encoder.image_features(x), expected_image, rtol=0, atol=1e-6)
            torch.testing.assert_close(
                encoder.clip.encode_text(tokens), expected_text, rtol=0, atol=1e-6
            )


def test_csgn_built_from_the_config_keys_holds_the_synthclip_weights(corpus, tmp_path):
    paths = {}
    for tower in ("vit", "rn"):
        model = _trained(tower, corpus, tmp_path / tower)
        paths[tower] = str(tmp_path / f"{tower}.pt")
        torch.save(export_state_dict(model, tower, (128, 64)), paths[tower])
    cfg = get_default_config()
    cfg.model.name, cfg.model.pretrained = "csgn", True
    cfg.clip.vit_arch, cfg.clip.resnet_arch = "synthclip-vit", "synthclip-rn"
    cfg.clip.vit_weights, cfg.clip.resnet_weights = paths["vit"], paths["rn"]
    cfg.data.height, cfg.data.width = 128, 64
    reid = build_model_from_config(cfg, num_classes=4, num_cameras=0)
    vit_file, _ = read_clip_checkpoint(paths["vit"])
    rn_file, _ = read_clip_checkpoint(paths["rn"])
    own = reid.state_dict()
    loaded_vit = {k: v for k, v in vit_file.items() if k.startswith("visual.")}
    loaded_vit.pop("visual.positional_embedding")  # resized to the ReID grid (checked above)
    for key, value in loaded_vit.items():
        assert torch.equal(own["vss.vit." + key[len("visual.") :]], value), key
    for key, value in rn_file.items():
        if key.startswith("visual.") and "attnpool" not in key:  # csgn drops the ResNet's pool
            assert torch.equal(own["vss.resnet." + key[len("visual.") :]], value), key
    # at the pretraining size the ReID grid is the stretched grid's every other column
    square = vit_file["visual.positional_embedding"]
    tall = torch.cat([square[:1], square[1:].reshape(8, 8, -1)[:, ::2].reshape(32, -1)])
    torch.testing.assert_close(own["vss.vit.positional_embedding"], tall, rtol=0, atol=0)
    assert torch.equal(own["text_encoder.text_projection"], vit_file["text_projection"])
    assert torch.equal(
        reid.prompt_learner.token_prefix[0, 0], vit_file["token_embedding.weight"][49406]
    )


# ------------------------------------------------------------- the cache
def test_cache_entry_is_made_once_reused_and_keyed_by_the_settings(root, monkeypatch):
    s = _settings(steps=4)
    path = ensure_synthclip(root, "vit", s, log=lambda _: None)
    entry = synthclip_dir(root, s)
    assert path == os.path.join(entry, "openai.pt") and os.path.isfile(path)
    assert os.path.isfile(os.path.join(entry, "open_clip.pt"))
    assert not os.path.exists(os.path.join(entry, "progress.pt"))
    with open(os.path.join(entry, "synthclip.json")) as f:
        manifest = json.load(f)
    assert manifest["identity"]["settings"]["steps"] == 4
    assert manifest["training"]["steps"] == 4

    def no_training(*args, **kwargs):
        raise AssertionError("a complete entry must be reused")

    monkeypatch.setattr(cache_module, "pretrain", no_training)
    assert ensure_synthclip(root, "vit", s, fmt="open_clip") == os.path.join(entry, "open_clip.pt")
    changed = _settings(steps=4, lr=1e-3)
    assert synthclip_dir(root, changed) != entry
    with pytest.raises(AssertionError, match="must be reused"):
        ensure_synthclip(root, "vit", changed)


def test_a_killed_pretraining_resumes_in_the_next_call(root, monkeypatch):
    s = _settings(steps=6, seed=5)

    class Killed(Exception):
        pass

    passes = {"n": 0}

    def die_at_step_3(name):
        passes["n"] += 1
        if passes["n"] == 3:  # after step 3; the last checkpoint holds step 2
            raise Killed

    monkeypatch.setattr(train_module, "fault_point", die_at_step_3)
    monkeypatch.setattr(
        cache_module,
        "pretrain",
        lambda *a, **k: train_module.pretrain(*a, **{**k, "checkpoint_every": 2}),
    )
    with pytest.raises(Killed):
        ensure_synthclip(root, "vit", s, log=lambda _: None)
    entry = synthclip_dir(root, s)
    assert not os.path.exists(entry)  # nothing looks finished
    monkeypatch.setattr(train_module, "fault_point", lambda name: None)
    logged = []
    ensure_synthclip(root, "vit", s, log=logged.append)
    assert any("resuming at step 2/6" in line for line in logged)
    assert os.path.isfile(os.path.join(entry, "openai.pt"))


# ------------------------------------------------------------- the probe
def test_retrieval_recall_by_hand():
    images = torch.eye(4)
    texts = torch.eye(4)[[0, 1, 3, 2]]  # captions 2 and 3 point at each other's image
    result = retrieval(images, texts, ks=(1, 2))
    assert result["text_to_image_R@1"] == 0.5 and result["image_to_text_R@1"] == 0.5
    assert result["chance_R@1"] == 0.25 and result["chance_R@2"] == 0.5


def test_colour_precision_by_hand():
    # 4 images along two axes; the 'red' query points at axis 0, 'blue' at axis 1
    images = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.1, 0.9], [0.0, 1.0]])
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = ["red", "blue", "blue", "blue"]
    out = colour_precision(images, queries, labels, ("red", "blue"), k=2)
    assert out["per_colour"]["red"] == {"precision": 0.5, "chance": 0.25, "images": 1}
    assert out["per_colour"]["blue"] == {"precision": 1.0, "chance": 0.75, "images": 3}
    assert out["colours_in_macro"] == 1 and out["macro_precision"] == 1.0  # red has < k images


def test_probe_runs_on_the_held_out_images(corpus, tmp_path):
    model = _trained("vit", corpus, tmp_path)
    torch.save(export_state_dict(model, "vit", (128, 64)), tmp_path / "w.pt")
    result = run_probe(SynthCLIPEncoder("vit", str(tmp_path / "w.pt")), corpus, k=5)
    assert result["retrieval"]["n"] == 12
    top = result["colour_probe"]["top"]["per_colour"]
    assert sum(v["images"] for v in top.values()) <= 12
    near = result["image_neighbours"]
    # 3 held-out people, 2 outfits each, 2 views an outfit: 1 of 11 others is the same outfit
    assert near["outfit"]["chance"] == round(1 / 11, 4)
    assert near["person, another outfit"]["chance"] == round(3 / 11 - 1 / 11, 4)


def test_default_settings_per_tower():
    assert default_settings("vit").steps == 1600 and default_settings("rn").steps == 1000
    assert default_settings("rn", lr=5e-4).lr == 5e-4
    with pytest.raises(ValueError, match="tower must be one of"):
        default_settings("vit-b")


def test_training_is_single_threaded_and_restores_the_thread_count(corpus, tmp_path):
    before = torch.get_num_threads()
    seen = []
    pretrain(
        corpus,
        _settings(steps=1, warmup_steps=0),
        str(tmp_path),
        log=lambda _: seen.append(torch.get_num_threads()),
    )
    assert seen == [1] and torch.get_num_threads() == before


@pytest.mark.slow
def test_towers_side_by_side_equal_the_towers_one_after_the_other(root, tmp_path):
    """Two spawned processes (each imports the package: ~10 s on a 2-core CPU)."""
    other = str(tmp_path / "other")
    ensure_corpus(other, "tiny", 0, workers=1)
    settings = {t: _settings(t, steps=3, seed=11) for t in ("vit", "rn")}
    side = ensure_synthclip_towers(root, ("vit", "rn"), settings, parallel=True)
    apart = ensure_synthclip_towers(other, ("vit", "rn"), settings, parallel=False)
    for tower in ("vit", "rn"):
        a, b = torch.load(side[tower]), torch.load(apart[tower])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), tower


def test_cache_key_records_the_cpu_kernels_and_threads(root, monkeypatch):
    s = _settings(steps=4)
    identity = cache_module.cache_identity(s)
    expected = "AVX2" if torch.cpu._is_avx2_supported() else identity["cpu"]["kernels"]
    assert identity["cpu"] == {"kernels": expected, "threads": 1}
    entry = synthclip_dir(root, s)
    monkeypatch.setattr(cache_module, "cpu_numerics", lambda: {"kernels": "AVX512", "threads": 1})
    assert synthclip_dir(root, s) != entry
    monkeypatch.setattr(cache_module, "cpu_numerics", lambda: {"kernels": expected, "threads": 2})
    assert synthclip_dir(root, s) != entry


@pytest.mark.slow
@pytest.mark.skipif(not torch.cpu._is_avx2_supported(), reason="needs a CPU with AVX2")
def test_a_process_on_other_kernels_and_threads_pretrains_the_same_weights(root, tmp_path):
    """A process that computes with other kernels (here: said to run AVX-512 ones) and two
    threads hands pretraining to a fresh process: the weights equal this process's own (AVX2
    kernels, one thread). One spawned process: ~10 s on a 2-core CPU."""
    other = str(tmp_path / "other")
    ensure_corpus(other, "tiny", 0, workers=1)
    s = _settings("rn", steps=3, seed=13)
    here = torch.load(ensure_synthclip(root, "rn", s, log=lambda _: None))
    logged = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
            elsewhere = torch.load(ensure_synthclip(other, "rn", s, log=logged.append))
    finally:
        torch.set_num_threads(before)
    assert any("in a fresh process (AVX2)" in line for line in logged)
    assert here.keys() == elsewhere.keys()
    assert all(torch.equal(here[k], elsewhere[k]) for k in here)


def _tool(name):
    path = os.path.join(ROOT, "tools", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pretrain_tool_reports_the_entry(root, capsys):
    tool = _tool("pretrain_clip")
    main = tool.main
    args = ["--root", root, "--tower", "vit", "--corpus", "tiny", "--steps", "2"]
    assert main([*args, "--warmup-steps", "1", "--batch-size", "8", "--seed", "21"]) == 0
    out = capsys.readouterr().out
    assert "SynthCLIP vit: " in out and "openai.pt" in out and '"steps": 2' in out
    assert tool.run(main, ["--root", root, "--warmup-steps", "5", "--steps", "5"]) == 2
    assert "warmup_steps" in capsys.readouterr().err


def test_loss_summary_by_hand():
    from csgn_plugin.pretraining.train import _loss_summary

    # losses 100, 99, ..., 1; windows of 5 steps (5% of 100)
    summary = _loss_summary([float(v) for v in range(100, 0, -1)])
    assert summary == {"first": 98.0, "last": 3.0, "at_25%": 78.0, "at_50%": 53.0, "at_75%": 28.0}


@pytest.mark.slow
def test_a_kill_9_mid_pretraining_resumes_to_the_uninterrupted_weights(root, tmp_path):
    """tools/pretrain_clip.py killed by SIGKILL after step 5 (checkpoints every 2 steps), run
    again: the weights equal an uninterrupted run's. Two subprocesses: ~15 s on a 2-core CPU."""
    import subprocess
    import sys

    tool = os.path.join(ROOT, "tools", "pretrain_clip.py")
    data = str(tmp_path / "data")
    ensure_corpus(data, "tiny", 0, workers=1)
    flags = ["--steps", "8", "--warmup-steps", "2", "--batch-size", "8", "--lr", "0.002"]
    command = [sys.executable, tool, "--root", data, "--tower", "vit", "--corpus", "tiny", *flags]
    command += ["--checkpoint-every", "2", "--seed", "7"]
    env = {**os.environ, "CSGN_FAULT_KILL": "pretrain_step:5"}
    killed = subprocess.run(command, env=env, capture_output=True, text=True)
    assert killed.returncode == -9, killed.stderr[-2000:]
    settings = _settings(seed=7)
    assert not os.path.exists(synthclip_dir(data, settings))
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming at step 4/8" in resumed.stdout
    straight = ensure_synthclip(str(tmp_path / "straight"), "vit", settings, log=lambda _: None)
    got = torch.load(os.path.join(synthclip_dir(data, settings), "openai.pt"))
    expected = torch.load(straight)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_image_neighbours_by_hand():
    # images 0 and 1 are each other's nearest; 2's nearest is 3, 3's nearest is 2
    images = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0], [0.1, 1.0]]), dim=1
    )
    keys = {"top": ["red", "red", "blue", None], "person": [0, 1, 2, 2]}
    out = neighbours(images, keys)
    # top: 0->1 red=red, 1->0 yes, 2->3 blue vs None no, 3->2 None never matches
    assert out["top"] == {"nearest_shares": 0.5, "chance": round(2 / 12, 4)}
    assert out["person"] == {"nearest_shares": 0.5, "chance": round(2 / 12, 4)}
