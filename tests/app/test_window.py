"""The main window against a real worker with the small model (offscreen Qt, real widgets and events):
restore through a drawn selection, undo, manual weights, cancel, save/export, bad input, batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPointF, Qt
from PySide6.QtTest import QTest

from lorair_desktop import imageio
from lorair_desktop.app.canvas import Tool
from lorair_desktop.app.document import SaveOptions
from lorair_desktop.app.main_window import MainWindow
from lorair_desktop.app.pixels import rgba_array
from lorair_desktop.app.region import plan_region
from lorair_desktop.app.selection import bbox
from lorair_desktop.bridge import ExpertSpec, JobRequest, JobStatus

from .conftest import make_photo, process_until

EXT = ".png"  # lossless, 8/16-bit, alpha: what these tests compare bit for bit


def write(
    path: Path,
    width: int = 96,
    height: int = 64,
    seed: int = 0,
    alpha: bool = False,
    bits: int = 8,
    icc: bytes | None = None,
) -> Path:
    a = make_photo(width, height, seed, alpha)
    imageio.write_image(path, a[..., :3], a[..., 3] if alpha else None, bit_depth=bits, icc_profile=icc)
    return path


def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def drag(
    window: MainWindow,
    tool: Tool,
    a: tuple[float, float],
    b: tuple[float, float],
    mods: Qt.KeyboardModifier = Qt.KeyboardModifier.NoModifier,
) -> None:
    c = window.canvas
    window.set_tool(tool)
    pa, pb = c.image_to_widget(QPointF(*a)).toPoint(), c.image_to_widget(QPointF(*b)).toPoint()
    QTest.mousePress(c, Qt.MouseButton.LeftButton, mods, pa)
    QTest.mouseMove(c, pb)
    QTest.mouseRelease(c, Qt.MouseButton.LeftButton, mods, pb)


def run_restore(window: MainWindow, timeout: float = 60) -> list:
    got: list = []
    window.controller.restored.connect(got.append)
    window.panel.restore_button.click()
    assert process_until(lambda: not window.controller.busy, timeout), "the restore did not finish"
    window.controller.restored.disconnect()
    return got


def test_restore_selection_blends_through_the_mask_and_undo_is_exact(window, worker, tmp_path: Path) -> None:
    path = write(tmp_path / f"photo{EXT}")
    original_bytes = path.read_bytes()
    assert window.open_file(path)
    doc = window.doc
    orig = doc.pixels.copy()
    window.feather_spin.setValue(4.0)
    window.panel.margin_spin.setValue(8)
    drag(window, Tool.ELLIPSE, (20, 12), (70, 52))
    assert window.selection.mask is not None
    soft = window.selection.soft_mask(4.0)
    region = plan_region(doc, soft, 8)
    assert region.mask is not None and (region.width, region.height) < (doc.width + 1, doc.height + 1)

    results = run_restore(window)
    assert len(results) == 1, window.message_bar.text
    assert doc.dirty and window.isWindowModified()
    assert window.act_undo.isEnabled() and "Restore" in window.act_undo.text()

    # Outside the selection: the exact original bytes.
    outside = soft == 0
    assert np.array_equal(doc.pixels[outside], orig[outside])
    # Inside: the worker's own masked answer for the same request, and the blend formula of the protocol.
    client = worker.client()
    masked = client.restore(JobRequest(region.rgb, region.width, region.height, "RGB", "u8", mask=region.mask))
    plain = client.restore(JobRequest(region.rgb, region.width, region.height, "RGB", "u8"))
    m_out = np.frombuffer(masked.pixels, np.uint8).reshape(region.height, region.width, 3)
    raw = np.frombuffer(plain.pixels, np.uint8).reshape(region.height, region.width, 3).astype(np.float64)
    crop = doc.pixels[region.y : region.y + region.height, region.x : region.x + region.width]
    inside = region.mask > 0
    assert np.array_equal(crop[inside], m_out[inside])
    src = region.rgb.astype(np.float64)
    blend = src + region.mask[..., None] / 255.0 * (raw - src)
    assert np.abs(crop.astype(np.float64) - blend)[inside].max() <= 1.0
    assert (crop[region.mask == 255] != region.rgb[region.mask == 255]).any()  # it did change something
    assert np.array_equal(rgba_array(window.canvas.display_image)[..., :3], doc.pixels)  # the view follows

    restored = doc.pixels.copy()
    QTest.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert np.array_equal(doc.pixels, orig) and not doc.dirty
    assert np.array_equal(rgba_array(window.canvas.display_image)[..., :3], orig)
    QTest.keyClick(window, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert np.array_equal(doc.pixels, restored) and doc.dirty
    assert path.read_bytes() == original_bytes  # nothing is written without an explicit Save


def test_analyze_then_manual_weights_reach_the_worker_exactly(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"a{EXT}", 64, 64, seed=1))
    panel = window.panel
    assert panel.experts == list(window.link.info.model.experts)  # names from the worker, not the app
    panel.analyze_button.click()
    assert process_until(lambda: not window.link.pending("analyze"), 60)
    router = panel.router_weights
    assert set(router) == set(panel.experts) and abs(sum(router.values()) - 1) < 1e-3
    assert panel.chart.router == router
    assert [r.value for r in panel.rows] == [round(router[n], 2) for n in panel.experts]  # Auto shows them
    assert not panel.rows[0].slider.isEnabled()

    panel.auto_check.setChecked(False)  # manual starts from the router's weights
    assert [r.value for r in panel.rows] == [round(router[n], 2) for n in panel.experts]
    assert panel.rows[0].slider.isEnabled()
    wanted = {n: 0.0 for n in panel.experts}
    wanted[panel.experts[0]] = 0.37
    wanted[panel.experts[-1]] = 0.8
    for r in panel.rows:
        r.slider.setValue(round(wanted[r.name] * 100))  # as a user drags the sliders
    assert panel.experts_spec() == {"mode": "manual", "weights": wanted, "keep_router": False}
    panel.set_ensemble(2)  # Advanced ▸ Passes

    results = run_restore(window)
    assert len(results) == 1, window.message_bar.text
    assert results[0].header.applied_weights == wanted
    assert results[0].header.ensemble == 2
    assert panel.chart.applied == wanted
    assert f"{panel.experts[-1]} 0.80" in panel.applied_label.text()


def test_cancel_leaves_the_image_untouched(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"big{EXT}", 256, 256, seed=2))
    orig = window.doc.pixels.copy()
    window.panel.tile_spin.setValue(64)  # ~49 tiles: time to cancel between them
    seen: list = []

    def on_progress(op: object, st: JobStatus) -> None:
        seen.append(st.tile)
        if st.tiles > 1 and window.panel.cancel_button.isEnabled():
            window.panel.cancel_button.click()

    window.link.progress.connect(on_progress)
    window.controller.restore()
    assert process_until(lambda: not window.controller.busy, 60)
    window.link.progress.disconnect(on_progress)
    assert window.panel.progress.format() == "Cancelled"
    assert np.array_equal(window.doc.pixels, orig) and not window.doc.dirty
    assert not window.message_bar.isVisible()  # a cancel is not an error
    # Immediately after pressing Restore, too.
    window.controller.restore()
    window.panel.cancel_button.click()
    assert process_until(lambda: not window.controller.busy, 60)
    assert window.panel.progress.format() == "Cancelled" and not window.doc.dirty


@pytest.mark.parametrize(("bits", "alpha"), [(8, False), (16, True)])
def test_save_and_export_read_back_equal(window, tmp_path: Path, bits: int, alpha: bool) -> None:
    icc = srgb_profile()
    src = write(tmp_path / f"in{EXT}", 80, 48, seed=3, alpha=alpha, bits=bits, icc=icc)
    assert window.open_file(src)
    doc = window.doc
    assert doc.meta.icc_profile == icc and "ICC" in window.image_label.text()
    assert doc.pixels.dtype == (np.uint16 if bits == 16 else np.uint8) and doc.has_alpha == alpha
    window.select_all()
    assert run_restore(window), window.message_bar.text
    if alpha:
        assert np.array_equal(doc.pixels[..., 3], doc.original[..., 3])  # alpha passes through
    out = tmp_path / f"saved{EXT}"
    window.ask_save_path = lambda title, suggested: out  # type: ignore[method-assign]
    assert window.save_as()
    assert doc.path == out and not doc.dirty and not window.act_save.isEnabled()
    back = imageio.read_image(out)
    assert back.bit_depth == bits and back.icc_profile == icc  # the colour profile travels along
    top = 65535.0 if bits == 16 else 255.0
    assert np.array_equal(np.round(back.rgb * top), doc.pixels[..., :3].astype(np.float64))
    if alpha:
        assert np.array_equal(np.round(back.alpha * top), doc.pixels[..., 3].astype(np.float64))
    jpg = tmp_path / "copy.jpg"
    assert window.export_to(jpg, SaveOptions(quality=92))
    assert doc.path == out  # an export is a copy: the document still belongs to its file
    j = imageio.read_image(jpg)
    ref = doc.pixels[..., :3] / top
    assert j.bit_depth == 8 and j.rgb.shape == ref.shape and j.icc_profile == icc
    assert np.corrcoef(j.rgb.ravel(), ref.ravel())[0, 1] > 0.9  # lossy, but this image


def test_a_ten_bit_phone_photo_restores_and_saves_as_heif_at_its_depth(window, tmp_path: Path) -> None:
    src = write(tmp_path / "IMG_0002.heic", 80, 48, seed=8, bits=16)  # written as a 10-bit HEIF
    before = src.read_bytes()
    assert window.open_file(src)
    doc = window.doc
    assert doc.pixels.dtype == np.uint16 and "10-bit RGB · HEIF" in window.image_label.text()  # held at 16
    window.select_all()
    assert run_restore(window), window.message_bar.text
    assert window.save() and doc.path == src and not doc.dirty  # Save keeps the phone's format
    back = imageio.read_image(src)
    assert back.source_format == "HEIF" and back.bit_depth == 16 and src.read_bytes() != before
    restored = doc.pixels[..., :3] / 65535.0
    assert np.corrcoef(back.rgb.ravel(), restored.ravel())[0, 1] > 0.9  # lossy, but what the window shows


def test_a_multi_page_file_is_never_saved_over(window, tmp_path: Path) -> None:
    """A 3-page TIFF opens its first page with a warning; Save asks for a new name and the window
    refuses to write that one page over the file that holds all three."""
    from PIL import Image

    pages = [Image.fromarray((make_photo(64, 48, seed=i)[..., :3] * 255).astype(np.uint8)) for i in range(3)]
    src = tmp_path / "pages.tif"
    pages[0].save(src, save_all=True, append_images=pages[1:])
    before = src.read_bytes()
    assert window.open_file(src)
    assert window.message_bar.kind == "warning" and "holds 3 frames or pages" in window.message_bar.text
    assert "8-bit RGB · TIFF · page 1 of 3" in window.image_label.text()
    asked: list[Path] = []

    def ask(title: str, suggested: Path) -> Path:
        asked.append(suggested)
        return src  # the user picks the original's name anyway

    window.ask_save_path = ask  # type: ignore[method-assign]
    window.select_all()
    assert run_restore(window), window.message_bar.text
    assert not window.save() and asked and asked[0] != src  # Save went to Save As, suggesting a new name
    assert "would lose what it holds" in window.message_bar.text and src.read_bytes() == before
    out = tmp_path / "restored.tif"
    window.ask_save_path = lambda title, suggested: out  # type: ignore[method-assign]
    assert window.save() and window.doc.path == out
    assert getattr(Image.open(out), "n_frames", 1) == 1 and "page 1 of" not in window.image_label.text()
    assert window.save()  # the new file holds one image: Save writes it in place
    assert src.read_bytes() == before


def test_a_cmyk_photo_opens_in_rgb_and_save_asks_for_a_new_file(window, tmp_path: Path) -> None:
    from PIL import Image

    src = tmp_path / "print.jpg"
    Image.fromarray((make_photo(64, 48)[..., :3] * 255).astype(np.uint8)).convert("CMYK").save(src)
    before = src.read_bytes()
    assert window.open_file(src)
    assert window.message_bar.kind == "warning" and "print.jpg is CMYK" in window.message_bar.text
    assert "8-bit RGB (from CMYK) · JPEG · ICC" in window.image_label.text()
    out = tmp_path / "print-rgb.png"
    window.ask_save_path = lambda title, suggested: out  # type: ignore[method-assign]
    assert window.save() and window.doc.path == out and src.read_bytes() == before
    assert Image.open(out).mode == "RGB" and "8-bit RGB · PNG · ICC" in window.image_label.text()


def test_save_keeps_a_photos_exif(window, tmp_path: Path) -> None:
    """Its camera and date survive Save (the orientation tag reset: the pixels were turned upright),
    and its XMP."""
    from PIL import Image

    im = Image.fromarray((make_photo(64, 48)[..., :3] * 255).astype(np.uint8))
    exif = im.getexif()
    exif[0x010F] = "LoRA-IR test camera"
    exif[0x0112] = 6
    src = tmp_path / "photo.jpg"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:li>lake at dawn</rdf:li></x:xmpmeta>'
    im.save(src, quality=95, exif=exif.tobytes(), xmp=xmp)
    assert window.open_file(src)
    window.select_all()
    assert run_restore(window), window.message_bar.text
    assert window.save()
    back = Image.open(src).getexif()
    assert back.get(0x010F) == "LoRA-IR test camera" and back.get(0x0112, 1) == 1
    assert Image.open(src).info.get("xmp") == xmp  # keywords, rating and caption too


def test_bad_files_keep_the_current_image_and_say_why(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"good{EXT}"))
    good = window.doc
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    assert not window.open_file(broken)
    assert window.doc is good
    assert window.message_bar.kind == "error" and "broken.jpg" in window.message_bar.text
    assert "damaged" in window.message_bar.hint.text()
    assert not window.open_file(tmp_path / "missing.tif")
    assert "does not exist" in window.message_bar.text
    assert not window.export_to(tmp_path / "x.gif", SaveOptions())
    assert "Cannot write" in window.message_bar.text and ".png" in window.message_bar.hint.text()
    assert not window.export_to(tmp_path / "no" / "such" / "dir.png", SaveOptions())
    assert window.message_bar.kind == "error"


def test_region_over_the_worker_limit_is_refused_in_the_window(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"p{EXT}"))
    window.link.info.limits["max_pixels"] = 1000  # as a worker started with --max-pixels 1000
    window.controller.restore()
    assert not window.controller.busy and not window.doc.dirty
    assert "above the worker's limit" in window.message_bar.text
    assert "smaller area" in window.message_bar.hint.text()


def test_unsaved_changes_are_asked_about_on_close(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"u{EXT}"))
    assert run_restore(window)
    asked: list = []
    window.ask_unsaved = lambda: asked.append(1) or "cancel"  # type: ignore[method-assign]
    assert not window.close()
    assert window.isVisible() and asked == [1]
    assert not window.open_file(tmp_path / f"u{EXT}")  # opening another image asks too
    assert window.doc.dirty


def test_auto_analyze_on_selection_change(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"s{EXT}", seed=4))
    window.panel.auto_analyze.setChecked(True)
    assert window.settings.auto_analyze
    assert not window.panel.router_weights
    drag(window, Tool.RECT, (5, 5), (60, 40))
    assert process_until(lambda: bool(window.panel.router_weights), 30)
    assert set(window.panel.router_weights) == set(window.panel.experts)


def test_batch_restores_a_folder_and_reports_failures(window, tmp_path: Path) -> None:
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    dst.mkdir()
    write(src / f"one{EXT}", 48, 40, seed=5)
    write(src / f"two{EXT}", 40, 48, seed=6, bits=16)
    (src / "bad.png").write_bytes(b"not an image")
    from PIL import Image

    grey_pages = [Image.fromarray((make_photo(32, 32, seed=7 + i)[..., 1] * 255).astype(np.uint8)) for i in range(2)]
    grey_pages[0].save(src / "three.tif", save_all=True, append_images=grey_pages[1:])  # a 2-page grey scan
    camera = Image.fromarray((make_photo(40, 32, seed=9)[..., :3] * 255).astype(np.uint8))
    exif = camera.getexif()
    exif[0x010F] = "LoRA-IR test camera"
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:li>lake at dawn</rdf:li></x:xmpmeta>'
    camera.save(src / "four.jpg", quality=95, exif=exif.tobytes(), xmp=xmp)  # the camera's data and keywords
    (dst / f"one{EXT}").write_bytes(b"keep me")  # an existing file is never replaced
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    window.show_batch()
    dlg = window.controller.batch_dialog
    dlg.input_edit.setText(str(src))
    dlg.output_edit.setText(str(src))
    dlg.start_button.click()
    assert "input folder" in dlg.summary.toPlainText() and not dlg.running  # refuses to write over originals
    dlg.output_edit.setText(str(dst))
    dlg.start_button.click()
    assert dlg.running
    assert process_until(lambda: not dlg.running, 120)
    text = dlg.summary.toPlainText()
    assert text.startswith("4 restored, 1 failed") and "bad.png" in text
    assert "three.tif holds 2 frames or pages; only the first is restored" in text
    assert (dst / f"one{EXT}").read_bytes() == b"keep me"
    assert sorted(p.name for p in dst.iterdir()) == sorted([f"one{EXT}", f"one-1{EXT}", f"two{EXT}", "three.tif",
                                                            "four.jpg"])
    four = Image.open(dst / "four.jpg")  # batch dropped both before
    assert four.getexif().get(0x010F) == "LoRA-IR test camera" and four.info.get("xmp") == xmp
    assert imageio.read_image(dst / f"two{EXT}").bit_depth == 16
    assert imageio.read_image(dst / "three.tif").grey  # grey in, grey out
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert window.message_bar.kind == "warning" and "1 of 5" in window.message_bar.text
    dlg.close()


def test_settings_persist(window, tmp_path: Path) -> None:
    from lorair_desktop.app.settings import Settings

    assert window.open_file(write(tmp_path / f"r{EXT}"))
    window.panel.margin_spin.setValue(40)
    window.panel.tile_spin.setValue(256)
    window.panel.set_ensemble(4)
    window.feather_spin.setValue(12.5)
    window.set_device("cpu")  # the test worker already runs on the CPU: no restart
    window.close()
    s = Settings.load(window.settings.path)
    assert (s.margin, s.tile, s.feather, s.device, s.ensemble) == (40, 256, 12.5, "cpu", 4)
    assert s.recent_files[0] == str((tmp_path / f"r{EXT}").resolve())
    assert s.last_folder == str(tmp_path) and s.window_geometry and s.window_state


def test_the_worker_request_uses_the_document_depth(window, tmp_path: Path) -> None:
    assert window.open_file(write(tmp_path / f"d{EXT}", 32, 24, bits=16))
    region = plan_region(window.doc, None, 0)
    req = window.controller._request(window.doc, region, True)
    assert (req.order, req.sample, req.width, req.height, req.mask) == ("RGB", "u16", 32, 24, None)
    assert req.experts == ExpertSpec.auto() and len(memoryview(req.pixels).cast("B")) == 32 * 24 * 3 * 2
    assert req.transfer == "srgb"
    window.doc.meta.transfer = "linear"  # as opened from a file with a gamma-1.0 profile
    assert window.controller._request(window.doc, region, True).header().transfer == "linear"


def test_switching_to_a_model_that_cannot_load_keeps_the_working_one(window) -> None:
    combo = window.panel.model_combo
    current = window.link.info.model.name
    values = [combo.itemData(i) for i in range(combo.count())]
    # The worker's list plus the loaded checkpoint; lorair-setting1 ships no weights (fetched on demand).
    assert current in values and "lorair-setting1" in values
    assert "(untrained)" in combo.itemText(values.index("lorair-setting1"))
    combo.setCurrentIndex(values.index("lorair-setting1"))  # as the user picks it
    assert process_until(lambda: window.message_bar.isVisible() and not window.controller.busy, 60)
    assert window.message_bar.kind == "error" and window.message_bar.hint.text()
    assert process_until(lambda: combo.currentData() == current, 10)  # back to what the worker really has
    assert window.link.info.model.state == "ready" and window.panel.restore_button.isEnabled()


def test_paste_restore_and_copy_back_through_the_clipboard(window, tmp_path: Path) -> None:
    """A screenshot pasted as a new image, restored, and copied back at its depth: the whole image, a
    rectangle as it is, an ellipse with transparent corners; Save asks for a name."""
    from PySide6.QtGui import QGuiApplication, QImage

    from lorair_desktop.app.pixels import from_qimage, to_qimage

    clip = QGuiApplication.clipboard()
    clip.setImage(QImage())
    assert not window.paste_image() and "no image" in window.message_bar.text and window.doc is None
    shot = (make_photo(90, 60, seed=9) * 255 + 0.5).astype(np.uint8)
    argb = to_qimage(shot).convertToFormat(QImage.Format.Format_ARGB32)  # as screenshots come: opaque ARGB
    clip.setImage(argb)
    assert window.paste_image() and window.doc is not None and window.doc.path is None
    doc = window.doc
    assert np.array_equal(doc.pixels, shot) and not doc.has_alpha  # the opaque alpha left out
    assert "8-bit RGB · clipboard" in window.image_label.text()
    window.select_all()
    assert run_restore(window), window.message_bar.text
    assert doc.dirty and not np.array_equal(doc.pixels, shot)

    assert window.copy_image()
    assert np.array_equal(from_qimage(clip.image()), doc.pixels)  # what the window shows now
    drag(window, Tool.RECT, (10, 5), (50, 35))
    x0, y0, x1, y1 = bbox(window.selection.mask)
    assert window.copy_image()
    assert np.array_equal(from_qimage(clip.image()), doc.pixels[y0:y1, x0:x1])
    drag(window, Tool.ELLIPSE, (10, 5), (50, 35))
    x0, y0, x1, y1 = bbox(window.selection.mask)
    assert window.copy_image()
    got = from_qimage(clip.image())
    inside = window.selection.mask[y0:y1, x0:x1] == 255
    assert got.shape == (y1 - y0, x1 - x0, 4) and got[0, 0, 3] == 0 and (got[..., 3][inside] == 255).all()
    assert np.array_equal(got[..., :3][inside], doc.pixels[y0:y1, x0:x1][inside])

    out = tmp_path / "pasted.png"
    asked: list[Path] = []
    window.ask_save_path = lambda title, suggested: asked.append(suggested) or out  # type: ignore[method-assign]
    assert window.save() and asked and window.doc.path == out  # an untitled image: Save went to Save As
    assert np.array_equal(np.round(imageio.read_image(out).rgb * 255), doc.pixels.astype(np.float64))

    window.canvas.image_dropped.emit(argb)  # dropped from a browser: the same path as a paste
    assert window.doc.path is None and np.array_equal(window.doc.pixels, shot)
    assert "8-bit RGB · dropped image" in window.image_label.text()

    deep = (make_photo(40, 30, seed=10) * 65535 + 0.5).astype(np.uint16)
    clip.setImage(to_qimage(deep))  # a 16-bit copy from another editor keeps its depth
    assert window.paste_image() and window.doc.pixels.dtype == np.uint16
    assert np.array_equal(window.doc.pixels, deep)
    grey16 = QImage(32, 20, QImage.Format.Format_Grayscale16)  # a 16-bit grey scan or mask
    levels = np.arange(32 * 20, dtype=np.uint16).reshape(20, 32) * 97
    view = np.frombuffer(grey16.bits(), np.uint16).reshape(20, grey16.bytesPerLine() // 2)
    view[:, :32] = levels
    clip.setImage(grey16)
    assert window.paste_image() and window.doc.pixels.dtype == np.uint16
    assert np.array_equal(window.doc.pixels, np.repeat(levels[..., None], 3, axis=2))  # not cut to 8 bits
