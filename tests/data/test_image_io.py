import numpy as np
import pytest
from PIL import Image

from csgn_plugin.data.image_io import ImageReadError, read_image


def save(tmp_path, name, img, **kw):
    path = str(tmp_path / name)
    img.save(path, **kw)
    return path


def test_modes_decode_to_8bit_rgb(tmp_path):
    rgb = save(tmp_path, "rgb.png", Image.new("RGB", (4, 6), (10, 20, 30)))
    assert read_image(rgb).getpixel((0, 0)) == (10, 20, 30)
    gray = save(tmp_path, "l.png", Image.new("L", (4, 6), 77))
    assert read_image(gray).getpixel((1, 1)) == (77, 77, 77)
    rgba = save(tmp_path, "a.png", Image.new("RGBA", (4, 6), (200, 100, 50, 0)))
    assert read_image(rgba).getpixel((0, 0)) == (0, 0, 0)  # fully transparent on black
    pal = Image.new("P", (4, 6))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((0, 0), 1)
    assert read_image(save(tmp_path, "p.png", pal)).getpixel((0, 0)) == (255, 0, 0)
    cmyk = save(tmp_path, "c.jpg", Image.new("CMYK", (8, 8), (0, 0, 0, 0)), quality=100)
    assert read_image(cmyk).getpixel((0, 0)) == (255, 255, 255)
    sixteen = Image.fromarray(np.full((6, 4), 65535, dtype=np.uint16))
    assert read_image(save(tmp_path, "16.png", sixteen)).getpixel((0, 0)) == (255, 255, 255)
    half = Image.fromarray(np.full((6, 4), 32896, dtype=np.uint16))  # 32896 = 128.5 * 256
    assert read_image(save(tmp_path, "16h.png", half)).getpixel((0, 0)) == (128,) * 3


def test_bad_files_name_the_path(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png.*does not exist"):
        read_image(str(tmp_path / "missing.png"))
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.png.*0 bytes"):
        read_image(str(empty))
    good = save(tmp_path, "good.png", Image.new("RGB", (32, 32), (1, 2, 3)))
    data = open(good, "rb").read()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="cut.png"):
        read_image(str(cut))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.jpg"):
        read_image(str(text))
