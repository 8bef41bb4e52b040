"""History and documents: undo returns the exact original bytes; the dirty flag; the byte budget."""

from __future__ import annotations

import numpy as np
import pytest

from lorair_desktop.app.document import Document, ImageMeta
from lorair_desktop.app.history import History, Step

pytestmark = pytest.mark.usefixtures("qapp")


def step(n: int, nbytes: int = 8) -> Step:
    return Step(f"s{n}", 0, 0, np.zeros(nbytes // 2, np.uint8), np.ones(nbytes // 2, np.uint8))


def test_history_undo_redo_and_clean_state() -> None:
    h = History()
    assert not h.dirty and not h.can_undo()
    h.push(step(1))
    h.push(step(2))
    assert h.dirty and h.undo_label() == "s2"
    assert h.undo().label == "s2" and h.redo_label() == "s2"
    h.mark_clean()
    assert not h.dirty
    h.redo()
    assert h.dirty
    h.undo()
    h.undo()
    h.push(step(3))  # cuts the redo branch that held the saved state
    assert not h.can_redo() and h.dirty and h.clean_index is None


def test_history_budget_drops_oldest() -> None:
    h = History(budget_bytes=30)
    for i in range(5):
        h.push(step(i, 10))
    assert [s.label for s in h.steps] == ["s2", "s3", "s4"] and h.index == 3
    assert h.dirty and h.clean_index is None
    big = History(budget_bytes=4)
    big.push(step(0, 10))
    assert len(big.steps) == 1  # the newest step is always kept


@pytest.mark.parametrize(("dtype", "channels"), [(np.uint8, 3), (np.uint16, 4)])
def test_document_patch_undo_is_exact(dtype: type, channels: int) -> None:
    rng = np.random.default_rng(1)
    top = np.iinfo(dtype).max
    px = rng.integers(0, top, (20, 30, channels), dtype=dtype, endpoint=True)
    doc = Document(px.copy(), ImageMeta(8 if dtype == np.uint8 else 16))
    changed = []
    doc.changed.connect(lambda r: changed.append((r.x(), r.y(), r.width(), r.height())))
    patch = rng.integers(0, top, (6, 8, 3), dtype=dtype, endpoint=True)
    mask = np.zeros((6, 8), np.uint8)
    mask[2:, 3:] = 200
    doc.apply_patch("restore", 10, 4, patch, mask)
    assert changed == [(10, 4, 8, 6)] and doc.dirty
    region = doc.pixels[4:10, 10:18]
    assert np.array_equal(region[2:, 3:, :3], patch[2:, 3:])  # inside the mask: the result
    assert np.array_equal(region[:2, :, :3], px[4:6, 10:18, :3])  # mask 0: exact old pixels
    if channels == 4:
        assert np.array_equal(doc.pixels[..., 3], px[..., 3])  # alpha untouched
    doc.undo()
    assert np.array_equal(doc.pixels, px) and not doc.dirty
    doc.redo()
    assert np.array_equal(doc.pixels[6:10, 13:18, :3], patch[2:, 3:])
    doc.undo()
    doc.undo()  # nothing more to undo: no change
    assert np.array_equal(doc.pixels, px)


def test_a_grey_document_is_saved_grey(tmp_path) -> None:
    """Opened from a grey file, restored as RGB, saved back grey (16 bits kept): the file stays what it was."""
    import cv2

    g16 = np.random.default_rng(4).integers(0, 65535, (12, 16), dtype=np.uint16)
    src, dst = tmp_path / "g.png", tmp_path / "saved.png"
    cv2.imwrite(str(src), g16)
    doc = Document.open(src)
    assert doc.meta.grey and doc.pixels.shape == (12, 16, 3)
    doc.save(dst)
    back = cv2.imread(str(dst), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back, g16)
