"""The clothes-changing datasets, by the name torchreid knows them under."""

from __future__ import annotations

IMAGE_DATASETS: dict = {}
VIDEO_DATASETS: dict = {}
