import pytest

from csgn_plugin.config import ConfigError, get_default_config, load_config

# Every key of upstream deep-person-reid's scripts/default_config.py, written out by hand: an
# existing torchreid config must keep loading.
TORCHREID_KEYS = """
model.name model.pretrained model.load_weights model.resume
data.type data.root data.sources data.targets data.workers data.split_id data.height data.width
data.combineall data.transforms data.k_tfm data.norm_mean data.norm_std data.save_dir
data.load_train_targets market1501.use_500k_distractors cuhk03.labeled_images
cuhk03.classic_split cuhk03.use_metric_cuhk03 sampler.train_sampler sampler.train_sampler_t
sampler.num_instances sampler.num_cams sampler.num_datasets video.seq_len video.sample_method
video.pooling_method train.optim train.lr train.weight_decay train.max_epoch train.start_epoch
train.batch_size train.fixbase_epoch train.open_layers train.staged_lr train.new_layers
train.base_lr_mult train.lr_scheduler train.stepsize train.gamma train.print_freq train.seed
sgd.momentum sgd.dampening sgd.nesterov rmsprop.alpha adam.beta1 adam.beta2 loss.name
loss.softmax.label_smooth loss.triplet.margin loss.triplet.weight_t loss.triplet.weight_x
test.batch_size test.dist_metric test.normalize_feature test.ranks test.evaluate test.eval_freq
test.start_eval test.rerank test.visrank test.visrank_topk
""".split()


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


def test_all_torchreid_keys_exist():
    cfg = get_default_config()
    for key in TORCHREID_KEYS:
        _get(cfg, key)


def test_a_torchreid_config_file_loads(tmp_path):
    path = tmp_path / "market.yaml"
    path.write_text(
        "model:\n  name: resnet50\n  pretrained: false\n"
        "data:\n  sources: ['market1501']\n  targets: ['market1501']\n  height: 256\n"
        "loss:\n  name: triplet\n  triplet:\n    weight_x: 1.0\n"
        "train:\n  lr: 0.00035\n  stepsize: [40, 70]\n"
    )
    cfg = load_config(str(path), ["train.max_epoch", "7"])
    assert cfg.model.name == "resnet50"
    assert cfg.loss.triplet.weight_x == 1.0
    assert cfg.train.stepsize == [40, 70]
    assert cfg.train.max_epoch == 7
    assert cfg.is_frozen()


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  max_epochs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert str(path) in msg and "train.max_epochs" in msg and "train.max_epoch" in msg


def test_unknown_section_on_command_line():
    with pytest.raises(ConfigError, match=r"'tran.lr'.*did you mean 'train.lr'"):
        load_config("", ["tran.lr", "0.1"])


def test_wrong_type_and_odd_overrides():
    with pytest.raises(ConfigError, match="train.lr"):
        load_config("", ["train.lr", "fast"])
    with pytest.raises(ConfigError, match="KEY VALUE"):
        load_config("", ["train.lr"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "broken.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml"):
        load_config(str(bad))
