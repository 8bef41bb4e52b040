"""A photo's metadata travels with its restore: XMP (keywords, rating, caption, Lightroom's edits)
into every format, 8 and 16 bits, with its orientation reset as EXIF's is, and without the gain map an
Ultra HDR photo's XMP describes (the app's batch: tests/app/test_window.py)."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lorair_desktop import imageio
from lorair_desktop.cli import main

XMP = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
       b'<rdf:Description xmlns:dc="http://purl.org/dc/elements/1.1/" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
       b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" '
       b'xmp:Rating="4" tiff:Orientation="6" hdrgm:Version="1.0">'
       b"<dc:subject><rdf:Bag><rdf:li>lake at dawn</rdf:li></rdf:Bag></dc:subject>"
       b"</rdf:Description></rdf:RDF></x:xmpmeta>")


def _photo(seed: int = 0) -> Image.Image:
    return Image.fromarray((np.random.default_rng(seed).random((40, 56, 3)) * 255).astype(np.uint8))


def _check_xmp(path: Path) -> None:
    xmp = imageio.read_image(path).xmp
    assert xmp is not None, f"{path.name} lost its XMP"
    assert b"lake at dawn" in xmp and b'xmp:Rating="4"' in xmp
    assert b'tiff:Orientation="1"' in xmp and b"hdrgm" not in xmp  # upright now, and no gain map


@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif", ".heic", ".avif"])
def test_xmp_travels_into_every_format(small_model_path, tmp_path, capsys, ext) -> None:
    src = tmp_path / "in.jpg"
    _photo().save(src, quality=95, xmp=XMP)
    assert imageio.read_image(src).xmp == XMP
    dst = tmp_path / f"out{ext}"
    assert main(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"]) == 0, capsys.readouterr()
    _check_xmp(dst)


@pytest.mark.parametrize("ext", [".png", ".tif", ".heic"])
def test_xmp_travels_at_16_bits(tmp_path, ext) -> None:
    rgb = np.random.default_rng(1).random((24, 32, 3)).astype(np.float32)
    dst = tmp_path / f"deep{ext}"
    imageio.write_image(dst, rgb, bit_depth=16, xmp=XMP)
    assert imageio.read_image(dst).bit_depth == 16
    _check_xmp(dst)


def test_a_16bit_png_keeps_the_cameras_exif(tmp_path) -> None:
    tags = Image.new("RGB", (4, 4)).getexif()
    tags[0x010F], tags[0x0112] = "LoRA-IR test camera", 6
    dst = tmp_path / "deep.png"
    imageio.write_image(dst, np.random.default_rng(2).random((16, 16, 3)).astype(np.float32), bit_depth=16,
                        exif=tags.tobytes())
    back = Image.open(dst).getexif()
    assert imageio.read_image(dst).bit_depth == 16
    assert back.get(0x010F) == "LoRA-IR test camera" and back.get(0x0112) == 1


def test_a_write_that_fails_says_why_and_leaves_nothing_behind(small_model_path, tmp_path, capsys,
                                                              monkeypatch) -> None:
    """A full disk (or an encoder that refuses) during the write: one clear error, no half-written or
    temporary file, the input untouched."""
    src = tmp_path / "in.png"
    _photo().save(src)
    before = src.read_bytes()

    def full_disk(self, fp, *args, **kwargs):  # type: ignore[no-untyped-def]
        Path(fp).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full_disk)
    rc = main(["restore", str(src), "-o", str(tmp_path / "out.jpg"), "--model", str(small_model_path)])
    err = capsys.readouterr().err
    assert rc != 0 and "error: could not write out.jpg" in err and "No space left" in err and "has room" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"] and src.read_bytes() == before
