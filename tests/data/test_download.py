"""tools/download.py and csgn_plugin.data.download, with gdown's download replaced.

The fake keeps gdown 6.x's file contract (the bytes go to ``<output><8 characters>.part``; a call
with ``resume=True`` continues that file; it is renamed to ``output`` only when whole) and serves
archives built here, in the data sets' real layouts, from tests/dataset_trees.py. Each test then
checks what the user gets: the unpacked tree byte for byte, the files left behind, the message.
"""

from __future__ import annotations

import glob
import http.server
import importlib.util
import io
import os
import random
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile

import gdown
import pytest
import requests
import torch
from dataset_trees import build_ccvid, build_last, build_vcclothes

from csgn_plugin.data import download
from csgn_plugin.data.check import dataset_class
from csgn_plugin.data.download import CATALOGUE, FetchError, fetch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ------------------------------------------------------------------------------------ helpers
def tree_files(folder: str) -> dict:
    """Relative path -> bytes of every file under ``folder``."""
    files = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, folder).replace(os.sep, "/")] = f.read()
    return files


def make_zip(out: str, files: dict, stored: bool = False) -> bytes:
    """A zip of ``{archive name: bytes}``; returns its bytes."""
    method = zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(out, "w", method) as zf:
        for name, data in sorted(files.items()):
            zf.writestr(name, data)
    with open(out, "rb") as f:
        return f.read()


def make_targz(out: str, files: dict, extra: tuple = ()) -> bytes:
    """A tar.gz of ``{archive name: bytes}`` plus ready-made TarInfo entries ``extra``."""
    with tarfile.open(out, "w:gz") as tf:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    with open(out, "rb") as f:
        return f.read()


def under(prefix: str, files: dict) -> dict:
    return {f"{prefix}/{name}": data for name, data in files.items()}


class FakeDrive:
    """``gdown.download`` serving ``files[id]``; ``cut_at`` bytes, then a dropped connection."""

    def __init__(self, files: dict, cut_at: int | None = None) -> None:
        self.files = files
        self.cut_at = cut_at
        self.calls: list = []

    def download(self, url=None, output=None, quiet=False, id=None, resume=False, **kwargs):
        self.calls.append({"id": id, "output": output, "resume": resume, **kwargs})
        assert kwargs.get("timeout") is not None  # without one gdown waits forever
        if resume and os.path.isfile(output):
            return output
        data = self.files[id]
        parts = glob.glob(glob.escape(output) + "?" * 8 + ".part")
        part = parts[0] if resume and parts else output + "k3j5x9q2.part"
        done = os.path.getsize(part) if os.path.exists(part) else 0
        end = len(data) if self.cut_at is None else self.cut_at
        with open(part, "ab") as f:
            f.write(data[done:end])
        if end < len(data):
            self.cut_at = None  # the next call gets the rest
            raise requests.exceptions.ConnectionError("Connection reset by peer (simulated)")
        os.replace(part, output)
        return output


@pytest.fixture
def drive(monkeypatch):
    def install(files: dict, cut_at: int | None = None) -> FakeDrive:
        fake = FakeDrive(files, cut_at)
        monkeypatch.setattr(gdown, "download", fake.download)
        return fake

    return install


def report_rows(out: str) -> dict:
    """The statistics rows of a check report: split -> [ids, images, cameras, outfits]."""
    rows = {}
    for line in out.splitlines():
        fields = line.split()
        if fields and fields[0] in ("train", "query", "gallery", "all") and len(fields) == 5:
            rows[fields[0]] = fields[1:]
    return rows


def leftovers(root: str) -> list:
    """What a fetch left in ``root``, besides the lock files that serialise fetches."""
    return sorted(e for e in os.listdir(root) if not e.endswith(".lock"))


# ------------------------------------------------------------------------------------- tests
def test_a_whole_archive_is_fetched_unpacked_checked_and_not_fetched_twice(tmp_path, drive, capsys):
    src = build_ccvid(tmp_path / "src")
    files = tree_files(src.dataset_dir)
    beside = {"readme.txt": b"terms", "__MACOSX/CCVID/._train.txt": b"x"}
    archive = make_zip(str(tmp_path / "ccvid.zip"), {**under("CCVID", files), **beside})
    fake = drive({CATALOGUE["ccvid"].drive_id: archive})
    root = tmp_path / "data"

    target = fetch("ccvid", str(root))

    assert target == str(root / "CCVID")
    assert tree_files(target) == files  # byte for byte, without what lies beside CCVID/
    assert fake.calls[0]["resume"] is True
    kept = root / "archives" / "ccvid.archive"
    assert kept.read_bytes() == archive
    assert leftovers(str(root)) == ["CCVID", "archives"]  # no staging folder or partial file
    assert os.listdir(root / "archives") == ["ccvid.archive"]
    # the check report of tools/check_dataset.py; CCVID_SPEC's training tracklets by hand:
    # pids {1, 25}, 4 tracklets, cameras {0, 1, 12, 11}, outfits (1,u1_l1) (1,u2_l1) (25,u1_l1)
    rows = report_rows(capsys.readouterr().out)
    assert rows["train"] == ["2", "4", "4", "3"]
    assert rows["all"][:2] == ["4", "10"]

    fake.calls.clear()
    assert fetch("ccvid", str(root)) == target
    assert fake.calls == []  # reported, not fetched again
    assert "already there" in capsys.readouterr().out


def test_two_fetches_of_one_item_at_once_download_and_extract_it_once(
    tmp_path, drive, capsys, monkeypatch
):
    src = build_ccvid(tmp_path / "src")
    files = tree_files(src.dataset_dir)
    archive = make_zip(str(tmp_path / "a.zip"), under("CCVID", files))
    fake = drive({CATALOGUE["ccvid"].drive_id: archive})
    second_started = threading.Event()

    def slow_download(*args, **kwargs):  # the first download lasts until the second fetch runs
        assert second_started.wait(10)
        time.sleep(0.5)  # long enough for an unserialised second fetch to reach gdown too
        return fake.download(*args, **kwargs)

    monkeypatch.setattr(gdown, "download", slow_download)
    root = str(tmp_path / "data")
    results = []
    first = threading.Thread(target=lambda: results.append(fetch("ccvid", root, check=False)))
    first.start()
    second_started.set()
    results.append(fetch("ccvid", root, check=False))
    first.join(30)

    assert results == [os.path.join(root, "CCVID")] * 2
    assert len(fake.calls) == 1  # one download; the other fetch waited and found it in place
    assert tree_files(os.path.join(root, "CCVID")) == files
    assert leftovers(root) == ["CCVID", "archives"]
    out = capsys.readouterr().out
    assert out.count("extracting") == 1 and out.count("already there") == 1


def test_an_interrupted_download_resumes_to_an_identical_archive(tmp_path, drive, capsys):
    src = build_last(tmp_path / "src")
    files = tree_files(src.dataset_dir)
    archive = make_targz(str(tmp_path / "last.tar.gz"), under("last", files))
    half = len(archive) // 2
    drive({CATALOGUE["last"].drive_id: archive}, cut_at=half)
    root = tmp_path / "data"

    with pytest.raises(FetchError) as err:
        fetch("last", str(root))
    message = str(err.value)
    assert f"{half} bytes received so far are kept" in message
    assert "running the same command again continues" in message
    assert "https://github.com/shuxjweb/last" in message and "--archive FILE" in message
    assert not (root / "last").exists()
    assert not (root / "archives" / "last.archive").exists()
    (part,) = glob.glob(str(root / "archives" / "last.archive.download*.part"))
    assert os.path.getsize(part) == half

    target = fetch("last", str(root))

    assert (root / "archives" / "last.archive").read_bytes() == archive
    assert not glob.glob(str(root / "archives" / "*.part"))
    assert tree_files(target) == files
    # LAST_TRAIN: pids 0, 17, 4999 with 3 + 2 + 1 images, one camera per image, outfits
    # (0,0) (0,1) (17,3) (17,10) (4999,0)
    assert report_rows(capsys.readouterr().out)["train"] == ["3", "6", "6", "5"]


class DroppingServer(http.server.ThreadingHTTPServer):
    """A loopback server of one file that drops the first connection after ``cut_at`` bytes
    and answers ``Range: bytes=N-`` requests with 206, as Google Drive does."""

    def __init__(self, data: bytes, cut_at: int) -> None:
        self.data, self.cut_at, self.ranges = data, cut_at, []
        super().__init__(("127.0.0.1", 0), self.Handler)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            data, server = self.server.data, self.server
            m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            start = int(m[1]) if m else 0
            server.ranges.append(start)
            self.send_response(206 if m else 200)
            if m:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - start))
            self.end_headers()
            end = server.cut_at if len(server.ranges) == 1 else len(data)
            self.wfile.write(data[start:end])
            self.close_connection = True

        def log_message(self, *args):
            pass


def test_the_real_gdown_resumes_through_the_same_staging_name(tmp_path, monkeypatch):
    """gdown 6.x itself (from a loopback server): the partial file it keeps is the one the
    message counts, and the second call continues it with a range request."""
    src = build_ccvid(tmp_path / "src")
    # 3 MB that do not compress: gdown writes in chunks of 512 KiB, so some arrive before the cut
    files = {**tree_files(src.dataset_dir), "extra.bin": random.Random(0).randbytes(3 << 20)}
    archive = make_zip(str(tmp_path / "ccvid.zip"), under("CCVID", files))
    cut_at = len(archive) // 2
    server = DroppingServer(archive, cut_at)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = gdown.download

    def from_loopback(id=None, **kwargs):  # the same call, pointed at the loopback server
        return real(url=f"http://127.0.0.1:{server.server_port}/file", **kwargs)

    monkeypatch.setattr(gdown, "download", from_loopback)
    root = tmp_path / "data"
    try:
        with pytest.raises(FetchError) as err:
            fetch("ccvid", str(root), quiet=True)
        (part,) = glob.glob(str(root / "archives" / "ccvid.archive.download*.part"))
        kept = os.path.getsize(part)
        target = fetch("ccvid", str(root), quiet=True)
    finally:
        server.shutdown()
        server.server_close()
    assert 0 < kept <= cut_at
    assert f" {kept} bytes received so far are kept" in str(err.value)
    # the second call opens the file once more (gdown reads its headers first), then asks for
    # the bytes after the kept ones
    assert server.ranges == [0, 0, kept]
    assert (root / "archives" / "ccvid.archive").read_bytes() == archive
    assert tree_files(target) == files


def corrupt_crc(path: str, member: str) -> bytes:
    """Flip one byte inside ``member``'s stored data (its CRC no longer matches)."""
    with zipfile.ZipFile(path) as zf:
        offset = zf.getinfo(member).header_offset
    data = bytearray(open(path, "rb").read())
    name_len = int.from_bytes(data[offset + 26 : offset + 28], "little")
    extra_len = int.from_bytes(data[offset + 28 : offset + 30], "little")
    data[offset + 30 + name_len + extra_len + 1] ^= 0xFF
    return bytes(data)


@pytest.mark.parametrize("damage", ["zip_crc", "targz_truncated"])
def test_a_corrupt_archive_is_refused_and_nothing_is_extracted(tmp_path, drive, damage):
    src = build_ccvid(tmp_path / "src")
    files = under("CCVID", tree_files(src.dataset_dir))
    if damage == "zip_crc":
        make_zip(str(tmp_path / "a.zip"), files, stored=True)
        archive = corrupt_crc(str(tmp_path / "a.zip"), "CCVID/train.txt")
    else:
        archive = make_targz(str(tmp_path / "a.tgz"), files)[:-200]
    drive({CATALOGUE["ccvid"].drive_id: archive})
    root = tmp_path / "data"

    with pytest.raises(FetchError, match="is damaged .*refused, nothing extracted") as err:
        fetch("ccvid", str(root))

    assert "ccvid.archive.rejected" in str(err.value)
    assert leftovers(str(root)) == ["archives"]  # no CCVID/, no .CCVID.extracting/
    assert os.listdir(root / "archives") == ["ccvid.archive.rejected"]


def test_without_network_it_fails_at_once_and_says_where_to_fetch_by_hand(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network)")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    root = tmp_path / "data"
    start = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch("ccvid", str(root), quiet=True)  # the real gdown
    assert time.monotonic() - start < 10
    message = str(err.value)
    assert "ConnectionError" in message
    assert "https://github.com/guxinqian/Simple-CCReID" in message
    assert "https://drive.google.com/file/d/1vkZxm5v-aBXa_JEi23MMeW4DgisGtS4W/view" in message
    assert f"python tools/download.py ccvid --root {root} --archive FILE" in message
    assert "bytes received" not in message
    assert not (root / "CCVID").exists()


def test_a_manual_only_dataset_names_its_page_and_takes_the_archive_by_hand(
    tmp_path, drive, capsys
):
    fake = drive({})
    root = tmp_path / "data"
    with pytest.raises(FetchError, match="https://wanfb.github.io/dataset.html"):
        fetch("vcclothes", str(root))
    assert fake.calls == []

    # a bare archive (train/ query/ gallery/ at its top) goes into VC-Clothes/
    src = build_vcclothes(tmp_path / "src")
    files = tree_files(src.dataset_dir)
    given = tmp_path / "by_hand.zip"
    archive = make_zip(str(given), files)

    target = fetch("vcclothes", str(root), archive=str(given))

    assert target == str(root / "VC-Clothes")
    assert tree_files(target) == files
    assert given.read_bytes() == archive  # the user's file is untouched
    assert fake.calls == []
    # VC_SPEC by hand: train pids {1, 256}, 6 images, cameras {1, 2, 3, 4}, outfits
    # (1,1) (1,2) (256,3) (256,12)
    assert report_rows(capsys.readouterr().out)["train"] == ["2", "6", "4", "4"]


def test_members_that_leave_the_target_or_link_are_refused(tmp_path):
    src = build_ccvid(tmp_path / "src")
    files = under("CCVID", tree_files(src.dataset_dir))
    root = tmp_path / "data"
    escaping = tmp_path / "escaping.zip"
    make_zip(str(escaping), {**files, "CCVID/../../evil.txt": b"x"})
    with pytest.raises(FetchError, match="outside the target folder"):
        fetch("ccvid", str(root), archive=str(escaping))

    link = tarfile.TarInfo("CCVID/session1/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    linking = tmp_path / "linking.tgz"
    make_targz(str(linking), files, extra=(link,))
    with pytest.raises(FetchError, match="link or special file"):
        fetch("ccvid", str(root), archive=str(linking))

    assert not root.exists() or leftovers(str(root)) == []
    assert not (tmp_path / "evil.txt").exists()


def test_an_archive_without_the_dataset_folder_is_refused(tmp_path):
    given = tmp_path / "other.zip"
    make_zip(str(given), {"Market-1501/bounding_box_train/0001_c1s1_0.jpg": b"x"})
    with pytest.raises(FetchError, match="no 'CCVID/train.txt'.*Market-1501"):
        fetch("ccvid", str(tmp_path / "data"), archive=str(given))


def state_dict_bytes(state: dict) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_a_clipreid_model_is_written_as_a_verified_pth(tmp_path, drive):
    name = "clipreid_vitb16_sie_olp_msmt17"
    state = {"image_encoder.proj": torch.arange(6.0).reshape(2, 3), "cv_embed": torch.ones(4)}
    fake = drive({CATALOGUE[name].drive_id: state_dict_bytes(state)})
    root = tmp_path / "data"

    path = fetch(name, str(root))

    assert path == str(root / "clipreid" / f"{name}.pth")
    assert leftovers(str(root / "clipreid")) == [f"{name}.pth"]
    loaded = torch.load(path, weights_only=True)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    fake.calls.clear()
    assert fetch(name, str(root)) == path and fake.calls == []


def test_a_damaged_model_file_is_refused(tmp_path, drive):
    name = "clipreid_rn50_market1501"
    whole = state_dict_bytes({"w": torch.zeros(64, 64)})
    drive({CATALOGUE[name].drive_id: whole[: len(whole) // 2]})
    root = tmp_path / "data"
    with pytest.raises(FetchError, match="not a readable torch file"):
        fetch(name, str(root))
    assert leftovers(str(root / "clipreid")) == [f"{name}.pth.rejected"]


def test_names_outside_the_catalogue_say_how_to_obtain_them():
    with pytest.raises(FetchError, match="not downloadable by this tool: LTCC is released under"):
        download.catalogue_item("ltcc")
    with pytest.raises(FetchError, match="SynthCC is generated on first use"):
        download.catalogue_item("synthcc")
    with pytest.raises(FetchError, match="unknown name 'market'.*clipreid_rn50_msmt17"):
        download.catalogue_item("market")


def test_the_catalogue_agrees_with_the_dataset_classes():
    for item in CATALOGUE.values():
        if item.kind == "dataset":
            cls = dataset_class(item.dataset)
            # each class's own instructions name the path that identifies its folder
            assert f"<root>/{cls.dataset_dir}/{item.marker}" in cls.obtain, item.name


# ------------------------------------------------------------------------------------ the tool
def load_tool():
    spec = importlib.util.spec_from_file_location(
        "download_tool", os.path.join(REPO, "tools", "download.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tool_reports_failures_on_stderr_and_lists_the_catalogue(tmp_path, capsys):
    tool = load_tool()
    assert tool.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "clipreid_vitb16_market1501" in out
    assert "celebreid_light" in out and "manual only, from https://github.com/Huang-3" in out
    assert tool.run(tool.main, ["celebreid", "--root", str(tmp_path)]) == 2
    assert "OneDrive" in capsys.readouterr().err


def run_before_torch(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool's main in a fresh interpreter and report whether torch got imported."""
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{tool!r}, *{list(args)!r}]\n"
        "try:\n"
        f"    runpy.run_path({tool!r}, run_name='__main__')\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize(
    "tool, args, code, says",
    [
        ("download.py", ["--help"], 0, "--archive ARCHIVE"),
        ("download.py", ["ccvid"], 2, "--root is required"),
        ("check_dataset.py", ["--help"], 0, "cc_data config section"),
        ("check_dataset.py", ["ltcc", "--root", "x", "--name_policy"], 2, "'--key value' pairs"),
    ],
)
def test_tools_answer_help_and_malformed_arguments_before_importing_torch(tool, args, code, says):
    proc = run_before_torch(os.path.join(REPO, "tools", tool), *args)
    assert f"exit {code}" in proc.stdout
    assert says in proc.stdout + proc.stderr
    assert "torch imported: False" in proc.stdout
