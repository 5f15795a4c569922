"""Bad images: every odd-but-valid file decodes; an unreadable one either stops the run naming
the file (``cc_data.image_policy 'fail'``, also from DataLoader worker processes) or is replaced
by another image of its identity, counted and reported (``'skip'``)."""

import os
import pickle
import re
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image
from run_helpers import opts

from csgn_plugin.data.base import ClothesImageDataset
from csgn_plugin.data.datasets.synthcc import SynthCC
from csgn_plugin.data.image_io import ImageReadError, read_image
from csgn_plugin.data.synth import ensure_synthcc
from csgn_plugin.launcher import main


def png_header_only(width, height):
    """A PNG whose header claims width x height (no pixel data): PIL's bomb check reads only
    the header, so this tests a huge image without allocating one."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 16)  # a few bytes of pixel data; the header is what counts
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# ------------------------------------------------------------------------------ decoding
def test_odd_but_valid_files_decode_to_rgb(tmp_path):
    # a PNG named .jpg: the content decides, not the extension
    wrong = tmp_path / "png_content.jpg"
    Image.new("RGB", (3, 5), (9, 8, 7)).save(wrong, format="PNG")
    img = read_image(str(wrong))
    assert (img.mode, img.size, img.getpixel((2, 4))) == ("RGB", (3, 5), (9, 8, 7))
    # a 1x1 image and a large one keep their size (the transforms resize them)
    one = tmp_path / "one.png"
    Image.new("RGB", (1, 1), (1, 2, 3)).save(one)
    assert read_image(str(one)).size == (1, 1)
    large = tmp_path / "large.jpg"
    Image.new("RGB", (3000, 1500), (200, 10, 10)).save(large, quality=90)
    assert read_image(str(large)).size == (3000, 1500)
    # grayscale + alpha composites on black; 1-bit; 16-bit with 8-bit values is not darkened
    la = tmp_path / "la.png"
    Image.new("LA", (2, 2), (200, 255)).save(la)
    assert read_image(str(la)).getpixel((0, 0)) == (200, 200, 200)
    bits = tmp_path / "bits.png"
    Image.new("1", (2, 2), 1).save(bits)
    assert read_image(str(bits)).getpixel((1, 1)) == (255, 255, 255)
    low = tmp_path / "low16.png"
    Image.fromarray(np.full((2, 2), 100, dtype=np.uint16)).save(low)
    assert read_image(str(low)).getpixel((0, 0)) == (100, 100, 100)


def test_unreadable_files_raise_naming_the_file(tmp_path):
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(png_header_only(40000, 40000))  # 1.6e9 pixels, over PIL's limit
    with pytest.raises(ImageReadError, match=r"huge\.png.*too large"):
        read_image(str(bomb))
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (5, 5, 5)).save(good, quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*(?i:truncated)"):
        read_image(str(cut))


def test_the_error_keeps_its_type_and_path_across_processes():
    err = ImageReadError("/data/a.png", "file is empty (0 bytes)")
    copy = pickle.loads(pickle.dumps(err))
    assert (type(copy), copy.path, str(copy)) == (ImageReadError, "/data/a.png", str(err))
    # a DataLoader worker re-raises with the class called on one formatted message: the
    # original line comes back, naming the worker, without the worker's traceback
    formatted = (
        "Caught ImageReadError in DataLoader worker process 3.\nOriginal Traceback (most recent "
        'call last):\n  File "worker.py", line 1, in fetch\n    data = dataset[i]\n'
        f"csgn_plugin.data.image_io.ImageReadError: {err}\n"
    )
    rebuilt = ImageReadError(formatted)
    assert (rebuilt.path, rebuilt.reason) == ("/data/a.png", "file is empty (0 bytes)")
    assert str(rebuilt) == f"{err} (in DataLoader worker process 3)"


# ------------------------------------------------------------------------ a damaged dataset
ODD_WRITERS = {  # decodable images of every awkward kind, written over dataset images
    "gray": lambda p: Image.new("L", (32, 64), 90).save(p),
    "rgba": lambda p: Image.new("RGBA", (32, 64), (10, 200, 10, 128)).save(p),
    "palette": lambda p: Image.new("RGB", (32, 64), (0, 0, 250)).convert("P").save(p),
    "cmyk_as_png": lambda p: Image.new("CMYK", (32, 64), (0, 50, 50, 0)).save(p, format="JPEG"),
    "sixteen_bit": lambda p: Image.fromarray(np.full((64, 32), 40000, np.uint16)).save(p),
    "tiny": lambda p: Image.new("RGB", (1, 2), (1, 2, 3)).save(p),
    "large": lambda p: Image.new("RGB", (1200, 2400), (90, 90, 90)).save(p),
}


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 3])


def empty(path):
    open(path, "wb").close()


def text(path):
    open(path, "w").write("not an image")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    """A tiny SynthCC whose files include every odd kind and 5 unreadable ones."""
    root = tmp_path_factory.mktemp("damaged")
    ensure_synthcc(str(root / "data"), "tiny", 0)
    ds = SynthCC(root=str(root / "data"), synthcc_preset="tiny", verbose=False)
    for item, write in zip(ds.train[1:], ODD_WRITERS.values()):
        write(item[0])
    for item, write in zip(ds.query[1:], ODD_WRITERS.values()):
        write(item[0])
    bad = {
        "train": [ds.train[20][0], ds.train[40][0], ds.train[60][0]],
        "query": [ds.query[10][0]],
        "gallery": [ds.gallery[5][0]],
    }
    for path, damage in zip([*bad["train"], *bad["query"], *bad["gallery"]], [
        truncate, empty, text, truncate, empty
    ]):  # fmt: skip
        damage(path)
    return root, ds, bad


def test_skip_uses_the_next_readable_image_of_the_same_identity_and_outfit(damaged):
    root, ds, bad = damaged
    skip = SynthCC(
        root=str(root / "data"), synthcc_preset="tiny", image_policy="skip", verbose=False
    )
    index = 20  # truncated
    path, pid, _, _, clothes = skip.train[index]
    expected = next(
        skip.train[i][0]
        for i in range(index + 1, len(skip.train))
        if skip.train[i][1] == pid and skip.train[i][4] == clothes
        and skip.train[i][0] not in bad["train"]
    )  # fmt: skip
    item = skip[index]
    assert (item["unreadable_path"], item["impath"], item["pid"]) == (path, expected, pid)
    assert skip[index + 1]["unreadable_path"] == ""  # a readable item is not flagged
    with pytest.raises(ImageReadError, match=re.escape(path)):  # 'fail' names the file
        SynthCC(root=str(root / "data"), synthcc_preset="tiny", verbose=False)[20]
    with pytest.raises(ValueError, match="cc_data.image_policy"):
        SynthCC(root=str(root / "data"), synthcc_preset="tiny", image_policy="ignore")


def test_skip_still_fails_for_a_training_identity_without_a_readable_image(damaged, tmp_path):
    _, ds, _ = damaged
    train = [(str(tmp_path / f"x{i}.png"), 0, 0, 0, 0) for i in range(2)]
    for path, *_ in train:
        empty(path)
    dataset = ClothesImageDataset(train, ds.query, ds.gallery, image_policy="skip", verbose=False)
    with pytest.raises(ImageReadError, match="no other image of training identity 0"):
        dataset[0]


def damaged_opts(root, name, model, *extra):
    return opts(root / "data", root / name, model, "train.max_epoch", "1", *extra)


def test_fail_policy_names_the_file_from_a_loader_worker(damaged):
    root, _, bad = damaged
    with pytest.raises(ImageReadError) as err:
        main(damaged_opts(root, "fail", "osnet", "data.workers", "2"))
    assert err.value.path in bad["train"] and err.value.path in str(err.value)
    # raised there, the same type here, one line naming the file and the worker
    assert "\n" not in str(err.value) and "(in DataLoader worker process" in str(err.value)


def test_skip_policy_trains_reports_and_leaves_bad_test_images_out(damaged, capsys):
    root, ds, bad = damaged
    save = root / "skip"
    engine = main(
        damaged_opts(root, "skip", "csgn", "data.workers", "2", "cc_data.image_policy", "skip")
    )
    out = capsys.readouterr().out
    # stage 1 caches every training image once, so every unreadable one was met and counted
    assert set(engine.runtime.unreadable.counts["train"]) == set(bad["train"])
    assert set(engine.runtime.unreadable.counts["synthcc query"]) == set(bad["query"])
    assert set(engine.runtime.unreadable.counts["synthcc gallery"]) == set(bad["gallery"])
    assert "stage 1 feature cache: 3 item(s) replaced" in out
    assert f"Extracted {len(ds.query) - 1} query and {len(ds.gallery) - 1} gallery" in out
    general = engine.last_results["synthcc"]["general"]
    assert general.num_valid + general.num_skipped == len(ds.query) - 1
    listed = (save / "unreadable_images.txt").read_text().splitlines()[1:]
    assert sorted(line.split("\t")[2] for line in listed) == sorted(sum(bad.values(), []))
    weights = torch.cat([p.flatten() for p in engine.unwrapped_model.parameters()])
    assert torch.isfinite(weights).all()
    assert os.path.isfile(save / "checkpoints" / "last.pth")
