"""SynthCC: the generated clothes-changing dataset, read by LTCC's parser."""

from __future__ import annotations

from typing import Any

from ..base import DatasetLayoutError
from ..synth import SynthCCError, ensure_synthcc, get_preset
from ..synth.generator import check_seed
from ._scan import check_choice
from .ltcc import LTCC


class SynthCC(LTCC):
    """A procedurally generated tree in LTCC's exact layout, generated on first use.

    The tree lives in ``<root>/synthcc/<preset>_seed<seed>/`` (see :mod:`csgn_plugin.data.synth`)
    and is parsed exactly like LTCC: clothes key = (pid, outfit), camera id = c - 1, queries one
    per (person, outfit, camera), protocols general, CC and SC.

    Options (keyword arguments, from the ``cc_data`` config section):
        synthcc_preset: ``'tiny'``, ``'default'`` or ``'hard'`` (most outfits shared).
        synthcc_seed: non-negative integer; the same seed gives byte-identical files.
        and LTCC's options (``ltcc_train_ids``, ``name_policy``).
    """

    protocols = ("general", "cc", "sc")
    generated = True
    obtain = (
        "SynthCC is generated on first use by csgn_plugin.data.synth.ensure_synthcc(root, preset, "
        "seed); nothing needs to be downloaded."
    )
    official_counts: dict = {}
    official_note = (
        "SynthCC is generated: its counts depend on cc_data.synthcc_preset and are recorded in "
        "the tree's synthcc.json"
    )

    def __init__(
        self,
        root: str = "",
        synthcc_preset: str = "default",
        synthcc_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self.synthcc_preset = synthcc_preset
        self.synthcc_seed = synthcc_seed
        super().__init__(root, **kwargs)

    @classmethod
    def check_generation(cls, options: dict) -> None:
        get_preset(options.get("synthcc_preset", "default"))
        check_seed(options.get("synthcc_seed", 0))
        check_choice("ltcc_train_ids", options.get("ltcc_train_ids", "all"), ("all", "cc"))

    def _dataset_dir(self, root: str, **kwargs: Any) -> str:
        """The generated tree of this preset and seed (generated here when missing)."""
        try:
            return ensure_synthcc(root, self.synthcc_preset, self.synthcc_seed)
        except SynthCCError as exc:
            raise DatasetLayoutError(f"SynthCC: {exc}") from exc
