"""Shared helpers of the tests that run CSGN's prompt stage on images held in memory (no data
set, no launcher); holds no test itself.

The model is the main job's config with random tiny towers at 64x32; the prompt stage is the one
``builders`` makes from that config, run through its real ``run`` and ``attach`` with a
:class:`~csgn_plugin.engine.stages.StageContext` whose data manager serves the given images.
"""

import copy
import os
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader

from csgn_plugin import builders
from csgn_plugin.builders import build_clip_model
from csgn_plugin.config import load_config
from csgn_plugin.engine.stages import StageContext
from csgn_plugin.runtime import Runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# random tiny towers instead of the main job's SynthCLIP (which pretrains for minutes)
TINY = [
    "model.pretrained", "False", "clip.vit_arch", "csgn-tiny-vit",
    "clip.resnet_arch", "csgn-tiny-rn", "data.height", "64", "data.width", "32",
]  # fmt: skip
SIZE = (64, 32)


def tiny_cfg(*opts):
    return load_config(os.path.join(ROOT, "configs", "csgn_synthcc.yaml"), [*TINY, *opts])


def tiny_model(cfg, num_ids, seed=0):
    torch.manual_seed(seed)
    return build_clip_model(cfg, num_classes=num_ids, num_cameras=2)


def memory_data(imgs, pids):
    """A data manager whose stage-1 feature loader serves ``imgs`` (normalised) in order."""
    items = [
        {"img": img, "pid": int(pid), "camid": i % 2}
        for i, (img, pid) in enumerate(zip(imgs, pids))
    ]
    return SimpleNamespace(
        train_loader_for_features=lambda batch_size: DataLoader(items, batch_size=batch_size)
    )


def normalise(raw, cfg):
    """Images in [0, 1] -> the normalised batches the model gets (``data.norm_mean/std``)."""
    mean = torch.tensor(cfg.data.norm_mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.data.norm_std).view(1, 3, 1, 1)
    return (raw - mean) / std


def run_prompt_stage(cfg, model, data, runtime=None, state=None):
    """Build the prompt stage of ``cfg`` (its bank goes to the built objective), optionally
    restore ``state``, run it and attach it. Returns ``(stage, objective, history)``:
    ``history['loss']`` the stage-1 losses per epoch, ``history['saved']`` a copy of the stage's
    state and of the prompts at every checkpoint it asked for (every epoch)."""
    if runtime is None:
        runtime = Runtime(torch.device("cpu"), "off", False, 0, 1, SIZE)
    objective = builders.build_objective(cfg, model, data)
    stage = builders.build_stages(cfg, model, objective)[0]
    if state is not None:
        stage.load_state_dict(state)
    history = {"loss": [], "saved": []}

    def save():
        prompts = copy.deepcopy(model.prompt_learner.state_dict())
        history["saved"].append((copy.deepcopy(stage.state_dict()), prompts))

    def record(key, step, value):
        if key == "stage1/loss":
            history["loss"].append(value)

    context = StageContext(runtime, model, data, save, record, 1)
    stage.run(context)
    stage.attach(context)
    return stage, objective, history
