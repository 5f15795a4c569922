import pytest
import torch

from csgn_plugin import builders
from csgn_plugin.config import load_config
from csgn_plugin.modeling import build_model_from_config


def tiny_csgn_cfg(*opts):
    return load_config(
        "",
        [
            "model.name", "csgn", "clip.vit_arch", "csgn-tiny-vit", "clip.resnet_arch",
            "csgn-tiny-rn", "train.lr", "0.01", "train.bias_lr_factor", "2.0", *opts,
        ],
    )  # fmt: skip


@pytest.mark.parametrize("optim", ["adam", "amsgrad", "adamw", "sgd", "rmsprop"])
def test_every_trainable_parameter_is_in_exactly_one_group(optim):
    cfg = tiny_csgn_cfg("train.optim", optim)
    model = build_model_from_config(cfg, num_classes=5, num_cameras=2)
    model.set_stage(2)
    optimizer = builders.build_optimizer(cfg, model, use_gpu=False)
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
        load_config("", ["train.optim", "amsgrad", "adam.beta2", "0.99"]), model, use_gpu=False
    )
    assert type(amsgrad) is torch.optim.Adam
    assert amsgrad.defaults["amsgrad"] is True and amsgrad.defaults["betas"] == (0.9, 0.99)
    assert builders.build_optimizer(load_config(""), model, False).defaults["amsgrad"] is False
    cfg = load_config("", ["train.optim", "rmsprop", "sgd.momentum", "0.5", "rmsprop.alpha", "0.9"])
    rmsprop = builders.build_optimizer(cfg, model, use_gpu=False)
    assert type(rmsprop) is torch.optim.RMSprop
    assert (rmsprop.defaults["momentum"], rmsprop.defaults["alpha"]) == (0.5, 0.9)
    with pytest.raises(ValueError, match="train.optim.*did you mean 'amsgrad'"):
        builders.check_config(load_config("", ["train.optim", "amsgard"]))


def test_schedule_warms_up_then_decays():
    cfg = load_config(
        "",
        ["train.warmup_epochs", "2", "train.warmup_factor", "0.1", "train.lr_scheduler",
         "multi_step", "train.stepsize", "[4, 6]", "train.gamma", "0.1"],
    )  # fmt: skip
    factors = [builders.lr_factor(cfg, e) for e in range(8)]
    assert factors == pytest.approx([0.1, 0.55, 1, 1, 0.1, 0.1, 0.01, 0.01])
    cosine = load_config("", ["train.lr_scheduler", "cosine", "train.max_epoch", "4"])
    assert [builders.lr_factor(cosine, e) for e in (0, 2, 4)] == pytest.approx([1, 0.5, 0])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], lr=1.0)
    scheduler = builders.build_scheduler(cfg, opt)
    for _ in range(4):
        opt.step()
        scheduler.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1)


def test_engine_reports_the_configured_lr_not_the_bias_lr():
    from types import SimpleNamespace

    from csgn_plugin.engine.engine import CCEngine

    cfg = tiny_csgn_cfg()
    model = build_model_from_config(cfg, num_classes=5, num_cameras=2)
    model.set_stage(2)
    optimizer = builders.build_optimizer(cfg, model, use_gpu=False)
    data = SimpleNamespace(train_loader=None, test_loader={})
    engine = CCEngine(data, model, optimizer)
    assert engine.get_current_lr() == pytest.approx(0.01)  # train.lr; biases run at 0.02


def test_stage1_cosine_warms_up_then_ends_at_lr_min():
    from csgn_plugin.engine.stages import cosine_with_warmup

    lr, lr_min = 3.5e-4, 1e-6
    lrs = [lr * cosine_with_warmup(e, 10, 2, 0.1, floor=lr_min / lr) for e in (0, 1, 2, 6, 10)]
    # warm-up 0.1 -> 1 over 2 epochs; cosine from lr at epoch 2 to lr_min at epoch 10
    assert lrs == pytest.approx([3.5e-5, 1.925e-4, 3.5e-4, (lr + lr_min) / 2, lr_min])
    with pytest.raises(ValueError, match="stage1.lr_min"):
        builders.check_config(load_config("", ["stage1.lr_min", "0.1"]), world_size=1)
