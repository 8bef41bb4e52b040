"""Tile plans with overlap and smooth blending weights.

Each tile is run with its full overlap as context; its blending weight is 0 over the outer quarter of
the overlap (the part most affected by the tile's own border), then rises linearly to 1, so
neighbouring tiles cross-fade only where both are far from their borders. Image borders get weight 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    y0: int
    x0: int
    h: int
    w: int


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    n = -(-(length - overlap) // step)  # ceil: enough tiles to cover length
    starts = [min(i * step, length - tile) for i in range(n)]
    return sorted(set(starts))


def balanced_length(length: int, tile: int, overlap: int, multiple: int = 1) -> int:
    """The smallest tile side (a multiple of `multiple`, at most `tile`) that covers `length` with as
    few tiles as `tile` needs. Same tile count, less recomputed overlap: e.g. 1024 px in 384-px tiles
    with 16 px overlap need 3 tiles; 352-px tiles cover it too, so 1056 px are computed, not 1152."""
    if length <= tile:
        return length
    n = len(axis_starts(length, tile, overlap))
    side = -(-(length - overlap) // n) + overlap
    side = -(-side // multiple) * multiple
    return min(tile, max(side, 2 * overlap + multiple))


def plan_tiles(height: int, width: int, tile: int | tuple[int, int], overlap: int) -> list[Tile]:
    """Tiles covering height x width; `tile` is a square side or (rows, columns)."""
    tile_h, tile_w = (tile, tile) if isinstance(tile, int) else tile
    for side, length in ((tile_h, height), (tile_w, width)):
        # an axis one tile covers has no seams: a thin strip may be narrower than twice the overlap
        if length > side and overlap * 2 >= side:
            raise ValueError(f"overlap {overlap} must be less than half the tile size {side}")
    th, tw = min(tile_h, height), min(tile_w, width)
    return [
        Tile(y, x, th, tw)
        for y in axis_starts(height, tile_h, overlap)
        for x in axis_starts(width, tile_w, overlap)
    ]


def _ramp(n: int, overlap: int, lead: bool, trail: bool) -> np.ndarray:
    r = np.ones(n, dtype=np.float32)
    if overlap <= 0:
        return r
    d = np.arange(n, dtype=np.float32)
    skip = overlap / 4.0
    width = max(overlap / 2.0, 1.0)
    ramp_from_start = np.clip((d + 0.5 - skip) / width, 1e-4, 1.0)
    if lead:
        r = np.minimum(r, ramp_from_start)
    if trail:
        r = np.minimum(r, ramp_from_start[::-1])
    return r


def tile_profiles(t: Tile, height: int, width: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column weights of a tile; its blend weight is their outer product (separable)."""
    wy = _ramp(t.h, overlap, t.y0 > 0, t.y0 + t.h < height)
    wx = _ramp(t.w, overlap, t.x0 > 0, t.x0 + t.w < width)
    return wy, wx
