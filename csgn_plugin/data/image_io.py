"""Image decoding that names the file on failure.

torchreid's ``read_image`` retries forever on an unreadable file (the job hangs with no file name
inside a DataLoader worker). Here every failure raises :class:`ImageReadError` with the path and
the reason, and every PIL mode a ReID data set may hold (grayscale, RGBA, palette, CMYK, 16-bit)
is converted to 8-bit RGB. What happens next (stop, or use another image of the same identity) is
the dataset's ``image_policy`` (``cc_data.image_policy``).
"""

from __future__ import annotations

import os
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import UserError

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
# what __init__ writes, and where torch's DataLoader says an exception came from
_ORIGINAL_MESSAGE = re.compile(r"cannot read image '(.+?)': (.*)")
_WORKER = re.compile(r"Caught \w+ in (DataLoader worker process \d+)")


class ImageReadError(UserError, OSError):
    """An image file that cannot be decoded; ``path`` names it.

    Also constructible from one message: a DataLoader worker re-raises an exception in the main
    process by calling its class with the formatted traceback, and that keeps this type (and the
    file name and reason, which the message's last line holds) instead of degrading to a bare
    ``RuntimeError``; the message is then that line again, naming the worker, without the
    worker's traceback (a damaged file is the user's to fix, not a crash to debug).
    """

    def __init__(self, path: str, reason: str | None = None) -> None:
        where = ""
        if reason is None:  # one formatted message, as a DataLoader worker re-raises
            message, found = path, _ORIGINAL_MESSAGE.findall(path)
            if not found:
                super().__init__(message)
                self.path, self.reason = "", message
                return
            (path, reason), worker = found[-1], _WORKER.search(message)
            where = f" (in {worker.group(1)})" if worker else ""
        super().__init__(f"cannot read image '{path}': {reason}{where}")
        self.path, self.reason = path, reason


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB from any PIL mode (16-bit images are scaled, not clipped)."""
    if img.mode in _SIXTEEN_BIT_MODES:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max() > 255 else 255.0
        arr = np.clip(arr * (255.0 / peak), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        # composite on black: what a detector crop with an alpha channel shows
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    return img.convert("RGB")


def read_image(path: str) -> Image.Image:
    """Decode ``path`` to an RGB PIL image, or raise :class:`ImageReadError` naming it.

    The format is read from the file's content, so a PNG named ``.jpg`` decodes; truncated files
    and images larger than PIL's decompression-bomb limit are refused.
    """
    if not os.path.isfile(path):
        raise ImageReadError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()
            return to_rgb(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(path, f"{type(exc).__name__}: {exc}") from exc
    except Image.DecompressionBombError as exc:  # an Exception, not an OSError
        raise ImageReadError(path, f"image too large: {exc}") from exc
