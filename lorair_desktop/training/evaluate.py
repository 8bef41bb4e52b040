"""Evaluation of a LoRA-IR model on held-out photos: fixed degradation rows, baselines, routing.

Metrics (``psnr``, ``ssim``) compare float RGB images in ``[0, 1]`` (data range 1):

* PSNR over all pixels and the three RGB channels;
* SSIM (Wang et al. 2004) with an 11 x 11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03,
  computed **per RGB channel** and averaged, over the "valid" region (5 px border dropped) —
  the same numbers as ``skimage.metrics.structural_similarity(gaussian_weights=True,
  use_sample_covariance=False, channel_axis=-1, data_range=1)``.

Each row of ``EVAL_ROWS`` degrades every fixed validation crop (the most textured 256² crops of
each photo, ``dataset.fixed_crops``; or each whole photo) with a seed derived from ``(seed, image, crop,
row)`` and quantises it to 8 bits, as a real input would be. The model restores it through
``core.Restorer`` (automatic routing, tiled merged inference: the path users get).
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from lorair_desktop.core.inference import Restorer
from lorair_desktop.training import baselines as B
from lorair_desktop.training import degradations as D
from lorair_desktop.training.dataset import ImageBank, build_validation_set, fixed_crops
from lorair_desktop.training.eval_compare import mix_text

__all__ = [
    "EVAL_ROWS",
    "MIXED_ROWS",
    "EvalRow",
    "EvalSettings",
    "evaluate",
    "exposure_matched",
    "hardware_info",
    "psnr",
    "report_data",
    "router_confusion",
    "ssim",
    "targets",
    "to_markdown",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# metrics

_SSIM_SIGMA = 1.5
_SSIM_RADIUS = 5  # 11 taps: skimage's int(3.5 * 1.5 + 0.5)


def exposure_matched(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``pred`` times the one gain that gives it ``ref``'s mean brightness, clipped to [0, 1]."""
    return np.clip(pred * (float(ref.mean()) / max(float(pred.mean()), 1e-6)), 0.0, 1.0)


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """``10·log10(R² / MSE)`` over all pixels and channels (capped at 100 dB for identical images)."""
    mse = float(np.mean((np.asarray(pred, np.float64) - np.asarray(ref, np.float64)) ** 2))
    return 100.0 if mse <= 1e-10 * data_range**2 else 10.0 * float(np.log10(data_range**2 / mse))


def ssim(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0) -> float:
    """Mean SSIM with a Gaussian window (σ 1.5, 11 x 11), per channel, averaged (see module doc)."""
    a = np.asarray(pred, np.float64)
    b = np.asarray(ref, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    r = _SSIM_RADIUS
    if min(a.shape[:2]) <= 2 * r:
        raise ValueError(f"SSIM needs images larger than {2 * r + 1} px, got {a.shape[:2]}")
    g = cv2.getGaussianKernel(2 * r + 1, _SSIM_SIGMA, cv2.CV_64F)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def f(x: np.ndarray) -> np.ndarray:
        out = cv2.sepFilter2D(x, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)
        return out.reshape(x.shape)

    vals = []
    for ch in range(a.shape[2]):
        x, y = np.ascontiguousarray(a[..., ch]), np.ascontiguousarray(b[..., ch])
        mx, my = f(x), f(y)
        vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        vals.append(float(m[r:-r, r:-r].mean()))
    return float(np.mean(vals))


# ----------------------------------------------------------------------------------------------
# rows

Make = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, dict[str, Any]]]
Baseline = Callable[[np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]  # (degraded, clean, info)


@dataclass(frozen=True)
class EvalRow:
    """A fixed evaluation row: how to degrade a clean crop, its expert label and its baseline."""

    name: str
    expert: str | None  # the expert the router should pick; None for mixed rows
    make: Make = field(repr=False)
    baseline: str | None = None
    baseline_fn: Baseline | None = field(default=None, repr=False)
    description: str = ""
    # Low-light input keeps no trace of the scene's brightness (it is darkened *to* a mean level),
    # so the output's exposure is a guess; score it also after matching the clean mean, the
    # "GT-mean" PSNR low-light papers report beside the plain one, to separate guess from restoration.
    exposure_matched: bool = False
    components: tuple[str, ...] = ()  # a mixed row's degradations
    slow_baseline: bool = False  # minutes per photo (CBM3D): left out by `--baselines fast`

    @property
    def forced_mix(self) -> dict[str, float]:
        """The manual expert weights a user who knows the degradation would set: the row's expert at
        1, or a mixed row's experts in equal shares (as the router learns to route mixed inputs)."""
        if self.expert is not None:
            return {self.expert: 1.0}
        return dict.fromkeys(self.components, 1.0 / len(self.components)) if self.components else {}


def _noise_row(sigma: int) -> EvalRow:
    def make(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
        return D.add_gaussian_noise(x, sigma, rng), {"sigma255": sigma}

    return EvalRow(
        f"noise σ{sigma}",
        "noise",
        make,
        "CBM3D",
        lambda y, _c, info: B.cbm3d(y, info["sigma255"]),
        f"additive Gaussian noise σ = {sigma}/255",
        slow_baseline=True,
    )


def _jpeg_row(q: int) -> EvalRow:
    return EvalRow(f"jpeg q{q}", "jpeg", lambda x, _r: (D.jpeg(x, q), {"quality": q}),
                   description=f"OpenCV JPEG round trip, quality {q}")


def _blur_make(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    y, k = D.gaussian_blur(x, 2.0, rng, noise_sigma255=1.0)
    return y, {"kernel": k}


def _wiener(y: np.ndarray, clean: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    return B.wiener_oracle(y, clean, info["kernel"])[0]


def _sampled_row(name: str, description: str, baseline: str | None = None, fn: Baseline | None = None) -> EvalRow:
    return EvalRow(name, name, lambda x, rng: (D.degrade(x, name, rng), {}), baseline, fn, description)


def _mixed_row(names: Sequence[str]) -> EvalRow:
    return EvalRow(
        "+".join(names),
        None,
        lambda x, rng: (D.degrade_mixed(x, names, rng), {}),
        description="training-range parameters of each, applied in physical order (degrade_mixed)",
        components=tuple(names),
    )


#: The fixed rows issue 3 names, in table order.
EVAL_ROWS: tuple[EvalRow, ...] = (
    _noise_row(15),
    _noise_row(25),
    _noise_row(50),
    _jpeg_row(10),
    _jpeg_row(30),
    EvalRow("blur σ2", "blur", _blur_make, "Wiener", _wiener,
            "isotropic Gaussian blur σ = 2 px + Gaussian noise σ = 1/255; Wiener: true kernel, oracle NSR"),
    EvalRow("low-light", "low-light", lambda x, rng: (D.degrade(x, "low-light", rng), {}),
            description="gamma/gain darkening with shot and read noise, training ranges", exposure_matched=True),
    _sampled_row("haze", "atmospheric scattering, training ranges", "DCP", lambda y, _c, _i: B.dehaze_dcp(y)),
    _sampled_row("rain", "synthetic streak layers, training ranges"),
)
MIXED_ROWS: tuple[EvalRow, ...] = (_mixed_row(("haze", "noise")), _mixed_row(("blur", "jpeg")))


def _item_seed(seed: int, image: int, crop: int, row: str) -> int:
    return int.from_bytes(hashlib.sha256(f"eval/{seed}/{image}/{crop}/{row}".encode()).digest()[:8], "little")


# ----------------------------------------------------------------------------------------------
# evaluation


@dataclass
class EvalSettings:
    crop: int = 256
    crops_per_image: int = 1
    router_crops: int = 4  # crops per image for the router's confusion matrix
    seed: int = 0
    baselines: str = ""  # "all", "fast" (every baseline but the slow ones: CBM3D) or "" (none)
    tile: int | None = None  # force tiled inference with this tile side
    ensemble: int = 1  # self-ensemble passes per restore (see core.inference.ENSEMBLES)
    forced: bool = False  # also restore every crop with the row's own experts forced (EvalRow.forced_mix)
    rows: Sequence[EvalRow] = EVAL_ROWS + MIXED_ROWS

    def __post_init__(self) -> None:
        if self.crop == 0:  # whole photos: one per image, for the rows and the router's matrix alike
            self.crops_per_image = self.router_crops = 1


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _mix(weights: dict[str, float]) -> dict[str, float]:
    """The experts a restore really mixed, largest share first."""
    return {k: round(float(v), 3) for k, v in sorted(weights.items(), key=lambda kv: -kv[1]) if v > 0}


def _crops(bank: ImageBank, size: int, count: int) -> list[tuple[int, int, str, np.ndarray]]:
    out = []
    for ii, (img, name) in enumerate(zip(bank.images, bank.names, strict=True)):
        for ci, crop in enumerate(fixed_crops(img, size, count)):
            out.append((ii, ci, name, crop.astype(np.float32) / 255.0))
    return out


def evaluate_rows(restorer: Restorer, bank: ImageBank, settings: EvalSettings) -> list[dict[str, Any]]:
    """PSNR/SSIM of input, model (and baseline) for every row over every fixed crop."""
    crops = _crops(bank, settings.crop, settings.crops_per_image)
    experts = restorer.experts
    results = []
    for row in settings.rows:
        acc: dict[str, dict[str, list[float]]] = {"input": {"psnr": [], "ssim": []}, "model": {"psnr": [], "ssim": []}}
        base: dict[str, list[float]] = {"psnr": [], "ssim": []}
        mix = {k: v for k, v in row.forced_mix.items() if k in experts} if settings.forced else {}
        forced: dict[str, list[float]] = {"psnr": [], "ssim": [], "overruled": []}
        routed: dict[str, int] = {}
        exposure: dict[str, list[float]] = {"psnr": [], "clean_mean": [], "model_mean": []}
        per_crop: list[dict[str, Any]] = []
        t_model = t_base = 0.0
        for ii, ci, name, clean in crops:
            rng = np.random.default_rng(_item_seed(settings.seed, ii, ci, row.name))
            deg, info = row.make(clean, rng)
            deg = D.quantize8(deg)
            t0 = time.perf_counter()
            res = restorer.restore(deg, tile=settings.tile, ensemble=settings.ensemble)
            t_model += time.perf_counter() - t0
            top = max(res.router_weights, key=lambda k: res.router_weights[k])
            routed[top] = routed.get(top, 0) + 1
            for key, img in (("input", deg), ("model", res.image)):
                acc[key]["psnr"].append(psnr(img, clean))
                acc[key]["ssim"].append(ssim(img, clean))
            per_crop.append({"image": name, "crop": ci, "input": acc["input"]["psnr"][-1],
                             "model": acc["model"]["psnr"][-1], "mix": _mix(res.applied_weights)})
            if mix:
                res_f = restorer.restore(deg, overrides=mix, tile=settings.tile, ensemble=settings.ensemble)
                forced["psnr"].append(psnr(res_f.image, clean))
                forced["ssim"].append(ssim(res_f.image, clean))
                forced["overruled"].append(float(top not in mix))
            if row.exposure_matched:
                exposure["psnr"].append(psnr(exposure_matched(res.image, clean), clean))
                exposure["clean_mean"].append(float(clean.mean()))
                exposure["model_mean"].append(float(res.image.mean()))
            if settings.baselines and row.baseline_fn is not None and not (
                    settings.baselines == "fast" and row.slow_baseline):
                t0 = time.perf_counter()
                out = row.baseline_fn(deg, clean, info)
                t_base += time.perf_counter() - t0
                base["psnr"].append(psnr(out, clean))
                base["ssim"].append(ssim(out, clean))
        # the crop the model served worst: an average gain can hide a crop made much worse
        worst = min(per_crop, key=lambda c: c["model"] - c["input"], default=None)
        entry: dict[str, Any] = {
            "row": row.name,
            "expert": row.expert,
            "description": row.description,
            "n": len(crops),
            "input": {k: _mean(v) for k, v in acc["input"].items()},
            "model": {k: _mean(v) for k, v in acc["model"].items()},
            "routed": dict(sorted(routed.items(), key=lambda kv: -kv[1])),
            "route_acc": (routed.get(row.expert, 0) / len(crops)) if row.expert in experts and crops else None,
            "model_s_per_crop": t_model / max(1, len(crops)),
            "worst_gain": None if worst is None else worst["model"] - worst["input"],
            # which crop that was, and every crop's own numbers: what a change of weights did to one photo
            "worst_crop": worst,
            "crops": per_crop,
        }
        if forced["psnr"]:
            entry["forced"] = {
                "mix": mix,
                "psnr": _mean(forced["psnr"]),
                "ssim": _mean(forced["ssim"]),
                "worst_gain": min(f - i for f, i in zip(forced["psnr"], acc["input"]["psnr"], strict=True)),
                "overruled": _mean(forced["overruled"]),  # share of crops whose router top-1 the mix drops
            }
        if exposure["psnr"]:
            entry["exposure_matched"] = {k: _mean(v) for k, v in exposure.items()}
        if base["psnr"]:
            entry["baseline"] = {"name": row.baseline, **{k: _mean(v) for k, v in base.items()},
                                 "s_per_crop": t_base / len(crops)}
        results.append(entry)
        log.info("%s: input %.2f dB, model %.2f dB", row.name, entry["input"]["psnr"], entry["model"]["psnr"])
    return results


def router_confusion(restorer: Restorer, bank: ImageBank, settings: EvalSettings) -> dict[str, Any]:
    """Confusion matrix (rows: true degradation, columns: router's top-1) on single degradations
    with training-range parameters, over the model's experts that have a synthesiser."""
    names = [e for e in restorer.experts if e in D.DEGRADATIONS]
    if not names:
        return {"experts": [], "confusion": [], "top1": None, "n": 0}
    samples = build_validation_set(
        bank, names, crop_size=settings.crop, crops_per_image=settings.router_crops, seed=settings.seed + 7919
    )
    experts = list(restorer.experts)
    conf = np.zeros((len(names), len(experts)), dtype=np.int64)
    for s in samples:
        a = restorer.analyze(s.degraded)
        conf[s.label, int(np.argmax(a.logits))] += 1
    correct = sum(int(conf[i, experts.index(n)]) for i, n in enumerate(names))
    return {
        "true": names,
        "predicted": experts,
        "confusion": conf.tolist(),
        "top1": correct / max(1, len(samples)),
        "n": len(samples),
    }


def hardware_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """CPU model, cores, torch threads and version, and the GPU name when one is used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    dev = torch.device(device) if device is not None else None
    if dev is not None:
        info["device"] = str(dev)
        if dev.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(dev)
    return info


def _row(results: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    return next((r for r in results if r["row"] == name), None)


def targets(results: list[dict[str, Any]], router: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 3's quality targets, each with the measured margin (None where not measured)."""
    out: list[dict[str, Any]] = []

    def add(target: str, value: float | None, need: float, unit: str = "dB") -> None:
        out.append({"target": target, "value": value, "need": need, "unit": unit,
                    "met": None if value is None else bool(value >= need)})

    def gain_over(name: str, ref: str) -> float | None:
        r = _row(results, name)
        if r is None:
            return None
        other = r["input"] if ref == "input" else r.get("baseline")
        return None if other is None or other.get("psnr") is None else r["model"]["psnr"] - other["psnr"]

    for s in (15, 25, 50):
        add(f"noise σ{s}: model − CBM3D", gain_over(f"noise σ{s}", "baseline"), 0.3)
    add("jpeg q10: model − input", gain_over("jpeg q10", "input"), 2.0)
    add("jpeg q30: model − input", gain_over("jpeg q30", "input"), 1.2)
    add("blur σ2: model − Wiener", gain_over("blur σ2", "baseline"), 1.0)
    ll = _row(results, "low-light")
    add("low-light: model PSNR", None if ll is None else ll["model"]["psnr"], 26.0)
    add("haze: model − DCP", gain_over("haze", "baseline"), 4.0)
    top1 = router.get("top1")
    add("router top-1 accuracy", None if top1 is None else 100.0 * top1, 95.0, "%")
    return out


def report_data(bank: ImageBank, settings: EvalSettings) -> dict[str, Any]:
    """The report's `data` section: which photos and crops were restored, and how."""
    return {
        "images": list(bank.names),
        "crop": settings.crop,
        "crops_per_image": settings.crops_per_image,
        "router_crops_per_image": settings.router_crops,
        "seed": settings.seed,
        "ensemble": settings.ensemble,
        "forced": settings.forced,
        "quantized_8bit": True,
    }


def evaluate(restorer: Restorer, bank: ImageBank, settings: EvalSettings) -> dict[str, Any]:
    """Rows, router confusion and targets as one JSON-ready dict."""
    t0 = time.perf_counter()
    rows = evaluate_rows(restorer, bank, settings)
    router = router_confusion(restorer, bank, settings)
    return {
        "data": report_data(bank, settings),
        "metrics": {
            "psnr": "RGB, data range 1",
            "ssim": "Gaussian window 11x11 σ=1.5, K1=0.01, K2=0.03, per RGB channel averaged, valid region",
        },
        "rows": rows,
        "router": router,
        "targets": targets(rows, router),
        "hardware": hardware_info(restorer.device),
        "wall_s": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------
# report


def _fmt(m: dict[str, Any] | None) -> str:
    if not m or m.get("psnr") is None:
        return "–"
    return f"{m['psnr']:.2f} / {m['ssim']:.4f}"


def to_markdown(report: dict[str, Any], title: str | None = None) -> str:
    """The results as Markdown: rows table, targets table, router confusion matrix."""
    lines = [f"## {title}", ""] if title else []
    lines += [
        "| row | n | input PSNR / SSIM | model PSNR / SSIM | gain dB | worst crop dB | baseline | "
        "baseline PSNR / SSIM | routed to |",
        "|---|---:|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in report["rows"]:
        gain = r["model"]["psnr"] - r["input"]["psnr"]
        worst = "–" if r.get("worst_gain") is None else f"{r['worst_gain']:+.2f}"
        b = r.get("baseline")
        routed = ", ".join(f"{k} {v}" for k, v in r["routed"].items())
        lines.append(
            f"| {r['row']} | {r['n']} | {_fmt(r['input'])} | {_fmt(r['model'])} | {gain:+.2f} | {worst} | "
            f"{b['name'] if b else '–'} | {_fmt(b)} | {routed} |"
        )
    lost = [r for r in report["rows"] if r.get("worst_crop") and r["worst_gain"] < 0]
    if lost:
        lines += ["", "Worst crop of each row that made one worse:", ""]
        for r in lost:
            c = r["worst_crop"]
            lines.append(f"- {r['row']}: {c['image']} crop {c['crop']}, {r['worst_gain']:+.2f} dB, "
                         f"mixed {mix_text(c['mix'])}")
    lines += ["", "| target | measured | needed | met |", "|---|---:|---:|---|"]
    for t in report["targets"]:
        v = "not measured" if t["value"] is None else f"{t['value']:+.2f} {t['unit']}"
        if t["unit"] == "%" and t["value"] is not None:
            v = f"{t['value']:.1f} %"
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        need = f"≥ {t['need']:g} {t['unit']}"
        lines.append(f"| {t['target']} | {v} | {need} | {met} |")
    forced_rows = [r for r in report["rows"] if r.get("forced")]
    if forced_rows:
        lines += ["", "With each row's own experts forced, as a user who knows the degradation would set them "
                  "(mixed rows: equal shares; the model's prototype priors, where it has them, steer its prior "
                  "along); \"overruled\": the share of crops whose router top-1 is not in the mix:", "",
                  "| row | forced mix | model PSNR / SSIM | gain dB | worst crop dB | overruled |",
                  "|---|---|---:|---:|---:|---:|"]
        for r in forced_rows:
            f = r["forced"]
            mix = ", ".join(f"{k} {v:g}" for k, v in f["mix"].items())
            lines.append(f"| {r['row']} | {mix} | {_fmt(f)} | {f['psnr'] - r['input']['psnr']:+.2f} | "
                         f"{f['worst_gain']:+.2f} | {100 * f['overruled']:.0f} % |")
    for r in report["rows"]:
        if r.get("exposure_matched"):
            e = r["exposure_matched"]
            lines += ["", f"{r['row']}: {e['psnr']:.2f} dB with the output's exposure matched to the photo "
                      f"(one gain to the clean mean; mean brightness {e['model_mean']:.3f} restored against "
                      f"{e['clean_mean']:.3f}). The darkened input keeps no trace of the scene's brightness, "
                      "so the plain PSNR also scores the guess of it."]
    router = report["router"]
    if router.get("n"):
        lines += ["", f"Router top-1 on single degradations: {100 * router['top1']:.1f} % of {router['n']} crops "
                  "(rows: true, columns: predicted).", ""]
        pred = router["predicted"]
        lines.append("| true \\ predicted | " + " | ".join(pred) + " |")
        lines.append("|---|" + "---:|" * len(pred))
        for name, counts in zip(router["true"], router["confusion"], strict=True):
            lines.append(f"| {name} | " + " | ".join(str(c) for c in counts) + " |")
    d = report["data"]
    lines += [
        "",
        (f"{len(d['images'])} whole photos" if d["crop"] == 0 else f"{len(d['images'])} images, "
         f"{d['crops_per_image']} crop(s) of {d['crop']}² each (most textured of a 4x4 grid)")
        + f", seed {d['seed']}, inputs quantised to 8 bits. PSNR on RGB; SSIM: {report['metrics']['ssim']}.",
    ]
    if d.get("ensemble", 1) > 1:
        lines[-1] += (f" Every restore averages {d['ensemble']} flipped/turned passes (self-ensemble; "
                      "rain mixes at most 4).")
    return "\n".join(lines) + "\n"
