"""CAL under DDP (2 gloo processes on the CPU): the objective's clothes classifier lives outside
the DDP-wrapped model, so the runtime averages its gradients over the ranks before its step; the
cosine triplet's gallery is the whole global batch with only the rank's own share carrying
gradient (Simple-CCReID's GatherLayer); a step leaves every rank with the same weights."""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUTFITS = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)


def _same_on_every_rank(tensor):
    gathered = [torch.empty_like(tensor) for _ in range(2)]
    dist.all_gather(gathered, tensor.detach().contiguous())
    return torch.equal(gathered[0], gathered[1])


def _worker(rank, init_file):
    from csgn_plugin import builders
    from csgn_plugin.config import load_config
    from csgn_plugin.losses.cal import gallery_over_ranks
    from csgn_plugin.runtime import Runtime

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    runtime = Runtime(torch.device("cpu"), "off", False, rank, 2, (64, 32))

    # the mean over ranks of gradients DDP does not see
    params = [torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2))]
    for p in params:
        p.grad = torch.full_like(p, float(rank + 1))
    runtime.average_gradients(params)
    assert all(torch.equal(p.grad, torch.full_like(p, 1.5)) for p in params)

    # the gallery: both ranks' features in rank order, gradient only into this rank's own
    features = torch.full((2, 3), float(rank), requires_grad=True)
    gallery, labels = gallery_over_ranks(features, torch.tensor([rank, rank]))
    assert torch.equal(gallery.detach(), torch.tensor([[0.0] * 3] * 2 + [[1.0] * 3] * 2))
    assert torch.equal(labels, torch.tensor([0, 0, 1, 1]))
    (gallery * torch.arange(4.0)[:, None]).sum().backward()
    assert torch.equal(features.grad, torch.tensor([[2.0 * rank] * 3, [2.0 * rank + 1] * 3]))

    # one CAL step of a DDP-wrapped model, each rank on its own half of the batch
    cfg = load_config(
        os.path.join(ROOT, "configs", "synthcc_cal.yaml"),
        ["data.height", "64", "data.width", "32", "runtime.device", "cpu",
         "loss.cal.start_epoch_cc", "0", "loss.cal.start_epoch_adv", "0",
         "loss.cal.pair_weight", "1.0", "train.optim", "sgd", "train.lr", "0.1"],
    )  # fmt: skip
    data = SimpleNamespace(
        train_loader=SimpleNamespace(batch_size=4), test_loader={}, num_train_pids=3,
        identity_outfits=lambda: OUTFITS.clone(),
    )  # fmt: skip
    torch.manual_seed(0)  # the same initial weights on both ranks
    model = builders.build_model(cfg, data, use_gpu=False)
    optimizer = builders.build_optimizer(cfg, model)
    model = torch.nn.parallel.DistributedDataParallel(model)
    engine = builders.build_engine(cfg, data, model, optimizer, None, runtime)
    clothes = engine.objective.clothes_classifier.weight
    initial = clothes.detach().clone()
    model.train()
    g = torch.Generator().manual_seed(10 + rank)
    batch = {
        "img": torch.randn(4, 3, 64, 32, generator=g),
        "pid": torch.tensor([0, 0, 2, 2]) if rank == 0 else torch.tensor([1, 1, 0, 0]),
        "clothes_id": torch.tensor([0, 1, 3, 3]) if rank == 0 else torch.tensor([2, 2, 1, 0]),
        "camid": torch.zeros(4, dtype=torch.long),
    }
    for _ in range(2):
        losses = engine.forward_backward(batch)
    assert not _same_on_every_rank(losses["clothes"])  # each rank saw its own images
    assert not torch.equal(clothes.detach(), initial)
    assert _same_on_every_rank(clothes)
    for param in model.module.parameters():
        assert _same_on_every_rank(param)
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_stay_identical_through_cal_steps(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"),), nprocs=2, join=True)
