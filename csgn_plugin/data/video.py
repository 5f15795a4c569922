"""Clothes-aware video dataset on top of torchreid's ``VideoDataset``.

Items are ``(frame_paths, pid, camid, dsetid, clothes_id)`` with the image base's conventions
(training pids and clothes relabelled, query and gallery raw pids in one clothes scope).

What it adds to torchreid's video handling (all optional, set by keyword arguments):

* **Training chunks** (``video_train_chunk_len`` = L > 0): each training tracklet of n frames is cut
  into ``max(1, n // L)`` consecutive chunks of L frames, the last chunk also taking the
  remaining ``n % L`` frames (so no chunk is shorter than L unless the whole tracklet is). Each
  chunk is one training item; torchreid's ``seq_len`` / ``sample_method`` (``evenly``, ``random``,
  ``all``) then pick the frames of a chunk, repeating frames of short ones.
* **Test clips** (``video_test_clip_len`` = c > 0, ``video_test_clip_stride`` = s): in query and
  gallery mode each tracklet becomes clips of c consecutive frames starting every s frames
  (windows ``[0, c), [s, s + c), ...`` while they fit), plus one clip ending on the last frame when
  the windows do not reach it; a tracklet shorter than c gives one clip, padded by repeating its
  last frame. Every clip has exactly c frames, so any test batch size works. ``self.query`` /
  ``self.gallery`` stay the tracklets; ``self.clip_video_index[i]`` (and ``'video_index'`` in each
  batch) is the tracklet of clip i; the engine averages the clip features of each tracklet
  (``csgn_plugin.evaluation.pooling.average_clip_features``) into one feature per tracklet,
  the field's protocol.
  With ``video_test_clip_len = 0`` a test item is the whole tracklet sampled by torchreid's
  ``seq_len`` / ``sample_method``, which torchreid's own engine evaluates as is.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..compat import torchreid_api
from ..progress import get_logger
from .base import ClothesDatasetMixin, DatasetLayoutError, Item, format_statistics
from .image_io import read_image

tr = torchreid_api()


def split_into_chunks(items: Sequence[Item], chunk_len: int) -> list[Item]:
    """Training tracklets cut into chunks of ``chunk_len`` frames (the last takes the remainder)."""
    chunks = []
    for paths, *labels in items:
        num = max(1, len(paths) // chunk_len)
        for k in range(num):
            end = len(paths) if k == num - 1 else (k + 1) * chunk_len
            chunks.append((tuple(paths[k * chunk_len : end]), *labels))
    return chunks


def clip_windows(num_frames: int, clip_len: int, stride: int) -> list[list[int]]:
    """Frame indices of the test clips of one tracklet, each exactly ``clip_len`` long."""
    if num_frames <= clip_len:
        return [list(range(num_frames)) + [num_frames - 1] * (clip_len - num_frames)]
    starts = list(range(0, num_frames - clip_len + 1, stride))
    if starts[-1] + clip_len < num_frames:
        starts.append(num_frames - clip_len)
    return [list(range(s, s + clip_len)) for s in starts]


def split_into_clips(
    items: Sequence[Item], clip_len: int, stride: int
) -> tuple[list[Item], list[int]]:
    """Test tracklets as fixed-length clips, and the tracklet index of each clip."""
    clips, video_index = [], []
    for v, (paths, *labels) in enumerate(items):
        for window in clip_windows(len(paths), clip_len, stride):
            clips.append((tuple(paths[i] for i in window), *labels))
            video_index.append(v)
    return clips, video_index


def sample_frame_indices(num_frames: int, seq_len: int, method: str) -> np.ndarray:
    """torchreid's frame sampling rules: 'evenly', 'random' (sorted), 'all'."""
    if method == "all":
        return np.arange(num_frames)
    if method == "random":
        replace = num_frames < seq_len
        return np.sort(np.random.choice(num_frames, size=seq_len, replace=replace))
    if method == "evenly":
        if num_frames >= seq_len:
            return (np.arange(seq_len) * (num_frames // seq_len)).astype(np.int64)
        pad = np.full(seq_len - num_frames, num_frames - 1)
        return np.concatenate([np.arange(num_frames), pad])
    raise ValueError(f"video.sample_method must be 'evenly', 'random' or 'all', got '{method}'")


class ClothesVideoDataset(ClothesDatasetMixin, tr.data.VideoDataset):
    """Video dataset whose items carry a clothes id; training chunks and test clips (see module)."""

    def __init__(
        self,
        train: list,
        query: list,
        gallery: list,
        seq_len: int = 15,
        sample_method: str = "evenly",
        video_train_chunk_len: int = 0,
        video_test_clip_len: int = 0,
        video_test_clip_stride: int = 1,
        **kwargs: Any,
    ) -> None:
        empty = [s for s, d in (("train", train), ("query", query), ("gallery", gallery)) if not d]
        if empty:
            raise DatasetLayoutError(
                f"{type(self).__name__}: the {', '.join(empty)} split(s) hold no tracklets"
            )
        for key, value, low in (
            ("video_train_chunk_len", video_train_chunk_len, 0),
            ("video_test_clip_len", video_test_clip_len, 0),
            ("video_test_clip_stride", video_test_clip_stride, 1),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"cc_data.{key} must be an integer >= {low}, got {value!r}")
        kwargs.pop("image_policy", None)
        if kwargs.get("transform") is None:
            raise ValueError(f"{type(self).__name__} needs a transform (frames become tensors)")
        super().__init__(
            train, query, gallery, seq_len=seq_len, sample_method=sample_method, **kwargs
        )
        self.train_chunk_len = video_train_chunk_len
        self.test_clip_len = video_test_clip_len
        self.test_clip_stride = video_test_clip_stride
        self.train_videos = self.train
        if video_train_chunk_len:
            self.train = split_into_chunks(self.train, video_train_chunk_len)
        self.clip_video_index: list[int] = []
        if self.mode == "train":
            self.data = self.train
        elif video_test_clip_len:
            videos = self.query if self.mode == "query" else self.gallery
            self.data, self.clip_video_index = split_into_clips(
                videos, video_test_clip_len, video_test_clip_stride
            )

    def __getitem__(self, index: int) -> dict:
        paths, pid, camid, dsetid, clothes_id = self.data[index]
        if self.clip_video_index:
            indices = np.arange(len(paths))  # a test clip: exactly its frames
        else:
            indices = sample_frame_indices(len(paths), self.seq_len, self.sample_method)
        frames = [self.transform(read_image(paths[int(i)])) for i in indices]
        item = {
            "img": torch.stack(frames),
            "pid": pid,
            "camid": camid,
            "dsetid": dsetid,
            "clothes_id": clothes_id,
        }
        if self.clip_video_index:
            item["video_index"] = self.clip_video_index[index]
        return item

    def __add__(self, other: Any) -> ClothesVideoDataset:
        """Concatenate (already chunked) training sets, clothes ids shifted past ours."""
        if not isinstance(other, ClothesVideoDataset):
            raise TypeError(
                f"cannot combine {type(self).__name__} with {type(other).__name__}: both sources "
                "must be clothes-changing video datasets"
            )
        return ClothesVideoDataset(
            copy.deepcopy(self.train) + self._offset_train(other),
            self.query,
            self.gallery,
            seq_len=self.seq_len,
            sample_method=self.sample_method,
            video_test_clip_len=self.test_clip_len,
            video_test_clip_stride=self.test_clip_stride,
            transform=self.transform,
            mode=self.mode,
            combineall=False,
            verbose=False,
        )

    def show_summary(self) -> None:
        get_logger().info(
            f"=> Loaded {type(self).__name__} (items are tracklets, before chunks and clips)"
        )
        get_logger().info(format_statistics(self.train, self.query, self.gallery))
