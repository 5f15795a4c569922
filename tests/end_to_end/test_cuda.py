"""The CUDA runtime paths (skipped without a GPU): both CSGN stages under bf16 and under fp16 with
a gradient scaler, stage 1 under fp16 against fp32, channels_last + torch.compile, CUDA graphs (the
stage-2 step, extraction and stage 1's text passes against their eager paths; a whole run with
graphs and images decoded once on the device), and NCCL DDP (skipped with fewer than 2 GPUs).

    python -m pytest -q -m cuda      # on a machine with a GPU
"""

import glob
import json
import os
from types import SimpleNamespace

import pytest
import torch
from run_helpers import CSGN, checkpoint, opts, run_torchrun
from stage_helpers import SIZE, memory_data, run_prompt_stage, tiny_cfg, tiny_model

from csgn_plugin import builders
from csgn_plugin.config import load_config
from csgn_plugin.data.image_cache import CachedTrainLoader
from csgn_plugin.data.synth import ensure_synthcc
from csgn_plugin.graphs import GraphedModule
from csgn_plugin.launcher import main
from csgn_plugin.losses import MutualLoss
from csgn_plugin.runtime import Runtime

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def cuda_opts(tmp_path, save, model="csgn", *extra):
    return opts(tmp_path / "data", save, model, "runtime.device", "cuda", *extra)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_csgn_trains_both_stages_on_cuda(tmp_path, amp):
    engine = main(cuda_opts(tmp_path, tmp_path / amp, "csgn", "runtime.amp", amp))
    assert engine.runtime.amp == amp
    assert (engine.scaler is not None) == (amp == "fp16")
    assert next(engine.unwrapped_model.parameters()).is_cuda
    losses = [v for key in ("Train/hsf", "Train/id") for _, v in engine.history[key]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}
    # the saved weights are the trained ones, on the CPU-loadable checkpoint
    saved = checkpoint(tmp_path / amp)["state_dict"]
    live = engine.unwrapped_model.state_dict()
    for key in ("vss.resnet.bn1.weight", "prompt_learner.ctx.rgb"):
        torch.testing.assert_close(saved[key].float().cpu(), live[key].float().cpu())
    assert os.path.isfile(tmp_path / amp / "throughput.json")


class CountingScaler(torch.amp.GradScaler):
    steps = 0

    def step(self, optimizer, *args, **kwargs):
        CountingScaler.steps += 1
        return super().step(optimizer, *args, **kwargs)


def test_stage_one_under_fp16_matches_fp32(monkeypatch):
    """The prompt stage (4 epochs, 32 images of 8 ids) under fp16 with its scaler learns what it
    learns in fp32: the same loss per epoch within fp16's tolerance, the prompts moved the same
    way, every step through the scaler. The scaler starts at 2**10: from PyTorch's default 2**16
    the first steps overflow in fp16 and are skipped while the scale falls (4 steps here, this
    tiny problem's whole first epoch: seen on an H200), a change of schedule, not of precision.
    (The same test with CPU autocast: losses within 2e-4 relative, moves with cosine 0.9998.)"""

    def make_scaler(runtime):
        return CountingScaler("cuda", init_scale=2.0**10) if runtime.amp == "fp16" else None

    monkeypatch.setattr(Runtime, "make_scaler", make_scaler)
    CountingScaler.steps = 0
    cfg = tiny_cfg("stage1.max_epoch", "4", "stage1.batch_size", "8", "stage1.warmup_epochs", "1")
    g = torch.Generator().manual_seed(3)
    imgs, pids = torch.randn(32, 3, *SIZE, generator=g), torch.arange(32) % 8
    losses, moves = {}, {}
    for amp in ("off", "fp16"):
        model = tiny_model(cfg, num_ids=8).cuda()
        before = {m: model.prompt_learner.ctx[m].detach().clone() for m in model.modalities}
        runtime = Runtime(torch.device("cuda"), amp, False, 0, 1, SIZE)
        _, _, history = run_prompt_stage(cfg, model, memory_data(imgs, pids), runtime)
        losses[amp] = torch.tensor(history["loss"])
        moves[amp] = torch.cat(
            [(model.prompt_learner.ctx[m].detach() - before[m]).flatten() for m in before]
        ).cpu()
    assert CountingScaler.steps == 16  # 4 epochs x 4 steps of the fp16 run
    assert losses["off"][-1] < 0.9 * losses["off"][0]  # the prompts learned something
    torch.testing.assert_close(losses["fp16"], losses["off"], rtol=1e-2, atol=0)
    cosine = torch.nn.functional.cosine_similarity(moves["fp16"], moves["off"], dim=0)
    assert cosine > 0.99, float(cosine)
    assert (moves["fp16"] - moves["off"]).norm() < 0.1 * moves["off"].norm()


def test_baseline_trains_with_channels_last_and_compile(tmp_path):
    extra = ["runtime.channels_last", "True", "runtime.compile", "True", "train.max_epoch", "1"]
    engine = main(cuda_opts(tmp_path, tmp_path / "compiled", "osnet", *extra))
    assert engine.runtime.channels_last
    assert hasattr(engine.model, "_orig_mod")  # the compiled wrapper trained
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs")
def test_two_process_nccl_ddp_trains_and_evaluates(tmp_path):
    ensure_synthcc(str(tmp_path / "data"), "tiny", 0)
    save = tmp_path / "ddp"
    proc = run_torchrun(cuda_opts(tmp_path, save, "csgn", "train.max_epoch", "1"), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = open(glob.glob(str(save / "train.log-*"))[0]).read()
    assert "synthcc         CC" in text
    assert os.path.isfile(save / "checkpoints" / "last.pth")


def tiny_cuda_setup(amp="off", graphs=False):
    """A tiny CSGN on the GPU with its stage-2 engine (text bank attached), as bench_train makes
    it; ``graphs``: the model wrapped for CUDA graphs. SGD: an update proportional to the
    gradient, so that kernels summing in another order (atomics) cannot flip an Adam step."""
    cfg = load_config(
        os.path.join(os.path.dirname(__file__), "..", "..", "configs", "csgn_synthcc.yaml"),
        [*CSGN, "runtime.device", "cuda", "runtime.amp", amp, "data.height", "64",
         "data.width", "32", "train.batch_size", "16", "train.optim", "sgd"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = builders.build_clip_model(cfg, num_classes=8).cuda()
    runtime = builders.build_runtime(cfg, True)
    runtime.graphs = graphs
    stepped = runtime.graphed(model, "stage2")
    optimizer = builders.build_optimizer(cfg, model)
    data = SimpleNamespace(train_loader=SimpleNamespace(batch_size=16), test_loader={})
    engine = builders.build_engine(cfg, data, stepped, optimizer, None, runtime)
    with torch.no_grad():
        ids = torch.arange(8, device="cuda")
        bank = {m: model.prompt_features(ids, m).float() for m in model.modalities}
    engine.objective.set_text_bank(bank)
    return cfg, model, engine


def batch(step):
    g = torch.Generator(device="cuda").manual_seed(step)
    return {
        "img": torch.randn(16, 3, 64, 32, device="cuda", generator=g),
        "pid": torch.arange(16, device="cuda") // 4 + (step % 2) * 4,
        "camid": torch.zeros(16, dtype=torch.long, device="cuda"),
    }


def test_graphed_stage2_steps_give_the_eager_losses_and_weights():
    _, eager_model, eager = tiny_cuda_setup()
    _, graphed_model, graphed = tiny_cuda_setup(graphs=True)
    graphed_model.load_state_dict(eager_model.state_dict())
    assert isinstance(graphed.model, GraphedModule)
    for step in range(4):  # the first captures, the others replay
        want, got = eager.forward_backward(batch(step)), graphed.forward_backward(batch(step))
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-5)
    assert graphed.runtime.throughput.phases["stage2_graph_capture"][0] == 1
    # weights and BatchNorm statistics; cuDNN convolutions run in TF32 by default and the captured
    # pass may pick other algorithms than the eager one: 4 steps leave differences of ~3e-5
    for key, value in eager_model.state_dict().items():
        torch.testing.assert_close(graphed_model.state_dict()[key], value, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("amp", ["off", "bf16"])
def test_graphed_extraction_gives_the_eager_features(amp):
    _, model, engine = tiny_cuda_setup(amp, graphs=True)
    model.eval()
    images = batch(0)["img"]
    with torch.no_grad(), engine.runtime.autocast():
        for size in (16, 16, 5):  # capture, replay, a smaller batch padded into the graph
            want = model(images[:size], None)
            got = engine.model(images[:size])  # as the evaluator calls it: tensors only
            assert got.shape == want.shape
            torch.testing.assert_close(got.float(), want.float(), rtol=1e-3, atol=1e-3)
    assert engine.runtime.throughput.phases["eval_graph_capture"][0] == 1


def test_graphed_stage1_text_passes_give_the_eager_loss_and_gradients():
    cfg, model, engine = tiny_cuda_setup(graphs=True)
    model.set_stage(1)
    stage = engine.stages[0]
    text_pass, slots = stage.graphed_text_passes(engine.runtime, model)
    assert slots == 8  # min(stage1.batch_size, identities)
    criterion = MutualLoss(cross_modal_weight=0.0)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(8, (40,), generator=g)
    cached = {m: torch.randn(40, model.embed_dim, device="cuda") for m in model.modalities}
    prompts = [p for p in model.parameters() if p.requires_grad]
    for start in (0, 16, 32):  # capture, replay, a partial batch (same slots)
        index = torch.arange(start, min(start + 16, 40))
        # one pass at a time, as training runs them: an autograd graph still alive during a
        # capture (an eager loss not yet backpropagated) breaks it (its gradient accumulators
        # live on the other stream)
        graphed = stage.step_loss(model, criterion, cached, labels, index, text_pass, slots)
        graphed_grads = torch.autograd.grad(graphed, prompts)
        eager = stage.step_loss(model, criterion, cached, labels, index)
        eager_grads = torch.autograd.grad(eager, prompts)
        torch.testing.assert_close(graphed, eager, rtol=1e-4, atol=1e-4)
        for got, want in zip(graphed_grads, eager_grads):
            torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()))
    # one graph for both modalities, captured (not left eager after a failed capture), replayed
    assert engine.runtime.throughput.phases["stage1_graph_capture"][0] == 1


def test_a_run_with_graphs_and_images_decoded_on_the_device(tmp_path):
    extra = ["runtime.compile", "graphs", "data.cache", "auto", "train.max_epoch", "2"]
    engine = main(cuda_opts(tmp_path, tmp_path / "graphs", "csgn", *extra))
    assert isinstance(engine.model, GraphedModule) and engine.runtime.graphs
    loader = engine.datamanager.train_loader
    assert isinstance(loader, CachedTrainLoader) and loader.dataset.images[0].is_cuda
    phases = json.loads((tmp_path / "graphs" / "throughput.json").read_text())
    for phase in ("data_decode_img", "stage1_graph_capture", "stage2_graph_capture"):
        assert phase in phases
    losses = [v for key in ("Train/hsf", "Train/id") for _, v in engine.history[key]]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert set(engine.last_results["synthcc"]) == {"general", "cc", "sc"}
    # the checkpoint holds the model's own keys, not the wrapper's
    saved = checkpoint(tmp_path / "graphs")["state_dict"]
    assert "vss.resnet.bn1.weight" in saved and not any(k.startswith("module.") for k in saved)
