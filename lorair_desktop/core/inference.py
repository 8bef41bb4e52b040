"""Restoring an image: route once on the whole image, merge the expert mix once, run in tiles.

Images cross this module as float32 numpy arrays (H, W, 3) in [0, 1]; alpha and bit depth are the
caller's business (see imageio).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .device import inference_dtype, select_device
from .errors import Cancelled, ImageError
from .model import LoRAIR
from .routing import apply_overrides
from .tiling import blend_weight, plan_tiles

ProgressFn = Callable[[int, int], None]
CancelFn = Callable[[], bool]

CPU_TILE = 384  # fastest on CPU: this network is memory-bound, so cache-sized tiles win
DEFAULT_OVERLAP = 48


@dataclass
class Analysis:
    experts: tuple[str, ...]
    router_weights: list[float]
    logits: list[float]
    prior: torch.Tensor = field(repr=False)

    @property
    def top_expert(self) -> str:
        return self.experts[int(np.argmax(self.router_weights))]

    def weights_dict(self) -> dict[str, float]:
        return dict(zip(self.experts, self.router_weights, strict=True))


@dataclass
class RestoreResult:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    router_weights: dict[str, float]
    applied_weights: dict[str, float]
    tiles: int
    tile_size: int
    timings: dict[str, float]
    dtype: str


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an RGB array (H, W, 3), got shape {getattr(image, 'shape', None)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("the image is empty (zero width or height)")
    img = image.astype(np.float32, copy=False)
    if not np.isfinite(img).all():
        raise ImageError("the image holds NaN or infinite values", "clamp or fix the float pixels first")
    return np.clip(img, 0.0, 1.0)


class Restorer:
    """Owns a model on a device. Thread-safe: one restore at a time."""

    def __init__(
        self,
        model: LoRAIR,
        device: str | torch.device = "auto",
        precision: str = "auto",
        channels_last: bool = True,
        memory_budget_mb: int | None = None,
    ) -> None:
        self.device = device if isinstance(device, torch.device) else select_device(device)
        self.dtype = inference_dtype(self.device, precision)
        self.channels_last = channels_last and self.device.type != "mps"
        self.memory_budget_mb = memory_budget_mb
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model.net.to(memory_format=torch.channels_last)
        self._lock = threading.Lock()

    @property
    def experts(self) -> tuple[str, ...]:
        return self.model.experts

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)

    @torch.inference_mode()
    def analyze(self, image: np.ndarray) -> Analysis:
        img = check_image(image)
        out = self.model.route(self._to_tensor(img))
        weights = self.model.router_weights(out.logits)[0]
        return Analysis(self.experts, weights.cpu().tolist(), out.logits[0].cpu().tolist(), out.prior)

    def auto_tile(self, height: int, width: int) -> int:
        """Tile side: cache-sized on CPU; from the memory budget on accelerators."""
        m = self.model.cfg.pad_multiple
        if self.device.type == "cpu" and self.memory_budget_mb is None:
            tile = CPU_TILE
        else:
            budget = (self.memory_budget_mb or self._free_memory_mb()) * 2**20
            # Peak activation bytes per pixel of a NAFNet: ~ 12 live tensors of 2*width channels.
            per_px = 12 * 2 * self.model.cfg.net.width * torch.finfo(self.dtype).bits // 8
            tile = int(math.sqrt(budget / per_px))
        tile = max(4 * m, tile // m * m)
        return tile

    def _free_memory_mb(self) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            return int(free / 2**20 * 0.6)
        return 2048

    @torch.inference_mode()
    def restore(
        self,
        image: np.ndarray,
        overrides: Mapping[str, object] | None = None,
        keep_router: bool = False,
        tile: int | None = None,
        overlap: int = DEFAULT_OVERLAP,
        progress: ProgressFn | None = None,
        cancel: CancelFn | None = None,
        merged: bool = True,
    ) -> RestoreResult:
        img = check_image(image)
        h, w = img.shape[:2]
        with self._lock:
            t0 = time.perf_counter()
            analysis = self.analyze(img)
            applied = apply_overrides(analysis.router_weights, overrides, self.experts, keep_router)
            t1 = time.perf_counter()
            weights = torch.tensor(applied, dtype=torch.float32, device=self.device)
            if merged:
                self.model.merge(weights, channels_last=self.channels_last)
            else:
                self.model.set_reference_mix(weights)
            try:
                tile_size = tile or self.auto_tile(h, w)
                out, n, used = self._run_tiles(img, analysis.prior, tile_size, overlap, progress, cancel)
            finally:
                self.model.unmerge()
            t2 = time.perf_counter()
        return RestoreResult(
            image=out,
            router_weights=analysis.weights_dict(),
            applied_weights=dict(zip(self.experts, applied, strict=True)),
            tiles=n,
            tile_size=tile_size,
            timings={"route_s": t1 - t0, "restore_s": t2 - t1, "total_s": t2 - t0},
            dtype=str(used).replace("torch.", ""),
        )

    def _forward(self, x: torch.Tensor, prior: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            return self.model.net(x, prior).float()
        with torch.autocast(self.device.type, dtype=dtype):
            return self.model.net(x, prior).float()

    def _run_tiles(self, img, prior, tile, overlap, progress, cancel):  # type: ignore[no-untyped-def]
        # Pad once to the network's multiple (as a whole-image run does), so border tiles see the
        # same reflected context and need no padding of their own; crop back at the end.
        m = self.model.cfg.pad_multiple
        h0, w0 = img.shape[:2]
        ph, pw = (m - h0 % m) % m, (m - w0 % m) % m
        if ph or pw:
            mode = "reflect" if min(h0, w0) > max(ph, pw) else "edge"
            img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode=mode)
        tile = max(m, tile // m * m)
        h, w = img.shape[:2]
        dtype = self.dtype
        if h <= tile and w <= tile:
            tiles = plan_tiles(h, w, max(h, w), 0)
        else:
            tiles = plan_tiles(h, w, tile, min(overlap, tile // 2 - 1))
        single = len(tiles) == 1
        acc = None if single else np.zeros((h, w, 3), np.float32)
        wsum = None if single else np.zeros((h, w, 1), np.float32)
        result = None
        for i, t in enumerate(tiles):
            if cancel is not None and cancel():
                raise Cancelled("the restore was cancelled", "")
            crop = img[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w]
            x = self._to_tensor(crop)
            y = self._forward(x, prior, dtype)
            if not torch.isfinite(y).all() and dtype != torch.float32:
                dtype = torch.float32  # reduced precision overflowed: redo in fp32 from here on
                y = self._forward(x, prior, dtype)
            pred = y[0].clamp_(0, 1).permute(1, 2, 0).cpu().numpy()
            if single:
                result = pred
            else:
                bw = blend_weight(t, h, w, min(overlap, tile // 2 - 1))[..., None]
                acc[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] += pred * bw
                wsum[t.y0 : t.y0 + t.h, t.x0 : t.x0 + t.w] += bw
            if progress is not None:
                progress(i + 1, len(tiles))
        if not single:
            result = acc / np.maximum(wsum, 1e-8)
        return np.ascontiguousarray(result[:h0, :w0], dtype=np.float32), len(tiles), dtype
