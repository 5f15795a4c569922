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


# CLIP-ReID's RandomIdentitySampler (datasets/sampler.py of Syliz517/CLIP-ReID; torchreid's is
# the same), written out: per epoch, each id's images are shuffled and cut into groups of K, the
# remainder dropped; an id with fewer than K images gives one group of K draws with replacement
# from its images. While at least P ids still hold groups, P of them are drawn at random and each
# gives its next group; an id leaves when its groups run out.
def items_with_counts(counts):
    """(path, pid, camid, dsetid, clothes_id) with counts[pid] images of id pid."""
    return [(f"{pid}_{i}.png", pid, 0, 0, pid) for pid, n in enumerate(counts) for i in range(n)]


def identity_epoch(sampler, items, p, k):
    """The epoch's batches, checked for P distinct ids x K instances, and the used groups."""
    out = batches(sampler, p * k)
    used = Counter()
    for batch in out:
        assert len(batch) == p * k
        groups = [batch[i : i + k] for i in range(0, p * k, k)]
        ids = [{items[j][1] for j in g} for g in groups]
        assert all(len(s) == 1 for s in ids)  # one id per K-group
        assert len({s.pop() for s in ids}) == p  # no id twice in a batch
        used.update(items[g[0]][1] for g in groups)
    return out, used


def test_identity_epoch_follows_clipreid_rules():
    k, p = 4, 4
    counts = [9, 4, 13, 2, 1, 8, 5, 12, 3, 7, 16, 6]  # 9 -> 2 groups (1 dropped), 2 -> 1 group
    items = items_with_counts(counts)
    groups_of = [max(n, k) // k for n in counts]
    for epoch in range(30):
        sampler = RandomIdentitySampler(items, batch_size=p * k, num_instances=k, seed=7)
        sampler.set_epoch(epoch)
        out, used = identity_epoch(sampler, items, p, k)
        assert len(out) == sampler.num_batches()
        left = [pid for pid, g in enumerate(groups_of) if used[pid] < g]
        assert all(used[pid] <= g for pid, g in enumerate(groups_of))
        assert len(left) < p  # the epoch ends when fewer than P ids hold a group
        assert sum(used.values()) == len(out) * p
        seen = Counter(i for batch in out for i in batch)
        for index, times in seen.items():
            if counts[items[index][1]] >= k:
                assert times == 1  # an id's groups are disjoint within an epoch


def test_identity_epoch_length_when_every_batch_needs_every_id():
    # P ids exactly: every batch takes a group of each, so the epoch has min(groups) batches
    items = items_with_counts([8, 12, 9, 11])  # 2, 3, 2, 2 groups
    sampler = RandomIdentitySampler(items, batch_size=16, num_instances=4, seed=0)
    assert sampler.num_batches() == 2
    items = items_with_counts([8, 12, 9, 3])  # the 3-image id gives one group
    assert RandomIdentitySampler(items, batch_size=16, num_instances=4).num_batches() == 1


def test_ids_with_fewer_than_k_images_are_drawn_with_replacement():
    items = items_with_counts([2, 4, 4, 4])
    single, draws = 0, 200
    for epoch in range(draws):
        sampler = RandomIdentitySampler(items, batch_size=16, num_instances=4, seed=1)
        sampler.set_epoch(epoch)
        (batch,) = batches(sampler, 16)
        group = [i for i in batch if items[i][1] == 0]
        assert len(group) == 4 and set(group) <= {0, 1}
        single += len(set(group)) == 1
    # 4 draws with replacement from 2 images are all the same image with probability 2 / 16:
    # binomial(200, 1/8), mean 25, sd 4.7 (topping up the two images could never give this)
    assert 10 <= single <= 42


def test_identity_batches_order_ids_at_random():
    items = items_with_counts([4] * 8)
    orders = set()
    for epoch in range(20):
        sampler = RandomIdentitySampler(items, batch_size=16, num_instances=4, seed=2)
        sampler.set_epoch(epoch)
        for batch in batches(sampler, 16):
            orders.add(tuple(items[i][1] for i in batch[::4]))
    assert any(list(o) != sorted(o) for o in orders)


def test_group_shuffle_epoch_uses_every_group_once_as_simple_ccreid():
    """Simple-CCReID's epoch (data/samplers.py, DistributedRandomIdentitySampler.__iter__): each
    id's images shuffled and cut into K-groups (fewer than K: K draws with replacement), all
    groups shuffled together, batches of B / K consecutive groups, the partial one dropped."""
    k, per_batch = 4, 3
    counts = [9, 4, 13, 2, 1, 8, 5, 12, 3, 7]  # groups: 2 1 3 1 1 2 1 3 1 1 = 16 -> 5 batches
    items = items_with_counts(counts)
    groups_of = [max(n, k) // k for n in counts]
    repeated = 0
    for epoch in range(20):
        sampler = build_sampler("IdentityGroupShuffleSampler", items, per_batch * k, k, seed=3)
        sampler.set_epoch(epoch)
        out = batches(sampler, per_batch * k)
        assert len(out) == sampler.num_batches() == sum(groups_of) // per_batch
        used = Counter()
        for batch in out:
            groups = [batch[i : i + k] for i in range(0, per_batch * k, k)]
            assert all(len({items[j][1] for j in g}) == 1 for g in groups)
            ids = [items[g[0]][1] for g in groups]
            used.update(ids)
            repeated += len(set(ids)) < per_batch  # an id may fill two groups of a batch
        assert all(used[pid] <= g for pid, g in enumerate(groups_of))
        assert sum(groups_of) - sum(used.values()) < per_batch  # only the last partial batch
        seen = Counter(i for batch in out for i in batch)
        assert all(t == 1 for i, t in seen.items() if counts[items[i][1]] >= k)
    assert repeated > 0
