"""Seeded synthesis of the six degradations the experts learn to undo.

Every image here is a float32 RGB array ``H x W x 3`` with values in ``[0, 1]``; every function
returns the same. Randomness only ever comes from the ``np.random.Generator`` passed in, so a
fixed seed reproduces a degradation bit for bit.

Each degradation has three layers:

* a fixed-parameter physical model (``add_gaussian_noise``, ``gaussian_blur``, ``jpeg``,
  ``add_rain``, ``haze``, ``low_light`` ...), used for evaluation rows;
* ``sample_<name>_params(rng, ...)``: draws training parameters from the documented ranges;
* ``degrade_<name>(img, rng, **params)``: applies the model, sampling whatever is not given.

``DEGRADATIONS`` maps the expert names (``EXPERTS``) to ``(img, rng) -> degraded`` callables.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "DEGRADATIONS",
    "EXPERTS",
    "MIXED_ORDER",
    "add_gaussian_noise",
    "add_poisson_gaussian_noise",
    "add_rain",
    "apply_kernel",
    "blur_kernel",
    "defocus_kernel",
    "degrade",
    "degrade_blur",
    "degrade_haze",
    "degrade_jpeg",
    "degrade_low_light",
    "degrade_mixed",
    "degrade_noise",
    "degrade_rain",
    "depth_map",
    "gaussian_blur",
    "gaussian_kernel",
    "haze",
    "jpeg",
    "low_light",
    "luminance",
    "make_mixed_pair",
    "make_training_pair",
    "motion_kernel",
    "quantize8",
    "rain_layer",
    "sample_blur_params",
    "sample_haze_params",
    "sample_jpeg_params",
    "sample_low_light_params",
    "sample_noise_params",
    "sample_rain_params",
]

Image = np.ndarray
Params = dict[str, Any]

#: Expert names, in label order (label index = position in this tuple).
EXPERTS: tuple[str, ...] = ("noise", "blur", "jpeg", "rain", "haze", "low-light")

#: Order in which ``degrade_mixed`` applies degradations: scene (haze, rain), optics (blur),
#: exposure and sensor (low-light, noise), then compression.
MIXED_ORDER: tuple[str, ...] = ("haze", "rain", "blur", "low-light", "noise", "jpeg")

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# helpers


def _check(img: Image) -> Image:
    """Return ``img`` as a contiguous float32 ``H x W x 3`` array (no copy when already so)."""
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 RGB image, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _finish(img: Image) -> Image:
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def _resolve(params: Mapping[str, Any], required: Sequence[str], sampler: Callable[[], Params]) -> Params:
    """Use ``params`` when every required key is given, else fill the gaps with sampled values."""
    if all(k in params for k in required):
        return dict(params)
    return {**sampler(), **params}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def quantize8(img: Image) -> Image:
    """Round to the 8-bit grid, ``round(255·x)/255``, as a saved image would be."""
    return (np.round(np.clip(img, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def luminance(img: Image) -> np.ndarray:
    """Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B`` as an ``H x W`` float32 array."""
    return (_check(img) @ _LUMA).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# noise


def add_gaussian_noise(img: Image, sigma255: float, rng: np.random.Generator, clip: bool = True) -> Image:
    """Additive white Gaussian noise: ``y = x + n``, ``n ~ N(0, (sigma255/255)^2)`` i.i.d. per
    pixel and channel. Clipped to ``[0, 1]`` unless ``clip`` is False."""
    x = _check(img)
    y = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma255 / 255.0)
    return _finish(y) if clip else y.astype(np.float32)


def add_poisson_gaussian_noise(img: Image, rng: np.random.Generator, a: float, b: float) -> Image:
    """Camera-like heteroscedastic noise: ``y = x + sqrt(a·x + b^2) · N(0, 1)``.

    ``a`` is the shot-noise gain (1 / photons at full scale), ``b`` the read-noise std, both on
    the ``[0, 1]`` scale. Typical ranges: ``a ∈ [5e-4, 4e-2]``, ``b ∈ [2/255, 15/255]``.
    """
    x = _check(img)
    std = np.sqrt(np.float32(a) * np.clip(x, 0.0, 1.0) + np.float32(b * b))
    return _finish(x + std * rng.standard_normal(x.shape, dtype=np.float32))


def sample_noise_params(rng: np.random.Generator, kind: str | None = None) -> Params:
    """Noise parameters: with p = 0.7 ``{"kind": "gaussian", "sigma255": U[5, 55]}``, else
    ``{"kind": "poisson_gaussian", "a": logU[5e-4, 4e-2], "b": U[2, 15]/255}``; ``kind``
    forces one of the two."""
    if kind not in (None, "gaussian", "poisson_gaussian"):
        raise ValueError(f"unknown noise kind {kind!r}")
    if kind == "gaussian" or (kind is None and rng.random() < 0.7):
        return {"kind": "gaussian", "sigma255": float(rng.uniform(5.0, 55.0))}
    return {
        "kind": "poisson_gaussian",
        "a": _log_uniform(rng, 5e-4, 4e-2),
        "b": float(rng.uniform(2.0, 15.0) / 255.0),
    }


def degrade_noise(img: Image, rng: np.random.Generator, **params: Any) -> Image:
    """Noise expert: Gaussian ``σ ∈ [5, 55]/255`` or Poisson–Gaussian ``y = x + N(0, a·x + b²)``
    (see ``sample_noise_params``). Params: ``kind`` plus ``sigma255`` or ``a`` and ``b``."""
    kind = params.get("kind", "gaussian" if "sigma255" in params else None)
    required = ("sigma255",) if kind == "gaussian" else ("kind", "a", "b")
    p = _resolve(params, required, lambda: sample_noise_params(rng, kind))
    if p.get("kind", "gaussian") == "gaussian":
        return add_gaussian_noise(img, p["sigma255"], rng)
    return add_poisson_gaussian_noise(img, rng, p["a"], p["b"])


# ----------------------------------------------------------------------------------------------
# blur


def gaussian_kernel(
    sigma: float, sigma2: float | None = None, theta: float = 0.0, size: int | None = None
) -> np.ndarray:
    """Gaussian PSF ``k(u) ∝ exp(-½ uᵀ Σ⁻¹ u)``; isotropic when ``sigma2`` is None, else with
    axis stds ``sigma``, ``sigma2`` rotated by ``theta`` radians. Odd size (default
    ``2·ceil(3·max σ) + 1``), non-negative, sums to 1."""
    s1 = max(float(sigma), 1e-3)
    s2 = s1 if sigma2 is None else max(float(sigma2), 1e-3)
    if size is None:
        size = 2 * math.ceil(3.0 * max(s1, s2)) + 1
    size = max(3, size | 1)
    r = size // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    u = c * xx + s * yy
    v = -s * xx + c * yy
    k = np.exp(-0.5 * ((u / s1) ** 2 + (v / s2) ** 2))
    return (k / k.sum()).astype(np.float32)


def defocus_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """Defocus (pill-box) PSF: uniform disk of ``radius`` pixels, anti-aliased by supersampling
    the pixel area, normalised to sum 1."""
    radius = max(float(radius), 0.5)
    r = math.ceil(radius)
    n = (2 * r + 1) * supersample
    c = (np.arange(n, dtype=np.float64) + 0.5) / supersample - (r + 0.5)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    k = disk.reshape(2 * r + 1, supersample, 2 * r + 1, supersample).mean(axis=(1, 3))
    return (k / k.sum()).astype(np.float32)


def motion_kernel(length: float, angle_deg: float, thickness: float = 1.0) -> np.ndarray:
    """Linear motion PSF: a uniform line segment of ``length`` pixels through the centre at
    ``angle_deg`` (0° = horizontal, counter-clockwise), rasterised by bilinear splatting of
    densely spaced points (so it is exactly centred and symmetric); a ``thickness`` above 1
    widens it with a Gaussian of σ = (thickness − 1)/2. Non-negative, sums to 1."""
    length = max(float(length), 1.0)
    r = math.ceil(length / 2.0 + thickness) + 1
    size = 2 * r + 1
    a = math.radians(angle_deg)
    t = np.linspace(-0.5, 0.5, max(2, math.ceil(length * 16))) * length
    xs = r + t * math.cos(a)
    ys = r - t * math.sin(a)
    x0 = np.floor(xs).astype(int)
    y0 = np.floor(ys).astype(int)
    fx = xs - x0
    fy = ys - y0
    k = np.zeros((size, size), dtype=np.float64)
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            np.add.at(k, (y0 + dy, x0 + dx), wy * wx)
    if thickness > 1.0:
        k = cv2.GaussianBlur(k, (0, 0), (thickness - 1.0) / 2.0, borderType=cv2.BORDER_CONSTANT)
    k = np.clip(k, 0.0, None)
    return (k / k.sum()).astype(np.float32)


def apply_kernel(img: Image, kernel: np.ndarray) -> Image:
    """True 2-D convolution ``y = k * x`` per channel with reflect padding (cv2.filter2D with the
    flipped kernel, since filter2D correlates)."""
    x = _check(img)
    k = np.ascontiguousarray(np.flip(np.asarray(kernel, dtype=np.float32)))
    return _finish(cv2.filter2D(x, -1, k, borderType=cv2.BORDER_REFLECT_101))


def gaussian_blur(
    img: Image, sigma: float, rng: np.random.Generator | None = None, noise_sigma255: float = 0.0
) -> tuple[Image, np.ndarray]:
    """Isotropic Gaussian blur ``y = k_σ * x (+ n)``; returns ``(blurred, kernel)`` so a
    non-blind baseline (e.g. Wiener) can use the exact PSF. Noise needs ``rng``."""
    k = gaussian_kernel(sigma)
    y = apply_kernel(img, k)
    if noise_sigma255 > 0:
        if rng is None:
            raise ValueError("noise_sigma255 > 0 needs an rng")
        y = add_gaussian_noise(y, noise_sigma255, rng)
    return y, k


def blur_kernel(params: Mapping[str, Any]) -> np.ndarray:
    """Build the PSF described by blur params (see ``sample_blur_params``)."""
    kind = params["kind"]
    if kind == "gaussian":
        return gaussian_kernel(params["sigma"], params.get("sigma2"), params.get("theta", 0.0))
    if kind == "defocus":
        return defocus_kernel(params["radius"])
    if kind == "motion":
        return motion_kernel(params["length"], params["angle"], params.get("thickness", 1.0))
    raise ValueError(f"unknown blur kind {kind!r}")


_BLUR_REQUIRED = {"gaussian": ("sigma",), "defocus": ("radius",), "motion": ("length", "angle")}


def sample_blur_params(rng: np.random.Generator, kind: str | None = None) -> Params:
    """Blur parameters. Kind: gaussian (p = 0.45; σ ∈ U[0.7, 3.0], anisotropic with p = 0.4:
    σ₂ = σ·U[0.4, 1], θ ∈ U[0, π)), defocus (p = 0.25; radius U[1.2, 4.5]) or motion
    (p = 0.3; length U[5, 17] px, angle U[0, 180)°, thickness U[1, 1.5]); ``kind`` forces one.
    Then light noise ``noise_sigma255 ∈ U[0, 2]``."""
    if kind is not None and kind not in _BLUR_REQUIRED:
        raise ValueError(f"unknown blur kind {kind!r}")
    u = rng.random() if kind is None else {"gaussian": 0.0, "defocus": 0.5, "motion": 0.9}[kind]
    p: Params
    if u < 0.45:
        sigma = float(rng.uniform(0.7, 3.0))
        p = {"kind": "gaussian", "sigma": sigma}
        if rng.random() < 0.4:
            p["sigma2"] = sigma * float(rng.uniform(0.4, 1.0))
            p["theta"] = float(rng.uniform(0.0, math.pi))
    elif u < 0.7:
        p = {"kind": "defocus", "radius": float(rng.uniform(1.2, 4.5))}
    else:
        p = {
            "kind": "motion",
            "length": float(rng.uniform(5.0, 17.0)),
            "angle": float(rng.uniform(0.0, 180.0)),
            "thickness": float(rng.uniform(1.0, 1.5)),
        }
    p["noise_sigma255"] = float(rng.uniform(0.0, 2.0))
    return p


def degrade_blur(img: Image, rng: np.random.Generator, **params: Any) -> Image:
    """Blur expert: ``y = k * x + n`` with a Gaussian, defocus-disk or linear-motion PSF ``k``
    (sum 1, reflect padding) and ``n ~ N(0, (noise_sigma255/255)²)``, ``noise_sigma255 ≤ 2``.
    Params: see ``sample_blur_params``."""
    kind = params.get("kind")
    required = ("kind", *_BLUR_REQUIRED.get(kind, ())) if kind else ("kind",)
    p = _resolve(params, required, lambda: sample_blur_params(rng, kind))
    y = apply_kernel(img, blur_kernel(p))
    sigma_n = float(p.get("noise_sigma255", 0.0))
    return add_gaussian_noise(y, sigma_n, rng) if sigma_n > 0 else y


# ----------------------------------------------------------------------------------------------
# jpeg


def jpeg(img: Image, quality: int) -> Image:
    """Encode to a real baseline JPEG at ``quality`` (OpenCV/libjpeg, 4:2:0 chroma) and decode
    back: ``y = D(E(round(255·x), q)) / 255``."""
    x = _check(img)
    u8 = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = cv2.cvtColor(u8, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    dec = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return (cv2.cvtColor(dec, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0).astype(np.float32)


def sample_jpeg_params(rng: np.random.Generator) -> Params:
    """JPEG parameters: ``quality`` uniform integer in ``[10, 60]``."""
    return {"quality": int(rng.integers(10, 61))}


def degrade_jpeg(img: Image, rng: np.random.Generator, **params: Any) -> Image:
    """JPEG expert: real JPEG round trip at ``quality ∈ [10, 60]`` (see ``jpeg``)."""
    p = _resolve(params, ("quality",), lambda: sample_jpeg_params(rng))
    return jpeg(img, p["quality"])


# ----------------------------------------------------------------------------------------------
# rain


def _streak_kernel(length: float, angle_deg: float, width: float) -> np.ndarray:
    """A single rain streak: motion line along ``angle_deg`` from vertical, blurred across by
    ``width``, scaled so its peak is 1."""
    k = motion_kernel(length, 90.0 - angle_deg, 1.0)
    if width > 0.3:
        k = cv2.GaussianBlur(k, (0, 0), width, borderType=cv2.BORDER_CONSTANT)
    return (k / max(float(k.max()), 1e-8)).astype(np.float32)


def rain_layer(
    shape: tuple[int, int],
    rng: np.random.Generator,
    density: float,
    length: float,
    angle: float,
    width: float,
    brightness: float,
) -> np.ndarray:
    """One layer of rain streaks, an ``H x W`` float32 map in ``[0, 1]``.

    Drops are Bernoulli(``density``) pixels with intensity ``U[0.6, 1]``; each is smeared into a
    streak of ``length`` pixels at ``angle`` degrees from vertical and ``width`` (Gaussian σ)
    across, so ``R = brightness · clip(drops * streak_kernel, 0, 1)``.
    """
    h, w = shape
    drops = (rng.random((h, w), dtype=np.float32) < density).astype(np.float32)
    drops *= rng.uniform(0.6, 1.0, size=(h, w)).astype(np.float32)
    k = _streak_kernel(length, angle, width)
    layer = cv2.filter2D(drops, -1, k, borderType=cv2.BORDER_REFLECT_101)
    return (np.clip(layer, 0.0, 1.0) * np.float32(brightness)).astype(np.float32)


def add_rain(img: Image, layers: Sequence[np.ndarray], blend: str = "screen") -> Image:
    """Composite streak maps ``R`` onto the image: ``screen``: ``y = 1 − (1 − x)(1 − R)``;
    ``add``: ``y = clip(x + R)``. Layers are combined first by screen."""
    x = _check(img)
    r = np.zeros(x.shape[:2], dtype=np.float32)
    for layer in layers:
        r = 1.0 - (1.0 - r) * (1.0 - np.clip(layer, 0.0, 1.0))
    r3 = r[..., None]
    if blend == "screen":
        return _finish(1.0 - (1.0 - x) * (1.0 - r3))
    if blend == "add":
        return _finish(x + r3)
    raise ValueError(f"unknown blend {blend!r}")


def sample_rain_params(rng: np.random.Generator) -> Params:
    """Rain parameters: a shared angle U[−30, 30]° from vertical; 1–3 layers, each with
    density logU[5e-4, 6e-3] per pixel, length U[8, 40] px, width σ U[0.3, 1.3] px, brightness
    U[0.35, 0.9] and a per-layer angle jitter U[−5, 5]°; blend "screen" (p = 0.6) or "add"."""
    base = float(rng.uniform(-30.0, 30.0))
    layers = []
    for _ in range(int(rng.integers(1, 4))):
        layers.append(
            {
                "density": _log_uniform(rng, 5e-4, 6e-3),
                "length": float(rng.uniform(8.0, 40.0)),
                "angle": base + float(rng.uniform(-5.0, 5.0)),
                "width": float(rng.uniform(0.3, 1.3)),
                "brightness": float(rng.uniform(0.35, 0.9)),
            }
        )
    return {"layers": layers, "blend": "screen" if rng.random() < 0.6 else "add"}


def degrade_rain(img: Image, rng: np.random.Generator, **params: Any) -> Image:
    """Rain expert: synthetic streak layers (``rain_layer``) composited by screen or additive
    blend (``add_rain``). Params: ``layers`` (list of rain_layer kwargs) and ``blend``."""
    x = _check(img)
    p = _resolve(params, ("layers",), lambda: sample_rain_params(rng))
    maps = [rain_layer(x.shape[:2], rng, **lp) for lp in p["layers"]]
    return add_rain(x, maps, p.get("blend", "screen"))


# ----------------------------------------------------------------------------------------------
# haze


def _normalise(d: np.ndarray) -> np.ndarray:
    lo, hi = float(d.min()), float(d.max())
    if hi - lo < 1e-6:
        return np.full_like(d, 0.5, dtype=np.float32)
    return ((d - lo) / (hi - lo)).astype(np.float32)


def depth_map(
    shape: tuple[int, int], rng: np.random.Generator, kind: str = "mixture", img: Image | None = None
) -> np.ndarray:
    """Smooth relative depth proxy ``d ∈ [0, 1]`` (1 = far), ``H x W`` float32.

    Kinds: ``vertical`` (far at the top: ``d = 1 − y/H`` with a random horizontal tilt and
    curvature), ``field`` (a low-frequency random field: a 2–6 cell grid upsampled bicubically
    and smoothed), ``luminance`` (heavily smoothed luma of ``img``: bright areas such as sky read
    as far), ``mixture`` (a random convex combination of the others).
    """
    h, w = shape
    if kind == "vertical":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        y = yy / max(h - 1, 1)
        x = xx / max(w - 1, 1) - 0.5
        gamma = float(rng.uniform(0.6, 1.6))
        d = (1.0 - y) ** gamma + float(rng.uniform(-0.4, 0.4)) * x
        return _normalise(d)
    if kind == "field":
        cells = int(rng.integers(2, 7))
        grid = rng.random((cells, cells)).astype(np.float32)
        d = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        d = cv2.GaussianBlur(d, (0, 0), max(h, w) / (2.0 * cells))
        return _normalise(d)
    if kind == "luminance":
        if img is None:
            raise ValueError("depth kind 'luminance' needs the image")
        d = cv2.GaussianBlur(luminance(img), (0, 0), max(h, w) / 16.0 + 1.0)
        return _normalise(d)
    if kind == "mixture":
        kinds = ["vertical", "field"] + (["luminance"] if img is not None else [])
        weights = rng.dirichlet(np.ones(len(kinds)))
        d = sum(float(wt) * depth_map(shape, rng, k, img) for k, wt in zip(kinds, weights, strict=True))
        return _normalise(np.asarray(d, dtype=np.float32))
    raise ValueError(f"unknown depth kind {kind!r}")


def haze(
    img: Image,
    rng: np.random.Generator | None = None,
    beta: float = 1.2,
    airlight: float | Sequence[float] = 0.85,
    depth: np.ndarray | str = "mixture",
    depth_range: tuple[float, float] = (0.2, 1.0),
) -> Image:
    """Atmospheric scattering: ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)``.

    ``d`` is ``depth`` (an ``H x W`` map in [0, 1]) or a ``depth_map`` kind drawn with ``rng``,
    rescaled to ``depth_range``. ``airlight`` ``A`` is a scalar or per-channel RGB value.
    """
    x = _check(img)
    if isinstance(depth, str):
        if rng is None:
            raise ValueError("a depth kind needs an rng")
        depth = depth_map(x.shape[:2], rng, depth, x)
    d = np.asarray(depth, dtype=np.float32)
    if d.shape != x.shape[:2]:
        raise ValueError(f"depth shape {d.shape} does not match image {x.shape[:2]}")
    lo, hi = depth_range
    d = lo + (hi - lo) * d
    t = np.exp(-np.float32(beta) * d)[..., None]
    a = np.broadcast_to(np.asarray(airlight, dtype=np.float32), (3,))
    return _finish(x * t + a * (1.0 - t))


def sample_haze_params(rng: np.random.Generator) -> Params:
    """Haze parameters: β U[0.8, 2.4] (so ``t ∈ [0.09, 0.85]`` over the depth range),
    airlight ``A = a·(1 + tint)`` with ``a ∈ U[0.7, 1.0]``, tint per channel U[−0.04, 0.04]
    (slightly bluish/warm), depth kind vertical/field/luminance/mixture with p = .25/.2/.15/.4,
    depth range ``[U[0.05, 0.35], 1]``."""
    a = float(rng.uniform(0.7, 1.0))
    tint = rng.uniform(-0.04, 0.04, size=3)
    kinds = ("vertical", "field", "luminance", "mixture")
    return {
        "beta": float(rng.uniform(0.8, 2.4)),
        "airlight": [float(v) for v in np.clip(a * (1.0 + tint), 0.0, 1.0)],
        "depth": str(rng.choice(kinds, p=[0.25, 0.2, 0.15, 0.4])),
        "depth_range": (float(rng.uniform(0.05, 0.35)), 1.0),
    }


def degrade_haze(img: Image, rng: np.random.Generator, **params: Any) -> Image:
    """Haze expert: ``I = J·t + A·(1 − t)``, ``t = exp(−β·d)`` with a sampled smooth depth
    proxy (see ``haze``, ``depth_map``, ``sample_haze_params``)."""
    p = _resolve(params, ("beta", "airlight"), lambda: sample_haze_params(rng))
    return haze(
        img,
        rng,
        beta=p["beta"],
        airlight=p["airlight"],
        depth=p.get("depth", "mixture"),
        depth_range=tuple(p.get("depth_range", (0.2, 1.0))),
    )


# ----------------------------------------------------------------------------------------------
# low light


def low_light(
    img: Image,
    rng: np.random.Generator,
    gamma: float,
    gain: float,
    a: float = 0.0,
    b: float = 0.0,
    channel_gain: Sequence[float] = (1.0, 1.0, 1.0),
) -> Image:
    """Under-exposure with sensor noise: ``z = gain · c · x^γ`` (``c`` = per-channel gain), then
    ``y = z + sqrt(a·z + b²) · N(0, 1)`` (shot ``a``, read ``b``), quantised to 8 bits."""
    x = _check(img)
    c = np.asarray(channel_gain, dtype=np.float32).reshape(1, 1, 3)
    z = np.float32(gain) * c * np.power(np.clip(x, 0.0, 1.0), np.float32(gamma))
    if a > 0 or b > 0:
        z = z + np.sqrt(np.float32(a) * np.clip(z, 0.0, 1.0) + np.float32(b * b)) * rng.standard_normal(
            z.shape, dtype=np.float32
        )
    return quantize8(z)


def sample_low_light_params(rng: np.random.Generator, img: Image | None = None) -> Params:
    """Low-light parameters: γ U[1.2, 2.2]; a target mean brightness m U[0.04, 0.18] sets
    ``gain = m / mean(x^γ)`` clipped to [0.03, 1] (a fixed gain of U[0.1, 0.35] without ``img``);
    shot noise ``a`` logU[2e-4, 4e-3], read noise ``b`` U[1, 6]/255, colour cast per channel
    U[0.92, 1.08]."""
    gamma = float(rng.uniform(1.2, 2.2))
    target = float(rng.uniform(0.04, 0.18))
    if img is not None:
        mean = float(np.mean(np.power(np.clip(_check(img), 0.0, 1.0), gamma)))
        gain = float(np.clip(target / max(mean, 1e-4), 0.03, 1.0))
    else:
        gain = float(rng.uniform(0.1, 0.35))
    return {
        "gamma": gamma,
        "gain": gain,
        "a": _log_uniform(rng, 2e-4, 4e-3),
        "b": float(rng.uniform(1.0, 6.0) / 255.0),
        "channel_gain": [float(v) for v in rng.uniform(0.92, 1.08, size=3)],
    }


def degrade_low_light(img: Image, rng: np.random.Generator, **params: Any) -> Image:
    """Low-light expert: ``y = g·x^γ + N(0, a·g·x^γ + b²)`` with γ ∈ [1.2, 2.2] and a gain that
    brings the mean brightness to ~0.04–0.18 (see ``low_light``, ``sample_low_light_params``)."""
    p = _resolve(params, ("gamma", "gain"), lambda: sample_low_light_params(rng, img))
    return low_light(
        img,
        rng,
        p["gamma"],
        p["gain"],
        p.get("a", 0.0),
        p.get("b", 0.0),
        p.get("channel_gain", (1.0, 1.0, 1.0)),
    )


# ----------------------------------------------------------------------------------------------
# registry


def _sampled(fn: Callable[..., Image]) -> Callable[[Image, np.random.Generator], Image]:
    def run(img: Image, rng: np.random.Generator) -> Image:
        return fn(img, rng)

    run.__name__ = fn.__name__
    run.__doc__ = fn.__doc__
    return run


#: Expert name → ``(img, rng) -> degraded`` with randomly sampled parameters.
DEGRADATIONS: dict[str, Callable[[Image, np.random.Generator], Image]] = {
    "noise": _sampled(degrade_noise),
    "blur": _sampled(degrade_blur),
    "jpeg": _sampled(degrade_jpeg),
    "rain": _sampled(degrade_rain),
    "haze": _sampled(degrade_haze),
    "low-light": _sampled(degrade_low_light),
}


def degrade(img: Image, name: str, rng: np.random.Generator) -> Image:
    """Apply degradation ``name`` (one of ``EXPERTS``) with sampled parameters."""
    try:
        fn = DEGRADATIONS[name]
    except KeyError:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(EXPERTS)}") from None
    return fn(_check(img), rng)


def degrade_mixed(img: Image, names: Sequence[str], rng: np.random.Generator) -> Image:
    """Apply several degradations in the physical order of ``MIXED_ORDER`` (scene → optics →
    sensor → compression), whatever order ``names`` lists them in."""
    unknown = [n for n in names if n not in DEGRADATIONS]
    if unknown:
        raise ValueError(f"unknown degradations {unknown}; known: {', '.join(EXPERTS)}")
    y = _check(img)
    for name in sorted(set(names), key=MIXED_ORDER.index):
        y = DEGRADATIONS[name](y, rng)
    return y


def _draw_probabilities(names: Sequence[str], weights: Sequence[float] | None, draws: int) -> np.ndarray | None:
    """``weights`` checked and normalised into ``rng.choice`` probabilities (None: uniform); ``draws``
    experts are drawn without replacement, so at least that many need a positive weight."""
    if weights is None:
        return None
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (len(names),) or (w < 0).any() or np.count_nonzero(w) < draws:
        raise ValueError(f"weights must be non-negative, one per name, at least {draws} positive")
    return w / w.sum()


def make_training_pair(
    clean: Image,
    names: Sequence[str],
    rng: np.random.Generator,
    weights: Sequence[float] | None = None,
    quantize: bool = True,
) -> tuple[Image, Image, int]:
    """Draw one expert from ``names`` (uniformly or by ``weights``) and degrade ``clean``.

    Returns ``(degraded, clean, label_index)`` where ``label_index`` indexes ``names``. With
    ``quantize`` the degraded image is rounded to 8 bits, as a real input would be.
    """
    if not names:
        raise ValueError("need at least one degradation name")
    x = _check(clean)
    label = int(rng.choice(len(names), p=_draw_probabilities(names, weights, 1)))
    y = degrade(x, names[label], rng)
    return (quantize8(y) if quantize else y), x, label


def make_mixed_pair(
    clean: Image,
    names: Sequence[str],
    rng: np.random.Generator,
    weights: Sequence[float] | None = None,
    quantize: bool = True,
) -> tuple[Image, Image, np.ndarray]:
    """Two different experts of ``names`` (drawn without replacement, by ``weights``), applied in
    physical order (``degrade_mixed``): a real photo is often both blurred and compressed.

    Returns ``(degraded, clean, target)``: ``target`` holds 0.5 at each expert's index of ``names``,
    the router's soft label (its top-2 mix then gives both experts half the weight).
    """
    if len(names) < 2:
        raise ValueError("a mixed pair needs at least two degradation names")
    x = _check(clean)
    pair = rng.choice(len(names), size=2, replace=False, p=_draw_probabilities(names, weights, 2))
    y = degrade_mixed(x, [names[int(i)] for i in pair], rng)
    target = np.zeros(len(names), np.float32)
    target[pair] = 0.5
    return (quantize8(y) if quantize else y), x, target
