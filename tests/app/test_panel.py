"""The restore panel and settings on their own: expert rows from names, Auto vs manual, progress text,
and settings that survive a bad or hand-edited file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorair_desktop.app.restore_panel import RestorePanel, format_seconds
from lorair_desktop.app.settings import Settings

pytestmark = pytest.mark.usefixtures("qapp")


def test_rows_follow_the_model_and_auto_shows_the_router() -> None:
    p = RestorePanel()
    p.set_experts(["a", "b"])
    p.set_router_weights({"a": 0.25, "b": 0.75})
    assert [r.value for r in p.rows] == [0.25, 0.75] and not p.rows[0].slider.isEnabled()
    p.set_experts(["a", "b", "c"])  # e.g. the model finished loading after an analysis
    assert [r.name for r in p.rows] == ["a", "b", "c"] and [r.value for r in p.rows] == [0.25, 0.75, 0.0]
    p.set_applied_weights({"a": 0.25, "b": 0.75, "c": 0.0}, {"a": 0.5, "b": 0.0, "c": 0.0})
    assert p.applied_label.text() == "Applied: a 0.50"
    p.auto_check.setChecked(False)
    p.rows[2].spin.setValue(0.4)
    assert p.rows[2].slider.value() == 40
    assert p.experts_spec() == {"mode": "manual", "weights": {"a": 0.25, "b": 0.75, "c": 0.4}, "keep_router": False}
    p.auto_check.setChecked(True)
    assert p.experts_spec() == {"mode": "auto"}


def test_progress_text_and_busy_state() -> None:
    p = RestorePanel()
    p.set_experts(["a"])
    p.set_connected(True)
    assert p.restore_button.isEnabled() and not p.cancel_button.isEnabled()
    p.set_busy(True)
    assert not p.restore_button.isEnabled() and p.cancel_button.isEnabled()
    p.set_progress(3, 12, 65.0)
    assert p.progress.format() == "Tile 3 of 12 · about 1 min 05 s left"
    assert p.progress.value() / p.progress.maximum() == 0.25
    p.set_progress(0, 1, 30.0, 0.375)  # one tile, 3 of its 8 passes done: the bar moves
    assert p.progress.format() == "Tile 0 of 1 · about 30 s left"
    assert p.progress.value() / p.progress.maximum() == 0.375
    p.set_progress(12, 12, 0.0)
    assert p.progress.format() == "Tile 12 of 12"
    p.set_busy(False, "Done")
    assert p.restore_button.isEnabled() and p.progress.format() == "Done"
    assert format_seconds(4.4) == "4 s"


def test_settings_round_trip_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "settings.json"
    s = Settings.load(path)
    assert s.device == "auto" and s.margin == 32
    s.margin, s.feather, s.device = 48, 3.5, "cuda"
    for i in range(12):
        s.add_recent(tmp_path / f"{i}.png")
    s.add_recent(tmp_path / "3.png")
    s.save()
    t = Settings.load(path)
    assert (t.margin, t.feather, t.device) == (48, 3.5, "cuda")
    assert len(t.recent_files) == 10 and t.recent_files[0].endswith("3.png")
    path.write_text(json.dumps({"margin": "wide", "feather": 6, "device": "tpu", "unknown": 1, "ensemble": 3}))
    u = Settings.load(path)
    assert (u.margin, u.feather, u.device, u.ensemble) == (32, 6.0, "auto", 1)  # wrong types and values fall back
    path.write_text("{not json")
    assert Settings.load(path).margin == 32


def test_export_dialog_options() -> None:
    from lorair_desktop.app.export_dialog import ExportDialog

    d = ExportDialog(bit_depth=16, quality=80)
    assert d.suffix == ".png" and d.options().bit_depth == 16 and not d.quality_spin.isEnabled()
    d.format_combo.setCurrentText("JPEG")
    assert d.suffix == ".jpg" and d.quality_spin.isEnabled() and not d.depth_combo.isEnabled()
    assert (d.options().quality, d.options().bit_depth) == (80, 8)
    d.format_combo.setCurrentText("TIFF")
    d.depth_combo.setCurrentIndex(0)
    assert d.options().bit_depth == 8
    d.format_combo.setCurrentText("HEIF")  # a phone's format: lossy, and 10 bits deep
    d.depth_combo.setCurrentIndex(1)
    assert d.suffix == ".heic" and d.quality_spin.isEnabled() and d.options().bit_depth == 16
    d.format_combo.setCurrentText("AVIF")
    assert d.suffix == ".avif" and d.quality_spin.isEnabled() and d.options().bit_depth == 8


def test_open_save_and_batch_offer_phone_formats(tmp_path: Path) -> None:
    from lorair_desktop import imageio
    from lorair_desktop.app import batch, main_window

    assert "*.heic" in main_window.OPEN_FILTER and "*.avif" in main_window.OPEN_FILTER
    assert "HEIF (*.heic *.heif)" in main_window.SAVE_FILTER and "AVIF (*.avif)" in main_window.SAVE_FILTER
    for name in ("a.HEIC", "b.avif", "c.jpg", "notes.txt", "._c.jpg"):  # the last: a macOS resource fork
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in imageio.list_images(tmp_path)] == ["a.HEIC", "b.avif", "c.jpg"]
    out = tmp_path / "out"
    out.mkdir()
    assert batch.output_path(tmp_path / "a.HEIC", out, "").name == "a.heic"  # "Same as input" keeps HEIF
