"""An open image: its pixels in the file's depth, where it came from, and its edit history.

Pixels are stored as one (H, W, C) array, C = 3 (RGB) or 4 (RGBA), dtype uint8 or uint16. Reading and
writing go through `lorair_desktop.imageio`, the project's single implementation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import QObject, QRect, Signal

from .. import imageio
from .history import History, Step
from .pixels import from_float, to_float


@dataclass
class SaveOptions:
    quality: int = 95  # JPEG / WebP
    bit_depth: int | None = None  # None: the document's own depth (8 for JPEG/WebP)


@dataclass
class ImageMeta:
    bit_depth: int
    icc_profile: bytes | None = None
    exif: bytes | None = None
    source_format: str = ""
    extra: dict = field(default_factory=dict)
    grey: bool = False  # opened from a grey file: saved grey
    frames: int = 1  # frames or pages of the file it was opened from (only the first is open)
    converted: str = ""  # the file's colour model when converted on open ("CMYK"); the document is RGB
    caveat: str | None = None  # what the document does not hold of its file: never saved over it
    transfer: str = "srgb"  # "linear" for a linear-light profile: the worker encodes it for the model
    xmp: bytes | None = None  # keywords, rating, caption: saved with the image


class Document(QObject):
    changed = Signal(QRect)  # image-space region whose pixels changed
    history_changed = Signal()

    def __init__(self, pixels: np.ndarray, meta: ImageMeta, path: Path | None = None) -> None:
        super().__init__()
        if pixels.ndim != 3 or pixels.shape[2] not in (3, 4):
            raise ValueError(f"expected (H, W, 3|4) pixels, got {pixels.shape}")
        self.pixels = pixels
        self.original = pixels.copy()  # the 'before' of the before/after view
        self.meta = meta
        self.path = path
        self.history = History()

    @classmethod
    def open(cls, path: str | Path, max_pixels: int = imageio.DEFAULT_MAX_PIXELS) -> Document:
        path = Path(path)
        img = imageio.read_image(path, max_pixels=max_pixels)
        chans = [img.rgb] if img.alpha is None else [img.rgb, img.alpha[..., None]]
        pixels = from_float(np.concatenate(chans, axis=2), img.bit_depth)
        meta = ImageMeta(img.bit_depth, img.icc_profile, img.exif, img.source_format, dict(img.info), img.grey,
                         img.frames, img.converted, img.caveat(path.name), img.transfer, img.xmp)
        return cls(pixels, meta, path)

    # --- geometry -------------------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[2] == 4

    @property
    def rgb(self) -> np.ndarray:
        return self.pixels[..., :3]

    @property
    def alpha(self) -> np.ndarray | None:
        return self.pixels[..., 3] if self.has_alpha else None

    @property
    def dirty(self) -> bool:
        return self.history.dirty

    @property
    def title(self) -> str:
        return self.path.name if self.path else "Untitled"

    # --- edits ----------------------------------------------------------------------------------
    def apply_patch(self, label: str, x: int, y: int, rgb: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Write an RGB patch at (x, y) as one history step. Where `mask` is 0 the old pixels are kept
        bit for bit; alpha is never touched by a restore."""
        h, w = rgb.shape[:2]
        region = self.pixels[y : y + h, x : x + w]
        before = region.copy()
        new_rgb = rgb.astype(self.pixels.dtype, copy=False)
        if mask is not None:
            new_rgb = np.where(mask[..., None] > 0, new_rgb, before[..., :3])
        after = before.copy()
        after[..., :3] = new_rgb
        region[...] = after
        self.history.push(Step(label, x, y, before, after))
        self.changed.emit(QRect(x, y, w, h))
        self.history_changed.emit()

    def undo(self) -> None:
        step = self.history.undo()
        if step is not None:
            self._write(step, step.before)

    def redo(self) -> None:
        step = self.history.redo()
        if step is not None:
            self._write(step, step.after)

    def _write(self, step: Step, patch: np.ndarray) -> None:
        h, w = patch.shape[:2]
        self.pixels[step.y : step.y + h, step.x : step.x + w] = patch
        self.changed.emit(QRect(step.x, step.y, w, h))
        self.history_changed.emit()

    # --- saving ---------------------------------------------------------------------------------
    def save(self, path: str | Path, options: SaveOptions | None = None, as_copy: bool = False) -> None:
        """Write through imageio (atomic, ICC kept). `as_copy` (Export) leaves the document's path and
        clean state alone."""
        options = options or SaveOptions()
        path = Path(path)
        f = to_float(self.pixels)
        alpha = f[..., 3] if self.has_alpha else None
        imageio.write_image(
            path,
            f[..., :3],
            alpha,
            bit_depth=options.bit_depth or self.meta.bit_depth,
            icc_profile=self.meta.icc_profile,
            quality=options.quality,
            exif=self.meta.exif,
            grey=self.meta.grey,
            xmp=self.meta.xmp,
        )
        if not as_copy:
            self.meta.frames, self.meta.converted, self.meta.caveat = 1, "", None  # it now belongs to `path`
            self.meta.source_format = imageio.WRITE_FORMATS[path.suffix.lower()]
            self.path = path
            self.history.mark_clean()
            self.history_changed.emit()
