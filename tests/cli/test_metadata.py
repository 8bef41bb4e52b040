"""A photo's metadata travels with its restore: XMP (keywords, rating, caption, Lightroom's edits)
into every format, 8 and 16 bits, with its orientation reset as EXIF's is, and without the gain map an
Ultra HDR photo's XMP describes; the camera's EXIF whole, TIFFs included (the app's batch:
tests/app/test_window.py)."""

import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, UnidentifiedImageError
from PIL.TiffImagePlugin import IFDRational

from lorair_desktop import imageio
from lorair_desktop.cli import main
from lorair_desktop.tiff_file import write_tiff

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


def _camera_exif() -> bytes:
    """EXIF as a camera writes it: text tags in IFD0, exposure in the Exif IFD (with its
    interoperability IFD), a position in the GPS IFD, and an orientation to turn upright."""
    tags = Image.Exif()
    tags[0x010F], tags[0x0110], tags[0x0132], tags[0x0112] = "LoRA-IR test camera", "Model 7", "2026:01:02 03:04:05", 6
    tags[0x8769] = {0x829A: IFDRational(1, 250), 0x8827: 400, 0x9003: "2026:01:02 03:04:05", 0xA005: {1: "R98"}}
    tags[0x8825] = {1: "N", 2: (52.0, 30.0, 15.5)}
    return tags.tobytes()


def _check_camera_exif(path: Path) -> None:
    with Image.open(path) as im:
        back = im.getexif()
        assert back.get(0x010F) == "LoRA-IR test camera" and back.get(0x0110) == "Model 7"
        assert back.get(0x0132) == "2026:01:02 03:04:05" and back.get(0x0112, 1) == 1
        exposure = back.get_ifd(0x8769)
        assert float(exposure[0x829A]) == 1 / 250 and exposure.get(0x8827) == 400
        assert back.get_ifd(0xA005).get(1) == "R98"
        assert back.get_ifd(0x8825).get(2) == (52.0, 30.0, 15.5)


@pytest.mark.parametrize(("ext", "depth"), [(".png", 16), (".tif", 8), (".tif", 16), (".jpg", 8)])
def test_the_cameras_exif_travels_whole(tmp_path, ext, depth) -> None:
    """Make, date, exposure, GPS: at 16 bits too, and into TIFFs, which hold EXIF in IFDs of their own
    (an 8-bit TIFF of a camera photo could not be written at all: libtiff refused the Exif pointer)."""
    dst = tmp_path / f"out{ext}"
    imageio.write_image(dst, np.random.default_rng(2).random((16, 24, 3)).astype(np.float32), bit_depth=depth,
                        exif=_camera_exif())
    assert imageio.read_image(dst).bit_depth == depth
    _check_camera_exif(dst)
    if ext == ".tif":  # a second reader finds the same IFDs
        with tifffile.TiffFile(dst) as tf:
            page = tf.pages[0]
            assert page.tags["ExifTag"].value["ISOSpeedRatings"] == 400
            assert page.tags["GPSTag"].value["GPSLatitudeRef"] == "N"
            assert "ImageDescription" not in page.tags  # no JSON shape caption of tifffile's own


def test_a_camera_photo_restored_into_a_tiff_and_back_keeps_its_exif(small_model_path, tmp_path, capsys) -> None:
    """The CLI: a camera JPEG into a TIFF, that TIFF into a JPEG; the EXIF read from a TIFF is its
    photo's tags (not its strip offsets and sizes), so it travels on."""
    src = tmp_path / "camera.jpg"
    _photo().save(src, quality=95, exif=_camera_exif())
    tif, jpg = tmp_path / "restored.tif", tmp_path / "again.jpg"
    for a, b in ((src, tif), (tif, jpg)):
        assert main(["restore", str(a), "-o", str(b), "--model", str(small_model_path), "-q"]) == 0, capsys.readouterr()
        _check_camera_exif(b)
    assert Image.open(jpg).size == (40, 56)  # turned upright once, on the first read
    assert 0x0111 not in Image.open(jpg).getexif()  # StripOffsets: the TIFF's, left behind


def test_exif_that_cannot_be_read_is_left_out_of_a_tiff(tmp_path) -> None:
    dst = tmp_path / "out.tif"
    imageio.write_image(dst, np.zeros((8, 8, 3), np.float32), exif=b"Exif\x00\x00II*\x00\xff\xff\xff\x7f")
    back = imageio.read_image(dst)
    assert back.rgb.shape == (8, 8, 3) and back.exif is None  # the image written, the garbage not


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


def test_a_tiff_whose_exif_points_nowhere_still_opens(tmp_path) -> None:
    """A TIFF whose Exif IFD pointer runs past the file's end (a truncated copy): the photo opens and
    keeps what could be read of its EXIF (Pillow reads that IFD as empty)."""
    src = tmp_path / "broken.tif"
    imageio.write_image(src, np.random.default_rng(3).random((16, 24, 3)).astype(np.float32), exif=_camera_exif())
    with tifffile.TiffFile(src) as tf:
        entry = tf.pages[0].tags["ExifTag"].offset
    with open(src, "r+b") as fh:
        fh.seek(entry + 8)
        fh.write(struct.pack("<I", 10_000_000))
    img = imageio.read_image(src)
    assert img.rgb.shape == (16, 24, 3)
    back = Image.Exif()
    back.load(img.exif)
    assert back.get(0x010F) == "LoRA-IR test camera" and not back.get_ifd(0x8769)


def test_the_exif_of_a_tiff_pillow_cannot_open_is_read_too(tmp_path) -> None:
    """16-bit grey with alpha (as GIMP writes it) is read by tifffile alone; its EXIF still travels."""
    src = tmp_path / "grey_alpha.tif"
    samples = (np.random.default_rng(4).random((12, 20, 2)) * 65535).astype(np.uint16)
    write_tiff(src, samples, None, None, imageio.upright_exif(_camera_exif()))
    with pytest.raises(UnidentifiedImageError):
        Image.open(src)
    img = imageio.read_image(src)
    assert img.bit_depth == 16 and img.grey and img.alpha is not None
    dst = tmp_path / "out.jpg"
    imageio.write_image(dst, img.rgb, exif=img.exif)
    _check_camera_exif(dst)
