"""What a restore sends and how its answer lands: the selection's bounding box plus a context margin,
cropped with its soft mask; the result written back as one history step, only where the mask is > 0.
No Qt widgets, no bridge: the arithmetic the tests check lives here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .document import Document
from .pixels import SAMPLE_OF_DTYPE
from .selection import bbox


@dataclass
class Region:
    x: int
    y: int
    width: int
    height: int
    rgb: np.ndarray  # (h, w, 3) contiguous, the document's dtype
    mask: np.ndarray | None  # (h, w) uint8 soft mask; None = the whole region

    @property
    def sample(self) -> str:
        return SAMPLE_OF_DTYPE[self.rgb.dtype]

    @property
    def pixels(self) -> int:
        return self.width * self.height


def plan_region(doc: Document, soft_mask: np.ndarray | None, margin: int) -> Region | None:
    """The crop to send. None if the mask selects nothing (a fully feathered-away selection)."""
    if soft_mask is None:
        return Region(0, 0, doc.width, doc.height, np.ascontiguousarray(doc.rgb), None)
    box = bbox(soft_mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    # The margin gives the network context around the selection; clamp to the image.
    x0, y0 = max(0, x0 - margin), max(0, y0 - margin)
    x1, y1 = min(doc.width, x1 + margin), min(doc.height, y1 + margin)
    rgb = np.ascontiguousarray(doc.rgb[y0:y1, x0:x1])
    mask = np.ascontiguousarray(soft_mask[y0:y1, x0:x1])
    # A mask of all 255 adds nothing but bytes and a blend.
    return Region(x0, y0, x1 - x0, y1 - y0, rgb, None if mask.min() == 255 else mask)


def result_array(region: Region, data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """The worker's RGB pixels for `region` as an (h, w, 3) array of the region's dtype."""
    a = np.frombuffer(data, dtype=region.rgb.dtype) if not isinstance(data, np.ndarray) else data
    expected = region.height * region.width * 3
    if a.size != expected:
        raise ValueError(f"the worker sent {a.size} samples, expected {expected} ({region.width}x{region.height}x3)")
    return a.reshape(region.height, region.width, 3)


def apply_result(doc: Document, region: Region, rgb: np.ndarray, label: str) -> None:
    """Land the (already mask-blended) result as one undoable step; pixels where the mask is 0 keep
    their exact bytes even if the worker's blend rounded them."""
    doc.apply_patch(label, region.x, region.y, rgb, region.mask)
