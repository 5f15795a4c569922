import pytest
import torch

from csgn_plugin import builders, checks
from csgn_plugin.builders import build_clip_model as build_model_from_config
from csgn_plugin.config import load_config


def tiny_csgn_cfg(*opts):
    return load_config(
        "",
        [
            "model.name", "csgn", "clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch",
            "csgn-tiny-rn", "train.lr", "0.01", "train.bias_lr_factor", "2.0", *opts,
        ],
    )  # fmt: skip


@pytest.mark.parametrize("optim", ["adam", "adamw", "sgd"])
def test_every_trainable_parameter_is_in_exactly_one_group(optim):
    cfg = tiny_csgn_cfg("train.optim", optim)
    model = build_model_from_config(cfg, num_classes=5, num_cameras=2)
    model.set_stage(2)
    optimizer = builders.build_optimizer(cfg, model)
    grouped = [p for g in optimizer.param_groups for p in g["params"]]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(grouped) == len({id(p) for p in grouped})  # no parameter twice
    assert {id(p) for p in grouped} == {id(p) for p in trainable}  # none left out
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    attention_bias = [n for n in names if n.endswith("in_proj_bias") and names[n].requires_grad]
    assert attention_bias  # the ViT's attention biases are trained in stage 2 ...
    for name in attention_bias + [
        n for n in names if n.endswith(".bias") and names[n].requires_grad
    ]:
        assert lrs[id(names[name])] == pytest.approx(0.02)  # ... at the bias lr, as CLIP-ReID
    weight = next(n for n in names if n.endswith(".weight") and names[n].requires_grad)
    assert lrs[id(names[weight])] == pytest.approx(0.01)


def test_torchreid_optimizer_names_keep_torchreid_meaning():
    # torchreid's build_optimizer: 'amsgrad' is Adam with amsgrad on; 'rmsprop' takes the sgd
    # momentum and rmsprop.alpha
    model = torch.nn.Linear(3, 2)
    amsgrad = builders.build_optimizer(
        load_config("", ["train.optim", "amsgrad", "adam.beta2", "0.99"]), model
    )
    assert type(amsgrad) is torch.optim.Adam
    assert amsgrad.defaults["amsgrad"] is True and amsgrad.defaults["betas"] == (0.9, 0.99)
    assert builders.build_optimizer(load_config(""), model).defaults["amsgrad"] is False
    cfg = load_config("", ["train.optim", "rmsprop", "sgd.momentum", "0.5", "rmsprop.alpha", "0.9"])
    rmsprop = builders.build_optimizer(cfg, model)
    assert type(rmsprop) is torch.optim.RMSprop
    assert (rmsprop.defaults["momentum"], rmsprop.defaults["alpha"]) == (0.5, 0.9)
    with pytest.raises(ValueError, match="train.optim.*did you mean 'amsgrad'"):
        checks.check_config(load_config("", ["train.optim", "amsgard"]))


def test_engine_reports_the_configured_lr_not_the_bias_lr():
    from types import SimpleNamespace

    cfg = tiny_csgn_cfg()
    model = build_model_from_config(cfg, num_classes=5, num_cameras=2)
    model.set_stage(2)
    optimizer = builders.build_optimizer(cfg, model)
    data = SimpleNamespace(train_loader=None, test_loader={})
    runtime = builders.build_runtime(cfg, use_gpu=False)
    engine = builders.build_engine(cfg, data, model, optimizer, None, runtime)
    assert engine.get_current_lr() == pytest.approx(0.01)  # train.lr; biases run at 0.02


def test_csgn_part_factors_and_bias_factor_multiply():
    cfg = tiny_csgn_cfg(
        "csgn.vit_lr_factor", "0.5", "csgn.resnet_lr_factor", "4.0", "csgn.fusion_lr_factor",
        "10.0", "csgn.head_lr_factor", "3.0",
    )  # fmt: skip
    model = build_model_from_config(cfg, num_classes=5, num_cameras=2)
    optimizer = builders.build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    expected = {  # name -> train.lr (0.01) x part factor x bias factor (2)
        "vss.vit.conv1.weight": 0.01 * 0.5,
        "vss.vit.transformer.resblocks.0.attn.in_proj_bias": 0.01 * 0.5 * 2,
        "vss.resnet.conv1.weight": 0.01 * 4.0,
        "vss.fusion.linear.weight": 0.01 * 10.0,
        "vss.fusion.linear.bias": 0.01 * 10.0 * 2,
        "vss.necks.proj.weight": 0.01 * 3.0,
        "vss.classifiers.local.weight": 0.01 * 3.0,
    }
    for name, lr in expected.items():
        assert lrs[id(names[name])] == pytest.approx(lr), name
    # the ViT's biases (0.5 x 2) share train.lr's group, which comes first (the engine logs it)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)


def test_torchreid_staged_lr_gives_new_layers_the_base_lr():
    cfg = load_config(
        "",
        ["model.name", "osnet_x0_25", "train.lr", "0.1", "train.staged_lr", "True",
         "train.new_layers", "['classifier']", "train.base_lr_mult", "0.1"],
    )  # fmt: skip
    from csgn_plugin.compat import torchreid_api

    model = torchreid_api().models.build_model("osnet_x0_25", num_classes=5, pretrained=False)
    optimizer = builders.build_optimizer(cfg, model)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for name, param in model.named_parameters():
        expected = 0.1 if name.startswith("classifier.") else 0.01
        assert lrs[id(param)] == pytest.approx(expected), name
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    bad = load_config("", ["model.name", "osnet_x0_25", "train.staged_lr", "True",
                           "train.new_layers", "['clasifier']"])  # fmt: skip
    with pytest.raises(ValueError, match=r"train\.new_layers \['clasifier'\]"):
        builders.build_optimizer(bad, model)
