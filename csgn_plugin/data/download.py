"""Public clothes-changing datasets and CLIP-ReID's released models, fetched with gdown.

What can be fetched
    :data:`CATALOGUE` holds only what the data sets' and CLIP-ReID's own pages publish: each
    Google Drive file id sits next to the page it was read from. A data set whose page gives no
    Google Drive file that gdown can fetch is *manual only*: the tool names the page and takes
    the archive fetched by hand (``archive=``), which then goes through the same verification,
    extraction and check.

How a file arrives
    :func:`gdown.download` (gdown >= 6.3) with ``resume=True`` writes into a staging name
    (``<final>.download``): gdown itself appends to ``<staging><8 characters>.part`` and renames
    it to the staging name only when every byte the server announced has arrived; a later call
    continues the ``.part`` file with an HTTP range request. The staging file is verified and
    only then renamed to its final name, so a final name always holds a verified file. A file
    that fails verification is renamed to ``<final>.rejected`` (kept to look at, never used).
    The connect timeout is short and gdown does not retry, so without network the call fails at
    once with the page to fetch the file by hand; running the same command again resumes.
    Fetching an item holds an exclusive lock on ``.<its final name>.lock`` beside it, so two
    fetches of the same item at once do one download and one extraction; the other waits and
    then finds it in place.

Archives
    Recognised by content (zip or tar, any compression tarfile reads). Verified completely
    before anything is written: every member is read through (zip CRCs, compressed streams),
    no member may leave the target (absolute names, ``..``, links, devices), and the data set's
    folder must be in it: ``<folder>/<marker>`` (e.g. ``CCVID/train.txt``), or the marker at the
    archive's top or one folder down (that folder is then renamed to the data set's name).
    Extraction goes into ``<root>/.<folder>.extracting`` and the data set's folder is renamed
    into place when whole, so an existing ``<root>/<folder>`` is a complete extraction (or a tree
    unpacked by hand): a second call reports it and fetches nothing. Then the tree is checked by
    :func:`csgn_plugin.data.check.check_dataset`, as ``tools/check_dataset.py`` does.

Models
    Written to ``<root>/clipreid/<name>.pth`` without extraction, verified to load with
    ``torch.load(weights_only=True)`` as a mapping that holds tensors.
"""

from __future__ import annotations

import glob
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, TypeVar

import gdown
import requests
import torch

from ..errors import UserError
from ..progress import get_logger
from .atomic_dir import exclusive_lock, lock_path
from .base import DatasetLayoutError
from .check import check_dataset, dataset_class

# (connect, read) seconds: an unreachable host fails in seconds; a stalled transfer is cut
# after a minute without a byte and resumes on the next call
TIMEOUT = (10.0, 60.0)
_COPY_CHUNK = 1 << 20
_Verified = TypeVar("_Verified")


class FetchError(UserError, RuntimeError):
    """A file that could not be fetched, verified or extracted; the message says what to do."""


@dataclass(frozen=True)
class Item:
    """One thing :func:`fetch` knows: a data set archive or a model file."""

    name: str  # what tools/download.py takes
    title: str
    kind: str  # 'dataset' (an archive, extracted and checked) or 'model' (a .pth file)
    page: str  # where a person fetches it by hand
    drive_id: str | None  # the Google Drive file id; None: manual only
    source: str  # where drive_id is published, or why there is none
    dataset: str = ""  # dataset: the registered name that parses it
    marker: str = ""  # dataset: a path directly inside its folder that identifies it
    note: str = ""


def _dataset(name: str, title: str, page: str, drive_id: str | None, source: str, marker: str):
    return Item(name, title, "dataset", page, drive_id, source, dataset=name, marker=marker)


_CELEB_PAGE = "https://github.com/Huang-3/Celeb-reID"
_CELEB_SOURCE = (
    "the README links OneDrive files only, which gdown cannot fetch (" + _CELEB_PAGE + ")"
)

_DATASETS = [
    _dataset(
        "ccvid",
        "CCVID",
        "https://github.com/guxinqian/Simple-CCReID",
        "1vkZxm5v-aBXa_JEi23MMeW4DgisGtS4W",
        "README, 'CCVID Dataset' GoogleDrive link: https://github.com/guxinqian/Simple-CCReID",
        "train.txt",
    ),
    _dataset(
        "last",
        "LaST",
        "https://github.com/shuxjweb/last",
        "1w_TfMx4NBVJfjVGxzKqVHPTxhKj6gQqK",
        "README, 'Googledrive' link: https://github.com/shuxjweb/last",
        "train",
    ),
    _dataset(
        "vcclothes",
        "VC-Clothes",
        "https://wanfb.github.io/dataset.html",
        None,
        "no Google Drive file id could be confirmed from the project page "
        "(https://wanfb.github.io/dataset.html), so none is listed",
        "train",
    ),
    _dataset("celebreid", "Celeb-reID", _CELEB_PAGE, None, _CELEB_SOURCE, "train"),
    _dataset("celebreid_light", "Celeb-reID-light", _CELEB_PAGE, None, _CELEB_SOURCE, "train"),
]

# CLIP-ReID's "Trained models and test logs" table (https://github.com/Syliz517/CLIP-ReID,
# README): the CLIP-ReID rows for its person data sets, keyed (architecture, data set)
_CLIPREID_PAGE = "https://github.com/Syliz517/CLIP-ReID"
_CLIPREID_ROWS = {
    "rn50": ("CNN-CLIP-ReID (RN50)", ""),
    "vitb16": ("ViT-CLIP-ReID (ViT-B/16, stride 16)", ""),
    "vitb16_sie_olp": (
        "ViT-CLIP-ReID-SIE-OLP (ViT-B/16)",
        "trained with MODEL.SIE_CAMERA True, MODEL.SIE_COE 1.0, MODEL.STRIDE_SIZE [12, 12]",
    ),
}
_CLIPREID_COLUMNS = {
    "msmt17": "MSMT17",
    "market1501": "Market",
    "dukemtmcreid": "Duke",
    "occluded_duke": "Occ-Duke",
}
_CLIPREID_IDS = {
    ("rn50", "msmt17"): "1VdlC1ld3NrQC5Jcx0hntXRb-UaR3tMtr",
    ("rn50", "market1501"): "1sBqCr5LxKcO9J2V0IvLQPb0wzwVzIZUp",
    ("rn50", "dukemtmcreid"): "1XXycuux__uDd9WKwaTAQ4W1RjLqnUphq",
    ("rn50", "occluded_duke"): "1naz7QjzYlC2qe4SHxjxss4tP81KRCrMj",
    ("vitb16", "msmt17"): "1BVaZo93kOksYLjFNH3Gf7JxIbPlWSkcO",
    ("vitb16", "market1501"): "1GnyAVeNOg3Yug1KBBWMKKbT2x43O5Ch7",
    ("vitb16", "dukemtmcreid"): "1ldjSkj-7pXAWmx8on5x0EftlCaolU4dY",
    ("vitb16", "occluded_duke"): "1FduvrwOWurHtYyockakn2hBrbGH0qJzH",
    ("vitb16_sie_olp", "msmt17"): "1sPZbWTv2_stXBGutjHMvE87pAbSAgVaz",
    ("vitb16_sie_olp", "market1501"): "1K32xrosw0gPrxYCWXER81mhWObEW5-d4",
    ("vitb16_sie_olp", "dukemtmcreid"): "1zkHLrLy3z9lP0cR2MVQtr4ujoC6eQLKP",
    ("vitb16_sie_olp", "occluded_duke"): "18RU-3_QUr2fehUjW_RfeIllbCDUaZZvP",
}
_MODELS = [
    Item(
        name=f"clipreid_{arch}_{data}",
        title=f"CLIP-ReID {_CLIPREID_ROWS[arch][0]} trained on {_CLIPREID_COLUMNS[data]}",
        kind="model",
        page=_CLIPREID_PAGE,
        drive_id=drive_id,
        source=f"README, 'Trained models and test logs', row {_CLIPREID_ROWS[arch][0]}, column "
        f"{_CLIPREID_COLUMNS[data]}: {_CLIPREID_PAGE}",
        note=_CLIPREID_ROWS[arch][1],
    )
    for (arch, data), drive_id in _CLIPREID_IDS.items()
]

CATALOGUE: dict = {item.name: item for item in (*_DATASETS, *_MODELS)}


def catalogue_item(name: str) -> Item:
    """The catalogue entry ``name``; for another registered data set, how to obtain it."""
    if name in CATALOGUE:
        return CATALOGUE[name]
    try:
        obtain = dataset_class(name).obtain
    except ValueError:
        obtain = ""
    if obtain:
        raise FetchError(f"'{name}' is not downloadable by this tool: {obtain}")
    raise FetchError(
        f"unknown name '{name}'; the catalogue holds: {', '.join(CATALOGUE)} "
        "('tools/download.py list' says what each is)"
    )


def describe_catalogue() -> list[str]:
    """One line per catalogue entry: name, what it is, and where it comes from."""
    width = max(len(name) for name in CATALOGUE)
    lines = []
    for item in CATALOGUE.values():
        how = "Google Drive" if item.drive_id else f"manual only, from {item.page}"
        extra = f"; {item.note}" if item.note else ""
        lines.append(f"{item.name:<{width}}  {item.title} [{how}]{extra}")
    return lines


# ------------------------------------------------------------------------------------ fetching
def _partial_bytes(staging: str) -> int:
    """Bytes gdown kept in ``<staging><8 characters>.part`` files (what resume continues)."""
    return sum(os.path.getsize(p) for p in glob.glob(glob.escape(staging) + "?" * 8 + ".part"))


def _destination(item: Item, root: str) -> str:
    """Where ``item`` lands: ``<root>/clipreid/<name>.pth`` or the data set's folder."""
    if item.kind == "model":
        return os.path.join(root, "clipreid", f"{item.name}.pth")
    return os.path.join(root, dataset_class(item.dataset).dataset_dir)


def _by_hand(item: Item, root: str) -> str:
    drive = f" (Google Drive file https://drive.google.com/file/d/{item.drive_id}/view)"
    lands = _destination(item, root)
    return (
        f"Fetch it by hand from {item.page}{drive if item.drive_id else ''}, then pass the file "
        f"(it is verified, then lands in '{lands}'): "
        f"python tools/download.py {item.name} --root {root} --archive FILE"
    )


def _obtain(item: Item, root: str, final: str, verify: Callable[[str], _Verified], quiet: bool):
    """``(final, verify(final))``: a verified copy of ``item``'s Google Drive file at ``final``.

    An existing ``final`` is used as it is (only a verified file is ever renamed to it); else
    the file is downloaded into the staging name, verified and renamed (see the module doc).
    """
    if os.path.isfile(final):
        return final, verify(final)
    if item.drive_id is None:
        raise FetchError(
            f"{item.title} has no Google Drive file this tool can fetch ({item.source}). "
            + _by_hand(item, root)
        )
    staging = final + ".download"
    os.makedirs(os.path.dirname(final), exist_ok=True)
    try:
        gdown.download(
            id=item.drive_id,
            output=staging,
            quiet=quiet,
            resume=True,
            use_cookies=False,  # leave the user's ~/.cache/gdown alone
            timeout=TIMEOUT,
        )
    except (requests.exceptions.RequestException, gdown.exceptions.DownloadError) as exc:
        kept = _partial_bytes(staging)
        resume = (
            f" {kept} bytes received so far are kept next to '{staging}': running the same "
            "command again continues from there."
            if kept
            else ""
        )
        raise FetchError(
            f"{item.title}: fetching Google Drive file {item.drive_id} failed "
            f"({type(exc).__name__}: {exc}).{resume} " + _by_hand(item, root)
        ) from exc
    try:
        result = verify(staging)
    except FetchError as exc:
        rejected = final + ".rejected"
        os.replace(staging, rejected)
        raise FetchError(
            f"{exc}\nThe downloaded file is kept as '{rejected}' and will not be used; run the "
            "same command again to fetch it anew. " + _by_hand(item, root)
        ) from exc
    os.replace(staging, final)
    return final, result


def fetch(
    name: str,
    root: str,
    archive: str | None = None,
    check: bool = True,
    quiet: bool = False,
) -> str:
    """Fetch catalogue entry ``name`` under ``root``; returns the data set folder or model file.

    A data set lands in ``<root>/<its folder>`` (its archive is kept in ``<root>/archives/``) and
    is then checked against its official counts (``check=False`` skips that); a model lands in
    ``<root>/clipreid/<name>.pth``. ``archive``: a file fetched by hand, used instead of
    downloading (never moved or changed). Raises :class:`FetchError`.
    """
    item = catalogue_item(name)
    root = os.path.abspath(os.path.expanduser(root))
    if archive is not None and not os.path.isfile(archive):
        raise FetchError(f"--archive '{archive}' is not a file")
    # one fetch of an item at a time: a second one (another shell, a job array) waits, then
    # finds it in place instead of writing into the same staging names
    with exclusive_lock(lock_path(_destination(item, root))):
        if item.kind == "model":
            return _fetch_model(item, root, archive, quiet)
        return _fetch_dataset(item, root, archive, check, quiet)


def _fetch_model(item: Item, root: str, given: str | None, quiet: bool) -> str:
    final = _destination(item, root)
    if given is None:
        if os.path.isfile(final):
            get_logger().info(f"{item.name}: '{final}' is already there; nothing fetched")
            return final
        _obtain(item, root, final, verify_torch_file, quiet)
    else:
        verify_torch_file(given)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        shutil.copyfile(given, final + ".download")
        os.replace(final + ".download", final)
    get_logger().info(f"{item.name}: {item.title} at '{final}'")
    return final


def _fetch_dataset(item: Item, root: str, given: str | None, check: bool, quiet: bool) -> str:
    folder = dataset_class(item.dataset).dataset_dir
    target = _destination(item, root)
    if os.path.isdir(target):
        get_logger().info(f"{item.name}: '{target}' is already there; nothing fetched or extracted")
    else:
        final = os.path.join(root, "archives", f"{item.name}.archive")

        def verify(path: str) -> ArchiveLayout:
            return inspect_archive(path, folder, item.marker)

        path, layout = (
            (given, verify(given)) if given else _obtain(item, root, final, verify, quiet)
        )
        get_logger().info(
            f"{item.name}: extracting '{path}' ({layout.members} entries) into '{target}'"
        )
        extract_archive(path, layout, root, folder)
        if given is None:
            get_logger().info(
                f"{item.name}: the archive '{path}' is no longer needed; delete it to save space"
            )
    if check:
        try:
            report = check_dataset(item.dataset, root)
        except DatasetLayoutError as exc:
            raise FetchError(f"{item.name}: '{target}' does not pass the check: {exc}") from exc
        get_logger().info("\n".join(report.lines()))
    return target


# ------------------------------------------------------------------------------ verification
def verify_torch_file(path: str) -> int:
    """How many tensors torch file ``path`` holds; :class:`FetchError` unless it is a state dict."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in pickle, zip or torch code
        raise FetchError(
            f"'{path}' is not a readable torch file ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    tensors = (
        sum(isinstance(v, torch.Tensor) for v in state.values())
        if isinstance(state, Mapping)
        else 0
    )
    if not tensors:
        raise FetchError(f"'{path}' loads, but holds no tensors (expected a model's state dict)")
    return tensors


@dataclass(frozen=True)
class ArchiveLayout:
    """What :func:`inspect_archive` found: the format and the folder that holds the data set."""

    kind: str  # 'zip' or 'tar'
    prefix: str  # the archive's folder holding the data set ('' = the archive's top)
    members: int


# what damaged archives raise while being read: zip, tar, gzip, bz2, xz
_READ_ERRORS = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)


def _archive_kind(path: str) -> str:
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith((b"Rar!", b"7z\xbc\xaf")):
        raise FetchError(
            f"'{path}' is a RAR or 7z archive, which Python cannot unpack: unpack it by hand "
            "(unrar, 7z) so that the data set's folder sits in --root, and run the same command "
            "again without --archive: the unpacked folder is then found and checked"
        )
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        raise FetchError(
            f"'{path}' is a web page, not an archive: Google Drive sends one instead of the file "
            "when its download quota is exceeded or the file is not shared publicly"
        )
    raise FetchError(f"'{path}' is not a zip or tar archive (or it is truncated or damaged)")


def _member_parts(archive: str, name: str) -> list[str]:
    """The path components of a member; an error for a member that would leave the target."""
    unix = name.replace("\\", "/")
    parts = [p for p in unix.split("/") if p not in ("", ".")]
    if unix.startswith("/") or (parts and parts[0].endswith(":")) or ".." in parts:
        raise FetchError(
            f"'{archive}' holds the member '{name}', which would be written outside the target "
            "folder: the archive is refused and nothing is extracted"
        )
    return parts


def _members(archive: str, kind: str) -> Iterator[tuple[list[str], IO[bytes] | None]]:
    """``(path components, stream)`` per member in archive order; ``None`` stream = folder.

    A stream read to its end has passed the format's own checks (zip CRC, compressed stream).
    Links and special files are refused.
    """
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                parts = _member_parts(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise FetchError(f"'{archive}' holds the link '{info.filename}': refused")
                if not parts:
                    continue
                if info.is_dir():
                    yield parts, None
                else:
                    with zf.open(info) as stream:
                        yield parts, stream
        return
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:
            parts = _member_parts(archive, member.name)
            if not (member.isfile() or member.isdir()):
                raise FetchError(
                    f"'{archive}' holds '{member.name}', a link or special file: refused"
                )
            if parts:
                yield parts, tf.extractfile(member) if member.isfile() else None


def _dataset_prefix(archive: str, paths: list[str], folder: str, marker: str) -> str:
    """The archive folder holding ``marker``: ``folder`` itself, the top, or one other folder."""
    present = set()
    for path in paths:
        parts = path.split("/")
        present.update("/".join(parts[:k]) for k in range(1, len(parts) + 1))
    tops = sorted({p.split("/")[0] for p in paths})
    candidates = [p for p in ("", *tops) if (f"{p}/{marker}" if p else marker) in present]
    if folder in candidates:
        return folder
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FetchError(
            f"'{archive}' does not hold the expected folder: no '{folder}/{marker}' (nor "
            f"'{marker}' at its top or one folder down). Its top-level entries: "
            f"{', '.join(tops[:10]) or 'none'}"
        )
    raise FetchError(
        f"'{archive}' holds '{marker}' in several folders ({', '.join(candidates)}) and none "
        f"is named '{folder}': unpack the right one by hand into '{folder}'"
    )


def inspect_archive(path: str, folder: str, marker: str) -> ArchiveLayout:
    """Verify archive ``path`` completely (see the module doc) and locate the data set in it."""
    kind = _archive_kind(path)
    paths = []
    try:
        for parts, stream in _members(path, kind):
            if stream is not None:
                while stream.read(_COPY_CHUNK):
                    pass
            paths.append("/".join(parts))
    except _READ_ERRORS as exc:
        raise FetchError(
            f"'{path}' is damaged ({type(exc).__name__}: {exc}): refused, nothing extracted"
        ) from exc
    return ArchiveLayout(kind, _dataset_prefix(path, paths, folder, marker), len(paths))


def extract_archive(path: str, layout: ArchiveLayout, root: str, folder: str) -> str:
    """Unpack the data set part of a verified archive into ``<root>/<folder>``, atomically."""
    target = os.path.join(root, folder)
    staging = os.path.join(root, f".{folder}.extracting")
    shutil.rmtree(staging, ignore_errors=True)  # left by a run that died while extracting
    os.makedirs(staging)
    depth = len(layout.prefix.split("/")) if layout.prefix else 0
    try:
        for parts, stream in _members(path, layout.kind):
            if depth and parts[:depth] != layout.prefix.split("/"):
                continue  # outside the data set's folder (e.g. __MACOSX/, a readme)
            out = os.path.join(staging, *parts)
            if stream is None:
                os.makedirs(out, exist_ok=True)
                continue
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                shutil.copyfileobj(stream, f, _COPY_CHUNK)
        source = os.path.join(staging, *layout.prefix.split("/")) if depth else staging
        os.replace(source, target)
    except _READ_ERRORS as exc:
        raise FetchError(f"extracting '{path}' into '{target}' failed: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
