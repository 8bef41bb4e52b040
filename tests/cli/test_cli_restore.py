"""`lorair restore/analyze/models` end to end on small files, and every bad input of issue 2."""

import hashlib
import io
import json
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageCms

from lorair_desktop import imageio
from lorair_desktop.cli import main
from lorair_desktop.core.router import context_boxes


def _rgb(h: int = 40, w: int = 56, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def test_restore_png_reports_weights_and_keeps_input(small_model_path, tmp_path, capsys) -> None:
    src, dst = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(_rgb()).save(src)
    before = _sha(src)
    rc, out, _ = _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "--json"], capsys)
    assert rc == 0
    info = json.loads(out)
    assert set(info["router_weights"]) == {"noise", "blur", "jpeg", "rain", "haze", "low-light"}
    assert info["applied_weights"] == info["router_weights"]
    assert info["prior_steered"] is False  # auto: the router's own prior
    assert _sha(src) == before
    assert Image.open(dst).size == (56, 40)


def test_manual_experts_reach_the_model(small_model_path, tmp_path, capsys) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(_rgb()).save(src)
    rc, out, _ = _run(["restore", str(src), "-o", str(tmp_path / "o.png"), "--model", str(small_model_path),
                       "--experts", "noise=0.8,jpeg=0.3", "--json"], capsys)
    assert rc == 0
    applied = json.loads(out)["applied_weights"]
    assert applied == {"noise": 0.8, "blur": 0.0, "jpeg": 0.3, "rain": 0.0, "haze": 0.0, "low-light": 0.0}
    assert json.loads(out)["prior_steered"] is False  # this test model has no prototype priors to steer with


def test_a_manual_mix_steers_the_shipped_models_prior(tmp_path, capsys) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(_rgb()).save(src)
    args = ["restore", str(src), "--model", "lorair-lite", "--experts"]
    rc, out, err = _run([*args, "haze=1,rain=1", "-o", str(tmp_path / "a.png")], capsys)
    assert rc == 0 and "(the prior steered to this mix)" in err
    rc, out, _ = _run([*args, "auto", "--json", "-o", str(tmp_path / "b.png")], capsys)
    assert rc == 0 and json.loads(out)["prior_steered"] is False


def test_ensemble_passes_and_rain_keeps_to_four(small_model_path, tmp_path, capsys) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(_rgb()).save(src)
    base = ["restore", str(src), "--model", str(small_model_path), "--json"]
    for experts, asked, got in (("noise=1", "8", 8), ("rain=0.5,noise=0.5", "8", 4), ("noise=1", "1", 1)):
        rc, out, _ = _run([*base, "-o", str(tmp_path / f"{got}-{asked}.png"), "--experts", experts,
                           "--ensemble", asked], capsys)
        assert rc == 0 and json.loads(out)["ensemble"] == got
    a = np.asarray(Image.open(tmp_path / "8-8.png"), np.int16)
    b = np.asarray(Image.open(tmp_path / "1-1.png"), np.int16)
    assert np.abs(a - b).max() > 0  # the passes change the result
    with pytest.raises(SystemExit) as ei:  # argparse: not a pass count
        main([*base, "-o", str(tmp_path / "bad.png"), "--ensemble", "3"])
    assert ei.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_rgba_alpha_passes_through_untouched(small_model_path, tmp_path, capsys) -> None:
    rgba = np.dstack([_rgb(), np.linspace(0, 255, 40 * 56).reshape(40, 56).astype(np.uint8)])
    src, dst = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(rgba, "RGBA").save(src)
    assert _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"], capsys)[0] == 0
    out = np.asarray(Image.open(dst))
    assert out.shape == (40, 56, 4)
    assert np.array_equal(out[..., 3], rgba[..., 3])


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_16bit_in_gives_16bit_out_with_alpha_and_icc(small_model_path, tmp_path, capsys, ext) -> None:
    rng = np.random.default_rng(1)
    rgba16 = (rng.random((36, 44, 4)) * 65535).astype(np.uint16)
    src, dst = tmp_path / f"in{ext}", tmp_path / f"out{ext}"
    cv2.imwrite(str(src), rgba16[..., [2, 1, 0, 3]])
    assert imageio.read_image(src).bit_depth == 16
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    img = imageio.read_image(src)
    imageio.write_image(src, img.rgb, img.alpha, 16, icc)  # re-save with a profile
    assert _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"], capsys)[0] == 0
    back = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (36, 44, 4)
    assert np.array_equal(back[..., 3], rgba16[..., 3])
    assert imageio.read_image(dst).icc_profile == icc
    assert len(np.unique(back[..., :3])) > 1000  # real 16-bit values, not 8-bit ones scaled up


def _grey_icc() -> bytes:
    """The header of a grey display profile and an empty tag table: enough to be carried, and told
    apart from an RGB one by its colour space."""
    head = bytearray(128)
    head[8:12] = bytes([2, 0x10, 0, 0])
    head[12:24] = b"mntrGRAYXYZ "
    head[36:40] = b"acsp"
    body = bytes(head) + (0).to_bytes(4, "big")
    return len(body).to_bytes(4, "big") + body[4:]


def _grey(h: int = 40, w: int = 56) -> np.ndarray:
    return _rgb(h, w)[..., 1]


@pytest.mark.parametrize(("ext", "mode"), [(".png", "L"), (".png", "LA"), (".jpg", "L"), (".tif", "LA")])
def test_grey_in_gives_grey_out_with_its_profile(small_model_path, tmp_path, capsys, ext, mode) -> None:
    """A grey photo comes back grey (one channel, the restored mean of three) with its grey profile;
    its alpha untouched. Written as RGB it would triple in size and carry a profile that does not fit."""
    grey = _grey()
    px = grey if mode == "L" else np.dstack([grey, np.linspace(0, 255, grey.size).reshape(grey.shape)]).astype(np.uint8)
    src, dst = tmp_path / f"g{ext}", tmp_path / f"g_out{ext}"
    Image.fromarray(px, mode).save(src, icc_profile=_grey_icc())
    assert imageio.read_image(src).grey
    assert _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"], capsys)[0] == 0
    out = Image.open(dst)
    assert out.mode == mode and out.info.get("icc_profile") == _grey_icc()
    if mode == "LA":
        assert np.array_equal(np.asarray(out)[..., 1], px[..., 1])


def test_the_grey_written_is_the_mean_of_the_three(tmp_path) -> None:
    rgb = np.random.default_rng(3).random((8, 8, 3)).astype(np.float32)
    imageio.write_image(tmp_path / "mean.png", rgb, grey=True)
    got = np.asarray(Image.open(tmp_path / "mean.png"), np.float32)
    assert np.abs(got - rgb.mean(axis=2) * 255).max() <= 0.5


def test_grey_16bit_stays_16bit_grey_and_webp_gets_rgb_without_the_grey_profile(
        small_model_path, tmp_path, capsys) -> None:
    g16 = (np.random.default_rng(2).random((36, 44)) * 65535).astype(np.uint16)
    src = tmp_path / "g16.png"
    cv2.imwrite(str(src), g16)
    img = imageio.read_image(src)
    assert img.grey and img.bit_depth == 16 and np.array_equal(img.rgb[..., 0], img.rgb[..., 2])
    for ext in (".png", ".tif"):
        dst = tmp_path / f"out16{ext}"
        assert _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"], capsys)[0] == 0
        back = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
        assert back.dtype == np.uint16 and back.shape == (36, 44)
        assert len(np.unique(back)) > 1000  # real 16-bit values
    rgb, alpha = np.random.default_rng(5).random((2, 10, 12, 3)).astype(np.float32)
    for ext in (".png", ".tif"):  # 16-bit grey with alpha: written so that it reads back (as RGBA)
        imageio.write_image(tmp_path / f"la16{ext}", rgb, alpha[..., 0], 16, grey=True)
        back = imageio.read_image(tmp_path / f"la16{ext}")
        assert back.bit_depth == 16 and np.abs(back.alpha - alpha[..., 0]).max() < 1e-4
        assert np.abs(back.rgb - rgb.mean(axis=2, keepdims=True)).max() < 1e-4
    web = tmp_path / "g.webp"
    Image.fromarray(_grey()).save(tmp_path / "g8.png", icc_profile=_grey_icc())
    assert _run(["restore", str(tmp_path / "g8.png"), "-o", str(web), "--model", str(small_model_path), "-q"],
                capsys)[0] == 0
    out = Image.open(web)
    assert out.mode == "RGB" and "icc_profile" not in out.info  # WebP holds no grey; no mismatched profile


@pytest.mark.filterwarnings("error::UserWarning")  # a damaged file gets one error, no warning beside it
def test_tiffs_pillow_cannot_open_are_read_through_tifffile(small_model_path, tmp_path, capsys) -> None:
    """16-bit grey with alpha (as GIMP writes it) and planar RGB: Pillow cannot identify the first."""
    import tifffile

    la = (np.random.default_rng(6).random((30, 40, 2)) * 65535).astype(np.uint16)
    src, dst = tmp_path / "la.tif", tmp_path / "la_out.tif"
    tifffile.imwrite(src, la, photometric="minisblack", extrasamples=("unassalpha",))
    img = imageio.read_image(src)
    assert img.bit_depth == 16 and img.grey and np.array_equal(np.round(img.alpha * 65535), la[..., 1])
    assert _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"], capsys)[0] == 0
    back = imageio.read_image(dst)
    assert back.bit_depth == 16 and np.array_equal(np.round(back.alpha * 65535), la[..., 1])
    planar = (np.random.default_rng(7).random((3, 30, 40)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "planar.tif", planar, photometric="rgb", planarconfig="separate")
    img = imageio.read_image(tmp_path / "planar.tif")
    assert np.array_equal(np.round(img.rgb * 65535), np.moveaxis(planar, 0, -1))
    # LZW, GIMP's and Krita's default TIFF compression (OpenCV read these wrong: scrambled, alpha dropped)
    tifffile.imwrite(tmp_path / "la_lzw.tif", la, photometric="minisblack", extrasamples=("unassalpha",),
                     compression="lzw")
    img = imageio.read_image(tmp_path / "la_lzw.tif")
    assert img.grey and np.array_equal(np.round(img.rgb[..., 0] * 65535), la[..., 0])
    assert np.array_equal(np.round(img.alpha * 65535), la[..., 1])
    tifffile.imwrite(tmp_path / "planar_lzw.tif", planar, photometric="rgb", planarconfig="separate",
                     compression="lzw")
    img = imageio.read_image(tmp_path / "planar_lzw.tif")
    assert img.bit_depth == 16 and np.array_equal(np.round(img.rgb * 65535), np.moveaxis(planar, 0, -1))
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((8, 8, 2), np.float32), photometric="minisblack",
                     extrasamples=("unassalpha",))
    err = _bad(["restore", str(tmp_path / "f.tif"), "-o", str(tmp_path / "f.png"), "--model", str(small_model_path)],
               capsys)
    assert "float32 samples" in err and "16-bit" in err
    (tmp_path / "cut.tif").write_bytes(src.read_bytes()[:200])
    err = _bad(["restore", str(tmp_path / "cut.tif"), "-o", str(tmp_path / "c.png"), "--model", str(small_model_path)],
               capsys)
    assert "cut.tif" in err


def test_multi_page_input_restores_the_first_page_and_is_never_written_over(small_model_path, tmp_path,
                                                                               capsys) -> None:
    pages = [Image.fromarray(_rgb(seed=i)) for i in range(3)]
    src = tmp_path / "pages.tif"
    pages[0].save(src, save_all=True, append_images=pages[1:])
    before = src.read_bytes()
    rc, _, err = _run(["restore", str(src), "-o", str(tmp_path / "o.png"), "--model", str(small_model_path), "-q"],
                      capsys)
    assert rc == 0 and "pages.tif holds 3 frames or pages; only the first is restored" in err
    err = _bad(["restore", str(src), "-o", str(src), "--force", "--model", str(small_model_path)], capsys)
    assert "would lose what it holds" in err and src.read_bytes() == before


def test_cmyk_is_restored_in_srgb_and_never_written_over(small_model_path, tmp_path, capsys) -> None:
    """Print files and stock photos come as CMYK: converted to sRGB on read (through their profile
    where it is usable), written RGB and tagged sRGB, the original never replaced."""
    import tifffile

    rgb = _rgb(40, 60)
    src = tmp_path / "print.jpg"
    Image.fromarray(rgb).convert("CMYK").save(src, quality=95)
    img = imageio.read_image(src)
    assert img.converted == "CMYK" and img.alpha is None and not img.grey
    assert np.abs(img.rgb * 255 - rgb).mean() < 3  # Pillow's CMYK is the plain inverse of its RGB
    assert "converted without a profile" in img.caveat("print.jpg")
    out = tmp_path / "print-restored.jpg"
    rc, _, err = _run(["restore", str(src), "-o", str(out), "--model", str(small_model_path), "-q"], capsys)
    assert rc == 0 and "note: print.jpg is CMYK; it is restored and written as RGB" in err
    written = Image.open(out)
    assert written.mode == "RGB" and imageio.icc_colour_space(written.info.get("icc_profile")) == "RGB"
    before = src.read_bytes()
    err = _bad(["restore", str(src), "-o", str(src), "--force", "--model", str(small_model_path)], capsys)
    assert "would lose what it holds" in err and src.read_bytes() == before
    # a profile littlecms cannot parse: the plain conversion, and the caveat says so
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "bad.tif", icc_profile=b"\0" * 16 + b"CMYK" + b"\0" * 108)
    img = imageio.read_image(tmp_path / "bad.tif")
    assert np.array_equal(np.round(img.rgb * 255), rgb) and "without a profile" in img.caveat("bad.tif")
    # 16-bit CMYK: Pillow reads it as 8-bit CMYK, converted the same way
    c16 = (np.random.default_rng(3).random((8, 8, 4)) * 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "c16.tif", c16, photometric="separated")
    img = imageio.read_image(tmp_path / "c16.tif")
    plain = np.asarray(Image.fromarray((c16 >> 8).astype(np.uint8), "CMYK").convert("RGB"))
    assert img.converted == "CMYK" and np.array_equal(np.round(img.rgb * 255), plain)
    # what only tifffile opens (16-bit grey + alpha) in a photometric other than grey or RGB is refused,
    # not read as if it were (white-is-zero would come back inverted)
    tifffile.imwrite(tmp_path / "w16.tif", np.zeros((8, 8, 2), np.uint16), photometric="miniswhite",
                     extrasamples=("unassalpha",))
    err = _bad(["restore", str(tmp_path / "w16.tif"), "-o", str(tmp_path / "w.png"), "--model",
                str(small_model_path)], capsys)
    assert "16-bit MINISWHITE TIFF" in err


def _icc_with_curve(space: bytes, tag: bytes, curve: bytes) -> bytes:
    """A minimal ICC profile: the header's colour space and one tone-curve tag (all icc_transfer reads)."""
    header = bytearray(128)
    header[16:20] = space
    table = struct.pack(">I4sII", 1, tag, 144, len(curve))
    body = bytes(header) + table + curve
    return struct.pack(">I", len(body)) + body[4:]


@pytest.mark.parametrize("space, tag, curve, transfer", [
    (b"RGB ", b"rTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100), "linear"),  # Krita's V2 g10
    (b"GRAY", b"kTRC", b"curv" + bytes(4) + struct.pack(">I", 0), "linear"),  # the identity
    (b"RGB ", b"rTRC", b"para" + bytes(4) + struct.pack(">HHi", 0, 0, 0x10000), "linear"),  # V4 g10
    (b"RGB ", b"rTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0233), "srgb"),  # gamma 2.2
    (b"RGB ", b"rTRC", b"para" + bytes(4) + struct.pack(">HHi", 3, 0, 0x26666), "srgb"),  # the sRGB curve
    (b"RGB ", b"rTRC", b"curv", "srgb"),  # cut short
])
def test_icc_transfer(space: bytes, tag: bytes, curve: bytes, transfer: str) -> None:
    assert imageio.icc_transfer(_icc_with_curve(space, tag, curve)) == transfer
    assert imageio.icc_transfer(imageio.SRGB_ICC) == "srgb" and imageio.icc_transfer(None) == "srgb"


def test_a_linear_light_file_is_restored_on_its_srgb_encoding(small_model_path, tmp_path, capsys) -> None:
    """A 16-bit PNG tagged with a gamma-1.0 profile: restoring it gives the linear version of what the
    same picture, gamma-encoded, restores to; the profile is kept."""
    from lorair_desktop.worker.pixels import srgb_decode, srgb_encode

    rng = np.random.default_rng(4)
    encoded = (rng.random((32, 40, 3)) * 0.8 + 0.1).astype(np.float32)
    icc = _icc_with_curve(b"RGB ", b"rTRC", b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100))
    imageio.write_image(tmp_path / "lin.png", srgb_decode(encoded), None, 16, icc)
    lin = imageio.read_image(tmp_path / "lin.png")
    assert lin.transfer == "linear" and lin.icc_profile == icc
    imageio.write_image(tmp_path / "enc.png", srgb_encode(lin.rgb), None, 16)
    m = ["--model", str(small_model_path), "-q"]
    for name in ("lin", "enc"):
        assert _run(["restore", str(tmp_path / f"{name}.png"), "-o", str(tmp_path / f"{name}-out.png"), *m],
                    capsys)[0] == 0
    got, ref = imageio.read_image(tmp_path / "lin-out.png"), imageio.read_image(tmp_path / "enc-out.png")
    assert got.icc_profile == icc
    np.testing.assert_allclose(got.rgb, srgb_decode(ref.rgb), atol=2e-3)
    assert np.abs(got.rgb - lin.rgb).max() > 0.01  # the model did change it


def test_jpeg_icc_and_exif_orientation(small_model_path, tmp_path, capsys) -> None:
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    im = Image.fromarray(_rgb(30, 50))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "LoRA-IR test camera"  # Make: other tags survive the restore
    src, dst = tmp_path / "p.jpg", tmp_path / "p_out.jpg"
    im.save(src, quality=90, icc_profile=icc, exif=exif.tobytes())
    assert _run(["restore", str(src), "-o", str(dst), "--model", str(small_model_path), "-q"], capsys)[0] == 0
    out = Image.open(dst)
    assert out.size == (30, 50)  # upright: width and height swapped by the orientation
    assert out.info.get("icc_profile") == icc
    assert out.getexif().get(0x0112, 1) == 1
    assert out.getexif().get(0x010F) == "LoRA-IR test camera"


def test_png_regression_read_after_exif_probe(tmp_path) -> None:
    # Pillow closes the PNG's file handle once the EXIF is probed: the 16-bit check must not need it.
    p = tmp_path / "x.png"
    Image.fromarray(_rgb()).save(p)
    img = imageio.read_image(p)
    assert img.bit_depth == 8 and img.rgb.shape == (40, 56, 3)


def test_webp_and_palette_input(small_model_path, tmp_path, capsys) -> None:
    src = tmp_path / "pal.png"
    Image.fromarray(_rgb()).convert("P").save(src)
    rc, _, _ = _run(["restore", str(src), "-o", str(tmp_path / "o.webp"), "--model", str(small_model_path), "-q"],
                    capsys)
    assert rc == 0 and Image.open(tmp_path / "o.webp").format == "WEBP"


def _bad(args: list[str], capsys) -> str:
    rc, _, err = _run(args, capsys)
    assert rc != 0
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert lines and lines[0].startswith("error: ") and len(lines) <= 2, err
    assert "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(small_model_path, tmp_path, capsys) -> None:
    m = ["--model", str(small_model_path)]
    good = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(good)
    good_sha = _sha(good)
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    truncated = tmp_path / "trunc.jpg"
    buf = io.BytesIO()
    Image.fromarray(_rgb()).save(buf, "JPEG")
    truncated.write_bytes(buf.getvalue()[:200])
    out = str(tmp_path / "out.png")
    assert "damaged" in _bad(["restore", str(corrupt), "-o", out, *m], capsys)
    assert "error" in _bad(["restore", str(truncated), "-o", out, *m], capsys)
    assert "limit" in _bad(["restore", str(good), "-o", out, "--max-pixels", "100", *m], capsys)
    assert "unknown expert" in _bad(["restore", str(good), "-o", out, "--experts", "snow=1", *m], capsys)
    assert "between 0" in _bad(["restore", str(good), "-o", out, "--experts", "noise=-1", *m], capsys)
    assert "not a number" in _bad(["restore", str(good), "-o", out, "--experts", "noise=lots", *m], capsys)
    assert "is the input" in _bad(["restore", str(good), "-o", str(good), *m], capsys)
    assert "does not exist" in _bad(["restore", str(tmp_path / "nope.png"), "-o", out, *m], capsys)
    assert "cannot write" in _bad(["restore", str(good), "-o", str(tmp_path / "o.bmp2"), *m], capsys)
    assert _sha(good) == good_sha
    assert not (tmp_path / "out.png").exists()


def test_bad_checkpoint_and_untrained_preset(small_model_path, tmp_path, capsys, monkeypatch) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.png"
    Image.fromarray(_rgb()).save(good)
    tensors = load_file(str(small_model_path))
    with safe_open(str(small_model_path), "pt") as f:
        meta = f.metadata()
    tensors["net.intro.conv.weight"] = tensors["net.intro.conv.weight"][:8]
    broken = tmp_path / "broken.safetensors"
    save_file(tensors, str(broken), metadata=meta)
    err = _bad(["restore", str(good), "-o", str(tmp_path / "o.png"), "--model", str(broken)], capsys)
    assert "net.intro.conv.weight" in err
    res = tmp_path / "res"
    (res / "model_configs").mkdir(parents=True)
    from lorair_desktop import DEFAULT_MODEL

    src = Path(imageio.__file__).resolve().parents[1] / "resources" / "model_configs" / f"{DEFAULT_MODEL}.json"
    (res / "model_configs" / f"{DEFAULT_MODEL}.json").write_text(src.read_text())  # the preset, no weights
    monkeypatch.setenv("LORAIR_RESOURCES", str(res))
    assert "no trained weights" in _bad(["restore", str(good), "-o", str(tmp_path / "o.png")], capsys)


def test_analyze_and_models(small_model_path, tmp_path, capsys) -> None:
    src = tmp_path / "in.png"
    Image.fromarray(_rgb()).save(src)
    rc, out, _ = _run(["analyze", str(src), "--model", str(small_model_path), "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["top_expert"] == max(data["router_weights"], key=data["router_weights"].get)
    assert abs(sum(data["router_weights"].values()) - 1) < 1e-5
    assert data["router_crops"] == 0  # smaller than 1.5 router contexts: routed whole
    big = tmp_path / "big.png"
    Image.fromarray(np.tile(_rgb(), (8, 10, 1))).save(big)
    rc, out, _ = _run(["analyze", str(big), "--model", str(small_model_path)], capsys)
    h, w = np.asarray(Image.open(big)).shape[:2]
    assert rc == 0 and f"(router: {len(context_boxes(h, w, 256))} crops of 256 px)" in out
    rc, out, _ = _run(["models", "--json"], capsys)
    assert rc == 0 and any(r["name"] == "lorair-compact" for r in json.loads(out))
