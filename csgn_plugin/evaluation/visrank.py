"""Ranked-result images per protocol, with the clothes of every match marked.

torchreid's ``visualize_ranked_results`` draws one protocol (general) and two colours (same
identity or not). A clothes-changing user asks more of a ranked list: which protocol's view it is,
whether a match of the right person wears the query's clothes or other ones, and which gallery
items the protocol does not score. So the images are drawn here, one folder per protocol::

    visrank_<dataset>/<protocol>/<query index>_<query file name>.jpg

Each image is one query and its top-k gallery items *as the protocol ranks them*: the protocol's
excluded (junk) items - same camera; in CC also same clothes; in SC also other clothes - are
left out exactly as the scores leave them out, so the numbers under the images are the ranks
the CMC and mAP use, and the title counts the excluded items that ranked among them. Gallery
items are framed by what they are (:data:`MARKS`): the same person in the same clothes, the same
person in other clothes, another person; colours and symbols are explained in a legend on every
image. Queries the protocol skips (no scored match in the gallery) get no image. The ranking is
the evaluation's distance matrix (re-ranked with ``test.rerank``) over the whole gallery, also
under ``cc_eval.single_shot``, whose scores average several sampled galleries.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .ranking import _good_mask

__all__ = ["EXCLUDED", "MARKS", "gallery_marks", "protocol_view", "write_ranked_lists"]

#: what a scored gallery item is to a query: (colour, symbol, legend text)
MARKS = {
    "same_clothes": ((0, 158, 115), "=", "same person, same clothes"),
    "other_clothes": ((0, 114, 178), "~", "same person, other clothes"),
    "other_person": ((213, 94, 0), "x", "another person"),
}
#: a gallery item the protocol does not score (left out of the images)
EXCLUDED = "excluded"
_WHY_EXCLUDED = {
    "general": "same camera",
    "cc": "same camera or same clothes",
    "sc": "same camera or other clothes",
}
_BORDER = 4
_GAP = 6
_LINE = 14


def gallery_marks(
    mode: str,
    query: tuple[int, int, int],
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    g_clothes: np.ndarray,
) -> np.ndarray:
    """Per gallery item, what it is to ``query`` ``(pid, camid, clothes id)`` under protocol
    ``mode``: a key of :data:`MARKS`, or :data:`EXCLUDED` (the protocol's junk, by the rule the
    ranking scores with)."""
    pid, camid, clothes = query
    same_pid = np.asarray(g_pids) == pid
    same_clothes = np.asarray(g_clothes) == clothes
    good = _good_mask(
        mode, torch.from_numpy(np.asarray(g_camids) == camid), torch.from_numpy(same_clothes)
    ).numpy()
    marks = np.where(same_clothes, "same_clothes", "other_clothes").astype(object)
    marks[~same_pid] = "other_person"
    marks[same_pid & ~good] = EXCLUDED
    return marks


def protocol_view(
    mode: str,
    query: tuple[int, int, int],
    ranked: np.ndarray,
    g_pids: np.ndarray,
    g_camids: np.ndarray,
    g_clothes: np.ndarray,
    topk: int,
) -> tuple[list[tuple[int, str]], int] | None:
    """What a query's image shows under protocol ``mode``: ``([(gallery index, mark)], number
    excluded)`` - the first ``topk`` scored items of the ranking ``ranked`` (gallery indices,
    nearest first) in rank order, and how many excluded items ranked among them; ``None`` for a
    query the protocol skips (no scored match)."""
    marks = gallery_marks(mode, query, g_pids, g_camids, g_clothes)[ranked]
    scored = np.flatnonzero(marks != EXCLUDED)
    if not np.isin(marks[scored], ("same_clothes", "other_clothes")).any():
        return None
    shown = scored[:topk]
    excluded = int((marks[: shown[-1] + 1] == EXCLUDED).sum())
    return [(int(ranked[i]), str(marks[i])) for i in shown], excluded


def _first_path(path: str | Sequence[str]) -> str:
    """An image item's path, or a video item's first frame."""
    return path if isinstance(path, str) else path[0]


@functools.lru_cache(maxsize=4096)  # a gallery image recurs in many queries' lists
def _image_of(path: str, size: tuple[int, int]) -> Image.Image:
    """The image at ``size`` (height, width); the evaluation has decoded it already."""
    with Image.open(path) as image:
        return image.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)


def _draw(
    title: str,
    query: Image.Image,
    gallery: list[tuple[Image.Image, str, int]],
    size: tuple[int, int],
) -> Image.Image:
    """One row: the query, then ``(image, mark, rank)`` per gallery item; title and legend."""
    font = ImageFont.load_default()
    height, width = size
    cell = width + 2 * _BORDER + _GAP
    text_width = int(font.getlength(title)) + 2 * _GAP
    canvas = Image.new(
        "RGB",
        (max(cell * (1 + len(gallery)) + _GAP, text_width, 260),
         _LINE + height + 2 * _BORDER + _LINE + len(MARKS) * _LINE + 2 * _GAP),
        "white",
    )  # fmt: skip
    draw = ImageDraw.Draw(canvas)
    draw.text((_GAP, 2), title, fill="black", font=font)
    top = _LINE + _GAP // 2
    cells = [(query, (0, 0, 0), "query")]
    cells += [(image, MARKS[mark][0], f"#{rank} {MARKS[mark][1]}") for image, mark, rank in gallery]
    for i, (image, colour, label) in enumerate(cells):
        left = _GAP + i * cell
        draw.rectangle(
            (left, top, left + width + 2 * _BORDER - 1, top + height + 2 * _BORDER - 1), fill=colour
        )
        canvas.paste(image, (left + _BORDER, top + _BORDER))
        draw.text((left, top + height + 2 * _BORDER + 1), label, fill=colour, font=font)
    legend = top + height + 2 * _BORDER + _LINE + _GAP // 2
    for j, (colour, symbol, text) in enumerate(MARKS.values()):
        y = legend + j * _LINE
        draw.rectangle((_GAP, y + 2, _GAP + 10, y + 11), fill=colour)
        draw.text((_GAP + 16, y), f"{symbol} {text}", fill=colour, font=font)
    return canvas


def write_ranked_lists(
    distmat: np.ndarray,
    query_paths: Sequence,
    gallery_paths: Sequence,
    labels: tuple[np.ndarray, ...],
    modes: Sequence[str],
    save_dir: str,
    topk: int,
    size: tuple[int, int],
) -> dict[str, int]:
    """Write ``save_dir/<mode>/`` images (module docstring) for each protocol in ``modes``;
    returns the number of images per protocol.

    ``labels``: ``(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes)`` in the order of the
    paths; ``size``: (height, width) of each image drawn."""
    q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes = (np.asarray(v) for v in labels)
    order = np.argsort(distmat, axis=1, kind="stable")  # ties by gallery index, as the ranking
    size = tuple(size)
    written = {}
    for mode in modes:
        folder = os.path.join(save_dir, mode)
        os.makedirs(folder, exist_ok=True)
        written[mode] = 0
        for q, ranked in enumerate(order):
            query = (q_pids[q], q_camids[q], q_clothes[q])
            view = protocol_view(mode, query, ranked, g_pids, g_camids, g_clothes, topk)
            if view is None:
                continue  # the protocol skips a query without a scored match
            shown, excluded = view
            title = (
                f"{mode.upper()} protocol, query pid {query[0]}: its top {len(shown)}; "
                f"{excluded} excluded item(s) ranked among them ({_WHY_EXCLUDED[mode]}), not shown"
            )
            gallery = [
                (_image_of(_first_path(gallery_paths[g]), size), mark, rank)
                for rank, (g, mark) in enumerate(shown, 1)
            ]
            path = _first_path(query_paths[q])
            image = _draw(title, _image_of(path, size), gallery, size)
            name = os.path.splitext(os.path.basename(path))[0]
            image.save(os.path.join(folder, f"{q:05d}_{name}.jpg"), quality=90)
            written[mode] += 1
    return written
