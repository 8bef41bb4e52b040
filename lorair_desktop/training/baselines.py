"""Classical baselines the evaluation compares against (issue 3's quality targets).

- ``cbm3d``: colour BM3D (the ``bm3d`` package) given the true noise level;
- ``wiener_deconvolve`` / ``wiener_oracle``: FFT Wiener deconvolution given the true blur kernel;
  the oracle picks, per image, the best constant noise-to-signal ratio against the clean image,
  so it is an upper bound of a parametric Wiener filter (beating it is a conservative claim);
- ``dehaze_dcp``: He et al.'s dark channel prior with guided-filter refinement of the transmission.

Images are float32 ``H x W x 3`` RGB arrays in ``[0, 1]``, like everywhere in ``training``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import cv2
import numpy as np

from lorair_desktop.errors import LoraIRError

__all__ = [
    "WIENER_NSR_GRID",
    "cbm3d",
    "dark_channel",
    "dehaze_dcp",
    "estimate_airlight",
    "guided_filter",
    "wiener_deconvolve",
    "wiener_oracle",
]

log = logging.getLogger(__name__)

#: Constant noise-to-signal ratios tried by ``wiener_oracle`` (log-spaced).
WIENER_NSR_GRID: tuple[float, ...] = tuple(float(v) for v in np.logspace(-4.5, -0.5, 17))


def _check(img: np.ndarray) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# noise


def cbm3d(img: np.ndarray, sigma255: float) -> np.ndarray:
    """Colour BM3D (``bm3d.bm3d_rgb``, YCbCr-opponent transform, both stages) with the true noise
    std ``sigma255`` on the 0–255 scale. Slow: about 10 s for 256² on one core."""
    try:
        import bm3d
    except ImportError as exc:  # dev extra, not needed by users
        raise LoraIRError("the CBM3D baseline needs the 'bm3d' package", "pip install -e '.[dev]'") from exc
    out = bm3d.bm3d_rgb(_check(img).astype(np.float64), sigma_psd=float(sigma255) / 255.0)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# blur


def _psf_to_otf(kernel: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Zero-pad the PSF to ``shape`` and circularly shift its centre to (0, 0), then FFT."""
    k = np.asarray(kernel, dtype=np.float64)
    kh, kw = k.shape
    big = np.zeros(shape, dtype=np.float64)
    big[:kh, :kw] = k
    big = np.roll(big, (-(kh // 2), -(kw // 2)), axis=(0, 1))
    return np.fft.rfft2(big)


def wiener_deconvolve(img: np.ndarray, kernel: np.ndarray, nsr: float, pad: int | None = None) -> np.ndarray:
    """Wiener deconvolution ``X = conj(H)·Y / (|H|² + nsr)`` per channel.

    The blurred image is reflect-padded by ``pad`` pixels (default ``max(32, 3·kernel size)``)
    before the FFT: the synthetic blur used reflect borders, and the padding keeps the FFT's
    circular wrap-around away from the crop."""
    y = _check(img).astype(np.float64)
    k = np.asarray(kernel, dtype=np.float64)
    if k.ndim != 2 or k.shape[0] % 2 == 0 or k.shape[1] % 2 == 0:
        raise ValueError(f"kernel must be 2-D with odd sides, got shape {k.shape}")
    k = k / k.sum()
    h, w = y.shape[:2]
    p = max(32, 3 * max(k.shape)) if pad is None else int(pad)
    p = min(p, h - 1, w - 1)  # np.pad 'reflect' cannot pad more than the image minus one
    yp = np.pad(y, ((p, p), (p, p), (0, 0)), mode="reflect")
    otf = _psf_to_otf(k, yp.shape[:2])
    filt = np.conj(otf) / (np.abs(otf) ** 2 + float(nsr))
    out = np.empty_like(yp)
    for c in range(3):
        out[..., c] = np.fft.irfft2(np.fft.rfft2(yp[..., c]) * filt, s=yp.shape[:2])
    return np.clip(out[p : p + h, p : p + w], 0.0, 1.0).astype(np.float32)


def wiener_oracle(
    img: np.ndarray, clean: np.ndarray, kernel: np.ndarray, grid: Sequence[float] = WIENER_NSR_GRID
) -> tuple[np.ndarray, float]:
    """Wiener deconvolution with the true kernel and the constant NSR from ``grid`` that gives
    the lowest MSE against ``clean``; returns ``(restored, nsr)``."""
    ref = _check(clean)
    best, best_mse, best_nsr = None, np.inf, float(grid[0])
    for nsr in grid:
        out = wiener_deconvolve(img, kernel, nsr)
        mse = float(np.mean((out.astype(np.float64) - ref) ** 2))
        if mse < best_mse:
            best, best_mse, best_nsr = out, mse, float(nsr)
    assert best is not None
    return best, best_nsr


# ----------------------------------------------------------------------------------------------
# haze


def dark_channel(img: np.ndarray, patch: int = 15) -> np.ndarray:
    """``min over a patch x patch window of min over channels`` (an erosion), ``H x W``."""
    m = _check(img).min(axis=2)
    return cv2.erode(m, cv2.getStructuringElement(cv2.MORPH_RECT, (patch, patch)), borderType=cv2.BORDER_REFLECT)


def estimate_airlight(img: np.ndarray, dark: np.ndarray, fraction: float = 0.001) -> np.ndarray:
    """Airlight A: among the ``fraction`` of pixels with the highest dark channel (the haziest),
    the input colour of the brightest one (He et al. 2009, §4.4)."""
    x = _check(img)
    n = max(1, round(dark.size * fraction))
    idx = np.argpartition(dark.ravel(), -n)[-n:]
    flat = x.reshape(-1, 3)
    best = idx[np.argmax(flat[idx].sum(axis=1))]
    return np.maximum(flat[best], 1e-3).astype(np.float32)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter with a grayscale guide: ``q = mean(a)·I + mean(b)`` where
    ``a = cov(I, p) / (var(I) + eps)``, ``b = mean(p) − a·mean(I)`` over (2r+1)² boxes."""
    ksize = (2 * radius + 1, 2 * radius + 1)

    def box(a: np.ndarray) -> np.ndarray:
        return cv2.boxFilter(a, -1, ksize, borderType=cv2.BORDER_REFLECT)

    i = guide.astype(np.float64)
    p = src.astype(np.float64)
    mi, mp = box(i), box(p)
    a = (box(i * p) - mi * mp) / (box(i * i) - mi * mi + eps)
    b = mp - a * mi
    return (box(a) * i + box(b)).astype(np.float32)


def dehaze_dcp(
    img: np.ndarray,
    patch: int = 15,
    omega: float = 0.95,
    t0: float = 0.1,
    radius: int = 40,
    eps: float = 1e-3,
) -> np.ndarray:
    """Dark channel prior dehazing (He, Sun, Tang, CVPR 2009 / TPAMI 2011).

    ``t̃ = 1 − ω · dark(I / A)`` (patch 15, ω = 0.95), refined by a guided filter on the input's
    luminance (radius 40, ε = 1e-3, in place of soft matting), then
    ``J = (I − A) / max(t, t0) + A`` with ``t0 = 0.1``."""
    x = _check(img)
    a = estimate_airlight(x, dark_channel(x, patch))
    t = 1.0 - omega * dark_channel(np.clip(x / a, 0.0, 1.0), patch)
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)
    t = np.clip(guided_filter(gray, t, radius, eps), 0.0, 1.0)
    j = (x - a) / np.maximum(t, t0)[..., None] + a
    return np.clip(j, 0.0, 1.0).astype(np.float32)
