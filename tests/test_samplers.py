from collections import Counter

import pytest

from csgn_plugin.data.samplers import (
    ClothesIdentitySampler,
    RandomIdentitySampler,
    RandomSampler,
    SeededDataset,
    build_sampler,
)


def make_items(num_ids=8, outfits=2, per_outfit=4):
    """(path, pid, camid, dsetid, clothes_id); clothes ids are global over (pid, outfit)."""
    items = []
    for pid in range(num_ids):
        for outfit in range(outfits):
            for k in range(per_outfit):
                items.append((f"{pid}_{outfit}_{k}.png", pid, k % 3, 0, pid * outfits + outfit))
    return items


def batches(sampler, per_batch):
    indices = [index for index, _ in sampler]
    return [indices[i : i + per_batch] for i in range(0, len(indices), per_batch)]


def test_identity_batches_hold_p_ids_with_k_instances():
    items = make_items()
    sampler = RandomIdentitySampler(items, batch_size=16, num_instances=4, seed=1)
    out = batches(sampler, 16)
    assert len(out) == sampler.num_batches() > 0
    for batch in out:
        pids = [items[i][1] for i in batch]
        groups = [pids[i : i + 4] for i in range(0, 16, 4)]
        assert all(len(set(g)) == 1 for g in groups)  # each K-group is one identity
        assert len({g[0] for g in groups}) == 4  # P = 4 distinct identities


def test_clothes_sampler_spreads_each_group_over_outfits():
    items = make_items(outfits=2, per_outfit=4)
    sampler = ClothesIdentitySampler(items, batch_size=16, num_instances=4, seed=3)
    for batch in batches(sampler, 16):
        for i in range(0, 16, 4):
            clothes = Counter(items[j][4] for j in batch[i : i + 4])
            assert sorted(clothes.values()) == [2, 2]  # 2 outfits, round-robin: 2 + 2


def test_epochs_are_deterministic_and_differ():
    items = make_items()
    a = ClothesIdentitySampler(items, 16, 4, seed=5)
    b = ClothesIdentitySampler(items, 16, 4, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b)
    b.set_epoch(3)
    assert [i for i, _ in a] != [i for i, _ in b]


def test_resume_skips_exactly_the_batches_already_run():
    items = make_items()
    full = RandomSampler(items, batch_size=8, seed=0)
    full.set_epoch(4)
    resumed = RandomSampler(items, batch_size=8, seed=0)
    resumed.set_epoch(4, start_batch=3)
    assert list(resumed) == list(full)[3 * 8 :]
    assert len(resumed) == len(full) - 3 * 8


def test_ranks_take_disjoint_slices_of_the_same_global_batches():
    items = make_items()
    single = list(ClothesIdentitySampler(items, 16, 4, seed=9))
    ranks = [
        list(ClothesIdentitySampler(items, 16, 4, seed=9, rank=r, world_size=2)) for r in (0, 1)
    ]
    per_rank = 8
    for b in range(len(single) // 16):
        merged = (
            ranks[0][b * per_rank : (b + 1) * per_rank]
            + ranks[1][b * per_rank : (b + 1) * per_rank]
        )
        assert merged == single[b * 16 : (b + 1) * 16]  # same indices and the same sample seeds


def test_sample_seeds_are_unique_within_an_epoch():
    sampler = RandomIdentitySampler(make_items(), 16, 4, seed=0)
    seeds = [seed for _, seed in sampler]
    assert len(set(seeds)) == len(seeds)


def test_bad_sampler_settings_are_refused():
    items = make_items(num_ids=3)
    with pytest.raises(ValueError, match="multiple of sampler.num_instances"):
        RandomIdentitySampler(items, batch_size=10, num_instances=4)
    with pytest.raises(ValueError, match="needs 4 identities"):
        RandomIdentitySampler(items, batch_size=16, num_instances=4)
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        RandomSampler(items, batch_size=9, world_size=2)
    with pytest.raises(ValueError, match="unknown sampler"):
        build_sampler("Nope", items, 8)


def test_seeded_dataset_makes_augmentation_a_function_of_the_seed():
    import random

    import torch

    class Noisy:
        def __len__(self):
            return 1

        def __getitem__(self, index):
            return (random.random(), torch.rand(1).item())

    ds = SeededDataset(Noisy())
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    first = ds[(0, 1234)]
    after = torch.rand(1)
    assert ds[(0, 1234)] == first and ds[(0, 99)] != first
    assert torch.equal(before, after)  # the caller's generator is untouched
