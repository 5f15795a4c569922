"""The CUDA runtime paths (skipped without a GPU): both CSGN stages under bf16 and under fp16 with
a gradient scaler, stage 1 under fp16 against fp32, channels_last + torch.compile, and NCCL DDP
(skipped with fewer than 2 GPUs).

    python -m pytest -q -m cuda      # on a machine with a GPU
"""

import glob
import os

import pytest
import torch
from run_helpers import checkpoint, opts, run_torchrun
from stage_helpers import SIZE, memory_data, run_prompt_stage, tiny_cfg, tiny_model

from csgn_plugin.data.synth import ensure_synthcc
from csgn_plugin.launcher import main
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


def test_stage_one_under_fp16_matches_fp32():
    """The prompt stage (4 epochs, 32 images of 8 ids) under fp16 with its scaler learns what it
    learns in fp32: the same loss per epoch within fp16's tolerance, the prompts moved the same
    way. (On the CPU, fp16 autocast gives losses within 5e-4 and moves with cosine 0.9998.)"""
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
