"""ICC profiles for the colour a file names by code instead of by profile.

A HEIF (or AVIF) may describe its colours with an ``nclx`` box alone: code points for the primaries
and the tone curve (ITU-T H.273), no ICC profile. A PNG or TIFF written from it without a profile is
read as sRGB, so a Display P3 photo would come out duller than it is. ``profile_for_nclx`` builds the
matching ICC v4 display profile (RGB primaries adapted to D50 by Bradford, parametric tone curves),
which the writers then carry like any profile read from a file.

numpy and the standard library only.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

D50 = (0.9642, 1.0, 0.8249)  # the ICC profile connection space's white
_BRADFORD = np.array([[0.8951, 0.2664, -0.1614], [-0.7502, 1.7135, 0.0367], [0.0389, -0.0685, 1.0296]])
# Tone curves by H.273 transfer_characteristics, as ICC parametric curve type 3 (g, a, b, c, d):
# Y = (aX + b)^g for X >= d, else cX: the decoding direction, from encoded values to linear light.
_SRGB_CURVE = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)
_BT709_CURVE = (1 / 0.45, 1 / 1.099, 0.099 / 1.099, 1 / 4.5, 0.081)
_CURVES = {13: _SRGB_CURVE, 1: _BT709_CURVE, 6: _BT709_CURVE, 14: _BT709_CURVE, 15: _BT709_CURVE,
           8: (1.0, 1.0, 0.0, 1.0, 0.0)}
_BT709_XY = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06), (0.3127, 0.3290))
_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}  # no ICC v4 matrix/curve profile describes them


def _xyz(x: float, y: float) -> np.ndarray:
    return np.array([x / y, 1.0, (1.0 - x - y) / y])


def rgb_to_xyz_d50(primaries: Sequence[tuple[float, float]],
                   white: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The 3x3 matrix from linear RGB to D50 XYZ (columns: the colorants, white scaled to Y = 1), and
    the Bradford adaptation from the white to D50 that it includes (the profile's 'chad' tag)."""
    p = np.stack([_xyz(*xy) for xy in primaries], axis=1)
    w = _xyz(*white)
    m = p * np.linalg.solve(p, w)[None, :]
    adapt = np.linalg.inv(_BRADFORD) @ np.diag((_BRADFORD @ np.array(D50)) / (_BRADFORD @ w)) @ _BRADFORD
    return adapt @ m, adapt


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(v: Sequence[float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)


def _mluc(text: str) -> bytes:
    s = text.encode("utf-16-be")
    return b"mluc\0\0\0\0" + struct.pack(">II", 1, 12) + b"enUS" + struct.pack(">II", len(s), 28) + s


def _para(curve: tuple[float, float, float, float, float]) -> bytes:
    g, a, b, c, d = curve
    if (a, b, c, d) == (1.0, 0.0, 1.0, 0.0):
        return b"para\0\0\0\0" + struct.pack(">H2x", 0) + _s15(g)
    return b"para\0\0\0\0" + struct.pack(">H2x", 3) + b"".join(_s15(v) for v in (g, a, b, c, d))


def rgb_profile(name: str, primaries: Sequence[tuple[float, float]], white: tuple[float, float],
                curve: tuple[float, float, float, float, float]) -> bytes:
    """An ICC v4 RGB display profile (matrix + tone curves) for these CIE xy primaries and white."""
    m, adapt = rgb_to_xyz_d50(primaries, white)
    trc = _para(curve)
    tags = [(b"desc", _mluc(name)), (b"cprt", _mluc("No copyright, use freely")),
            (b"wtpt", _xyz_tag(D50)), (b"chad", b"sf32\0\0\0\0" + b"".join(_s15(v) for v in adapt.ravel())),
            (b"rXYZ", _xyz_tag(m[:, 0])), (b"gXYZ", _xyz_tag(m[:, 1])), (b"bXYZ", _xyz_tag(m[:, 2])),
            (b"rTRC", trc), (b"gTRC", trc), (b"bTRC", trc)]
    offset = 128 + 4 + 12 * len(tags)
    table, data, placed = b"", b"", {}
    for sig, body in tags:
        if body not in placed:  # the three curves share one copy, as the format allows
            placed[body] = offset + len(data)
            data += body + b"\0" * (-len(body) % 4)
        table += sig + struct.pack(">II", placed[body], len(body))
    size = offset + len(data)
    header = (struct.pack(">I4sI", size, b"\0\0\0\0", 0x04300000) + b"mntrRGB XYZ " + b"\0" * 12 + b"acsp"
              + b"\0" * 24 + struct.pack(">I", 0) + b"".join(_s15(v) for v in D50) + b"\0" * 4 + b"\0" * 16
              + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + data


def profile_for_nclx(nclx: dict | None) -> bytes | None:
    """The ICC profile for a HEIF/AVIF ``nclx`` description as pillow-heif reads it (primaries as CIE
    xy, transfer_characteristics as its H.273 code), or None where none is needed (sRGB, or BT.709
    primaries with their curve, which viewers take as sRGB anyway) or none can say it (PQ, HLG)."""
    if not nclx:
        return None
    try:
        xy = [(float(nclx[f"color_primary_{c}_x"]), float(nclx[f"color_primary_{c}_y"]))
              for c in ("red", "green", "blue", "white")]
        transfer = int(nclx.get("transfer_characteristics", 13))
    except (KeyError, TypeError, ValueError):
        return None
    curve = _CURVES.get(transfer)
    if curve is None or not all(0 < v < 1 for pair in xy for v in pair):
        return None  # PQ / HLG (HDR) or unspecified: no profile rather than a wrong one
    if np.allclose(xy, _BT709_XY, atol=2e-3) and curve in (_SRGB_CURVE, _BT709_CURVE):
        return None
    return rgb_profile(nclx_name(nclx), xy[:3], xy[3], curve)


def hdr_coding(nclx: dict | None) -> str | None:
    """"PQ" or "HLG" where an nclx codes HDR light (no ICC profile says it), else None."""
    try:
        return _HDR_TRANSFERS.get(int((nclx or {}).get("transfer_characteristics", 0)))
    except (TypeError, ValueError):
        return None


def nclx_name(nclx: dict) -> str:
    names = {1: "BT.709", 9: "BT.2020", 11: "DCI-P3", 12: "Display P3", 22: "EBU 3213"}
    curves = {13: "sRGB curve", 1: "BT.709 curve", 6: "BT.709 curve", 8: "linear", 16: "PQ", 18: "HLG"}
    p, t = int(nclx.get("color_primaries", 2)), int(nclx.get("transfer_characteristics", 2))
    return f"{names.get(p, f'primaries {p}')}, {curves.get(t, f'transfer {t}')} (from the file's nclx)"
