"""Phone photos: HEIF/HEIC (the iPhone camera's format, 8 or 10 bits, turned by its own transform)
and AVIF, read and written by `lorair restore`, the app's document and batch alike (imageio)."""

import io
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import Image, ImageCms

from lorair_desktop import imageio
from lorair_desktop.cli import main
from tests.cli.heif_boxes import with_auxiliary_image

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour ramps with a little grain: lossy codecs keep such content close."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    rgb = np.stack([x, y, 0.5 + 0.4 * np.sin(6 * x + 3 * y)], axis=-1)
    return np.clip(rgb + rng.normal(0, 0.01, rgb.shape), 0, 1)


def _restore(src: Path, dst: Path, model: Path | str, capsys, *extra: str) -> str:
    rc = main(["restore", str(src), "-o", str(dst), "--model", str(model), "-q", *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    return err


def test_an_iphone_like_heic_restores_upright_with_its_camera_data_and_profile(small_model_path, tmp_path,
                                                                                 capsys) -> None:
    pixels = (_photo(48, 64) * 255).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # shot in portrait: pillow-heif stores it as the file's own rotation
    exif[0x010F] = "LoRA-IR test phone"
    src = tmp_path / "IMG_0001.HEIC"
    Image.fromarray(pixels).save(src, format="HEIF", quality=95, exif=exif.tobytes(), icc_profile=SRGB)
    before = src.read_bytes()

    img = imageio.read_image(src)
    assert (img.source_format, img.bit_depth, img.rgb.shape, img.icc_profile) == ("HEIF", 8, (64, 48, 3), SRGB)
    upright = np.rot90(pixels, -1) / 255.0  # orientation 6: turned 90° clockwise to display
    assert np.abs(img.rgb - upright).mean() < 3 / 255

    dst = tmp_path / "IMG_0001-restored.heic"
    _restore(src, dst, small_model_path, capsys)
    out = Image.open(dst)
    assert out.format == "HEIF" and out.size == (48, 64)  # written upright, not turned a second time
    assert out.info.get("icc_profile") == SRGB
    assert out.getexif().get(0x010F) == "LoRA-IR test phone" and out.getexif().get(0x0112, 1) == 1
    assert src.read_bytes() == before


def test_ten_bit_heic_is_read_and_written_at_full_depth(tmp_path, capsys) -> None:
    """10-bit samples arrive shifted into 16 bits: white must read as 1.0 and a 10-bit ramp must keep
    more than 256 levels through a restore to HEIF and to a 16-bit PNG."""
    ramp = np.tile(np.arange(1024, dtype=np.uint16)[None, :, None], (16, 1, 3))  # every 10-bit level
    ramp[:4] = 1023  # a white band
    src = tmp_path / "hdr.heic"
    heif = pillow_heif.from_bytes(mode="RGB;16", size=(1024, 16), data=(ramp << 6).tobytes())
    heif.save(src, quality=-1, chroma=444)  # lossless: the levels read back exactly
    img = imageio.read_image(src)
    assert img.bit_depth == 16 and img.source_format == "HEIF" and img.info["bits_per_sample"] == 10
    assert np.array_equal(img.rgb[:4], np.ones((4, 1024, 3), np.float32))
    assert np.allclose(img.rgb[4:], ramp[4:] / 1023.0, atol=1e-6)

    backs = {}
    for name in ("out.png", "out.heic"):  # the same restore, lossless and as a phone would keep it
        _restore(src, tmp_path / name, "lorair-lite", capsys)  # the shipped model: a smooth result
        backs[name] = back = imageio.read_image(tmp_path / name)
        assert back.bit_depth == 16 and back.rgb.shape == img.rgb.shape
        assert len(np.unique(back.rgb[8, :, 1])) > 256  # deeper than 8 bits
    assert np.abs(backs["out.heic"].rgb - backs["out.png"].rgb).mean() < 0.01


def test_a_16bit_image_written_to_heif_keeps_ten_bits(tmp_path) -> None:
    rgb = np.tile(np.linspace(0, 1, 640, dtype=np.float32)[None, :, None], (8, 1, 3))
    imageio.write_image(tmp_path / "g.heif", rgb, bit_depth=16, quality=100)
    back = imageio.read_image(tmp_path / "g.heif")
    assert back.bit_depth == 16 and len(np.unique(np.round(back.rgb[4, :, 0] * 1023))) > 400
    imageio.write_image(tmp_path / "g8.heif", rgb, bit_depth=8)
    assert imageio.read_image(tmp_path / "g8.heif").bit_depth == 8


@pytest.mark.parametrize("ext", [".avif", ".heic"])
def test_avif_and_heic_keep_alpha_and_take_the_quality(small_model_path, tmp_path, capsys, ext) -> None:
    rgb = (_photo(40, 56, seed=2) * 255).astype(np.uint8)
    alpha = np.tile(np.linspace(0, 255, 56).astype(np.uint8), (40, 1))
    src = tmp_path / f"in{ext}"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(src, quality=95)
    read = imageio.read_image(src)
    assert read.alpha is not None and np.abs(read.alpha - alpha / 255.0).mean() < 3 / 255
    sizes = {}
    for q in (30, 95):
        dst = tmp_path / f"q{q}{ext}"
        _restore(src, dst, small_model_path, capsys, "--quality", str(q))
        back = imageio.read_image(dst)
        assert back.source_format == imageio.WRITE_FORMATS[ext] and back.alpha is not None
        assert np.abs(back.alpha - read.alpha).mean() < 3 / 255  # alpha passes through the restore
        sizes[q] = dst.stat().st_size
    assert sizes[30] < sizes[95]
    for bad in ("0", "101"):  # refused before the restore, with the range to use
        rc = main(["restore", str(src), "-o", str(tmp_path / f"bad{ext}"), "--model", str(small_model_path),
                   "--quality", bad])
        assert rc != 0 and "use a quality from 1 to 100" in capsys.readouterr().err
        assert not (tmp_path / f"bad{ext}").exists()
    with pytest.raises(imageio.ImageError, match="quality 0 is out of range"):  # the app's and batch's writer too
        imageio.write_image(tmp_path / f"app{ext}", read.rgb, quality=0)
    assert not (tmp_path / f"app{ext}").exists()


def test_a_heic_with_several_images_is_never_written_over(small_model_path, tmp_path, capsys) -> None:
    frames = [Image.fromarray((_photo(32, 32, seed=i) * 255).astype(np.uint8)) for i in range(2)]
    src = tmp_path / "burst.heic"
    frames[0].save(src, format="HEIF", save_all=True, append_images=frames[1:])
    before = src.read_bytes()
    err = _restore(src, tmp_path / "one.heic", small_model_path, capsys)
    assert "burst.heic holds 2 frames or pages; only the first is restored" in err
    rc = main(["restore", str(src), "-o", str(src), "--force", "--model", str(small_model_path)])
    assert rc != 0 and "would lose what it holds" in capsys.readouterr().err and src.read_bytes() == before


def test_an_iphone_photo_with_an_hdr_gain_map_is_never_written_over(small_model_path, tmp_path, capsys) -> None:
    """iPhones store an HDR gain map (Portrait mode: a depth map) beside the picture; the result keeps
    neither, so it is restored with a note and never saved over the photo."""
    frames = [Image.fromarray((_photo(32, 48, seed=i) * 255).astype(np.uint8)) for i in range(2)]
    two = tmp_path / "two.heic"
    frames[0].save(two, format="HEIF", save_all=True, append_images=frames[1:])
    src = tmp_path / "IMG_0003.HEIC"
    src.write_bytes(with_auxiliary_image(two.read_bytes(), "urn:com:apple:photo:2020:aux:hdrgainmap"))
    before = src.read_bytes()
    img = imageio.read_image(src)
    assert img.frames == 1 and img.extras == ("an HDR gain map",)  # one picture, plus its gain map
    assert np.array_equal(img.rgb, imageio.read_image(two).rgb)
    err = _restore(src, tmp_path / "out.heic", small_model_path, capsys)
    assert "note: IMG_0003.HEIC also holds an HDR gain map, which the restored image does not keep" in err
    rc = main(["restore", str(src), "-o", str(src), "--force", "--model", str(small_model_path)])
    assert rc != 0 and "would lose what it holds" in capsys.readouterr().err and src.read_bytes() == before
    depth = tmp_path / "portrait.heic"
    depth.write_bytes(with_auxiliary_image(two.read_bytes(), "urn:mpeg:hevc:2015:auxid:2"))
    assert imageio.read_image(depth).extras == ("a depth map",)


def test_an_ultra_hdr_jpeg_keeps_its_gain_map_by_never_being_written_over(small_model_path, tmp_path,
                                                                          capsys) -> None:
    """Android phones write Ultra HDR JPEGs: the gain map is a second JPEG behind the first (MPF), which
    Pillow reads as a plain JPEG. Saving the restore over it would drop the gain map without a word."""
    photo = Image.fromarray((_photo(48, 64) * 255).astype(np.uint8))
    gain = photo.convert("L").resize((32, 24))
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:hdrgm="http://ns.adobe.com/hdr-gain-map/1.0/" hdrgm:Version="1.0"/>'
           b"</rdf:RDF></x:xmpmeta>")
    src = tmp_path / "PXL_0001.jpg"
    photo.save(src, format="MPO", save_all=True, append_images=[gain], xmp=xmp)
    before = src.read_bytes()
    img = imageio.read_image(src)
    assert (img.source_format, img.frames, img.extras) == ("JPEG", 1, ("an HDR gain map",))
    err = _restore(src, tmp_path / "out.jpg", small_model_path, capsys)
    assert "PXL_0001.jpg also holds an HDR gain map" in err
    rc = main(["restore", str(src), "-o", str(src), "--force", "--model", str(small_model_path)])
    assert rc != 0 and "would lose what it holds" in capsys.readouterr().err and src.read_bytes() == before
    plain = tmp_path / "plain.jpg"
    photo.save(plain, quality=90)
    assert imageio.read_image(plain).extras == ()


def test_a_damaged_heic_gets_one_clear_error(small_model_path, tmp_path, capsys) -> None:
    good = tmp_path / "good.heic"
    Image.fromarray((_photo(64, 64) * 255).astype(np.uint8)).save(good, format="HEIF")
    bad = tmp_path / "cut.heic"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    rc = main(["restore", str(bad), "-o", str(tmp_path / "o.png"), "--model", str(small_model_path)])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("error: cannot read cut.heic") and "Traceback" not in err
    assert not (tmp_path / "o.png").exists()


def test_one_table_of_file_types() -> None:
    """Every suffix that can be written can be read, and the writers are what Pillow saves."""
    assert set(imageio.WRITE_FORMATS) <= imageio.READ_SUFFIXES
    assert {".heic", ".heif", ".avif"} <= set(imageio.WRITE_FORMATS)
    Image.init()
    assert set(imageio.WRITE_FORMATS.values()) <= set(Image.SAVE)


def _nclx(primaries: int, transfer: int) -> dict:
    return {"color_primaries": primaries, "transfer_characteristics": transfer, "matrix_coefficients": 6,
            "full_range_flag": 1}


def test_colours_a_heif_names_by_code_travel_as_an_icc_profile(small_model_path, tmp_path, capsys) -> None:
    """A Display P3 HEIF described by nclx alone (no ICC): the PNG written from it carries a profile
    that maps its colours as P3 does, where before it would have been read as sRGB."""
    src = tmp_path / "p3.heic"
    pixels = np.array([[[200, 150, 100], [128, 128, 128], [30, 200, 60]]], np.uint8).repeat(16, 0).repeat(16, 1)
    heif = pillow_heif.from_pillow(Image.fromarray(pixels))
    heif.save(src, quality=-1, chroma=444, nclx_profile=_nclx(12, 13))  # 12: Display P3, 13: sRGB curve
    icc = imageio.read_image(src).icc_profile
    assert icc is not None and "Display P3" in ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(icc)))
    _restore(src, tmp_path / "p3.png", small_model_path, capsys)
    assert Image.open(tmp_path / "p3.png").info.get("icc_profile") == icc

    # the profile maps P3 to sRGB as the published P3 -> sRGB matrix does (linear light)
    srgb = ImageCms.createProfile("sRGB")
    got = np.asarray(ImageCms.profileToProfile(Image.fromarray(pixels[:1, ::16]), ImageCms.ImageCmsProfile(
        io.BytesIO(icc)), srgb, renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)).astype(float)
    p3_to_srgb = np.array([[1.2249, -0.2247, 0.0], [-0.0420, 1.0419, 0.0], [-0.0197, -0.0786, 1.0979]])
    lin = _srgb_decode(pixels[:1, ::16] / 255.0) @ p3_to_srgb.T
    assert np.abs(got - _srgb_encode(lin) * 255).max() <= 1.0


def test_srgb_coded_heifs_get_no_profile_and_hdr_ones_are_never_written_over(small_model_path, tmp_path,
                                                                              capsys) -> None:
    rgb = Image.fromarray((_photo(32, 32) * 255).astype(np.uint8))
    plain, hdr = tmp_path / "plain.heic", tmp_path / "hdr.heic"
    pillow_heif.from_pillow(rgb).save(plain, nclx_profile=_nclx(1, 13))
    pillow_heif.from_pillow(rgb).save(hdr, nclx_profile=_nclx(9, 16))  # BT.2020 primaries, PQ
    assert imageio.read_image(plain).icc_profile is None and imageio.read_image(plain).extras == ()
    img = imageio.read_image(hdr)
    assert img.icc_profile is None and img.extras == ("HDR colour coding (PQ)",)
    before = hdr.read_bytes()
    rc = main(["restore", str(hdr), "-o", str(hdr), "--force", "--model", str(small_model_path)])
    assert rc != 0 and "HDR colour coding (PQ)" in capsys.readouterr().err and hdr.read_bytes() == before


def test_a_built_srgb_profile_is_littlecms_own_srgb() -> None:
    from lorair_desktop.colour_profile import rgb_profile

    ours = rgb_profile("sRGB check", [(0.64, 0.33), (0.30, 0.60), (0.15, 0.06)], (0.3127, 0.3290),
                       (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045))
    img = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    out = ImageCms.profileToProfile(img, ImageCms.ImageCmsProfile(io.BytesIO(ours)), ImageCms.createProfile("sRGB"),
                                    renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
    assert np.abs(np.asarray(out).astype(int) - np.asarray(img)).max() == 0
    assert imageio.icc_colour_space(ours) == "RGB" and imageio.icc_transfer(ours) == "srgb"
    from lorair_desktop.colour_profile import profile_for_nclx

    linear = dict(_nclx(12, 8), **{f"color_primary_{c}_{a}": v for c, a, v in (
        ("red", "x", 0.68), ("red", "y", 0.32), ("green", "x", 0.265), ("green", "y", 0.69), ("blue", "x", 0.15),
        ("blue", "y", 0.06), ("white", "x", 0.3127), ("white", "y", 0.329))})
    assert imageio.icc_transfer(profile_for_nclx(linear)) == "linear"  # restored on its sRGB encoding


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0, 1)
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * v ** (1 / 2.4) - 0.055)
