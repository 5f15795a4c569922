"""A dataset's statistics against its official counts: what ``tools/check_dataset.py`` prints.

:func:`check_dataset` parses a registered clothes-changing dataset with the ``cc_data`` options
(every key, defaults filled in, as the data manager passes them) and compares the ids, images,
cameras and outfits of each split with the counts its class declares (``official_counts``).
The check tool and the downloader (:mod:`csgn_plugin.data.download`) both report through it, so
an archive unpacked by the downloader is judged exactly like a tree unpacked by hand.

Differences from the official counts are reported, not raised: a tree with extra or missing
files is still usable, and the user decides. A layout the parser cannot read raises
:class:`~csgn_plugin.data.base.DatasetLayoutError`; a bad option raises
:class:`~csgn_plugin.errors.ConfigError`.

:func:`check_readable` is the run's pre-flight for one data set: it parses the tree as the data
manager will (the parse is cached, so the data manager does not repeat it), and for a generated
data set only checks the options it will be made with.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import get_default_config
from ..errors import ConfigError
from .base import split_statistics
from .datasets import IMAGE_DATASETS, VIDEO_DATASETS
from .datasets.synthcc import SynthCC
from .synth import synthcc_dir

STATS = ("ids", "images", "cameras", "outfits")


def dataset_names() -> list[str]:
    """Every dataset name the plugin registers with torchreid, sorted."""
    return sorted({**IMAGE_DATASETS, **VIDEO_DATASETS})


def dataset_class(name: str) -> type:
    """The dataset class registered under ``name``; a clear error listing the names otherwise."""
    cls = IMAGE_DATASETS.get(name) or VIDEO_DATASETS.get(name)
    if cls is None:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(dataset_names())}")
    return cls


def parse_options(pairs: Sequence[tuple[str, str]]) -> dict:
    """``(key, text)`` pairs -> every ``cc_data`` option, the given ones typed like the defaults."""
    options = dict(get_default_config().cc_data)
    for key, value in pairs:
        if key not in options:
            raise ConfigError(f"unknown option '--{key}'; known: {', '.join(sorted(options))}")
        kind = type(options[key])
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"--{key} expects true or false, got '{value}'")
            options[key] = value.lower() in ("true", "1")
        else:
            try:
                options[key] = kind(value)
            except ValueError:
                raise ConfigError(f"--{key} expects a {kind.__name__}, got '{value}'") from None
    return options


def generation_notice(name: str, root: str, options: dict) -> str | None:
    """What checking a generated dataset does first when its tree is missing; ``None`` otherwise.

    SynthCC is never downloaded or compared with official counts: asking for it generates the
    tree of the chosen preset and seed, which a user who meant to check an existing tree must be
    told before the generation starts.
    """
    if not issubclass(dataset_class(name), SynthCC):
        return None
    preset, seed = options["synthcc_preset"], options["synthcc_seed"]
    tree = synthcc_dir(root, preset, seed)
    if os.path.isdir(tree):
        return None
    return (
        f"{name}: SynthCC is generated, not downloaded, and has no official counts. There is no "
        f"tree at '{tree}' yet, so it is generated now (preset '{preset}', seed {seed}); the "
        "statistics below are those of the generated tree."
    )


@dataclass(frozen=True)
class CheckReport:
    """The statistics of one parsed dataset and their differences from the official counts."""

    name: str
    class_name: str
    dataset_dir: str
    protocols: tuple
    stats: dict  # split ('train', 'query', 'gallery', 'all') -> {stat: count}
    differences: list  # one line per count that differs from the official one
    checked: int  # how many official counts were compared
    note: str

    def lines(self) -> list[str]:
        out = [
            f"{self.name} ({self.class_name}) at '{self.dataset_dir}'",
            f"protocols: {', '.join(self.protocols)}",
            f"{'split':<8} " + " ".join(f"{s:>9}" for s in STATS),
        ]
        for split, values in self.stats.items():
            out.append(f"{split:<8} " + " ".join(f"{values[s]:9d}" for s in STATS))
        out.append(f"official counts checked: {self.checked}, differences: {len(self.differences)}")
        out += [f"  DIFFERS  {line}" for line in self.differences]
        if self.note:
            out.append(f"note: {self.note}")
        return out


def _all_statistics(train: list, query: list, gallery: list) -> dict:
    """Totals over the splits: training and test ids are disjoint, so ids add up."""
    test = [*query, *gallery]
    return {
        "ids": len({i[1] for i in train}) + len({i[1] for i in test}),
        "images": len(train) + len(test),
        "cameras": len({i[2] for i in (*train, *test)}),
        "outfits": len({i[4] for i in train}) + len({i[4] for i in test}),
    }


def _parse(name: str, root: str, options: dict | None) -> object:
    """Dataset ``name`` under ``root`` as the data manager builds it (nothing loaded)."""
    kwargs = dict(parse_options([]) if options is None else options)
    if name in VIDEO_DATASETS:
        kwargs["transform"] = lambda frame: frame  # never applied: nothing is loaded
    return dataset_class(name)(root=root, mode="train", verbose=False, **kwargs)


def check_readable(name: str, root: str, options: dict) -> None:
    """Raise what reading dataset ``name`` under ``root`` with the ``cc_data`` ``options`` would
    raise (:class:`~csgn_plugin.data.base.DatasetLayoutError`, :class:`ConfigError`), without
    downloading or generating anything: a generated data set checks its options only."""
    cls = dataset_class(name)
    if cls.generated:
        cls.check_generation(options)
    else:
        _parse(name, root, options)


def check_dataset(name: str, root: str, options: dict | None = None) -> CheckReport:
    """Parse dataset ``name`` under ``root`` and compare it with its official counts.

    ``options``: the ``cc_data`` options (:func:`parse_options`; the defaults when ``None``).
    """
    cls = dataset_class(name)
    dataset = _parse(name, root, options)
    # video statistics count tracklets, before training chunks
    train = getattr(dataset, "train_videos", dataset.train)
    stats = {
        "train": split_statistics(train),
        "query": split_statistics(dataset.query),
        "gallery": split_statistics(dataset.gallery),
        "all": _all_statistics(train, dataset.query, dataset.gallery),
    }
    official = getattr(cls, "official_counts", {})
    differences = [
        f"{split} {stat}: found {stats[split][stat]}, official {expected}"
        for split, counts in official.items()
        for stat, expected in counts.items()
        if stats[split][stat] != expected
    ]
    return CheckReport(
        name=name,
        class_name=cls.__name__,
        dataset_dir=dataset.dataset_dir,
        protocols=tuple(cls.protocols),
        stats=stats,
        differences=differences,
        checked=sum(len(c) for c in official.values()),
        note=getattr(cls, "official_note", ""),
    )
