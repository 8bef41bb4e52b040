"""Restoring an image: route once per image (over router-sized crops of a big one), merge the
expert mix once, run in tiles.

Images cross this module as float32 numpy arrays (H, W, 3) in [0, 1]; alpha and bit depth are the
caller's business (see imageio).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from . import native
from .cpu import ThreadGovernor, keep_freed_memory, shared_governor
from .device import inference_dtype, select_device
from .errors import Cancelled, ImageError, LoraIRError
from .model import LoRAIR
from .precision import fastest_cpu_dtype
from .router import context_boxes, quadrant_boxes
from .routing import apply_overrides, steer_prior
from .tiling import balanced_length, plan_tiles, tile_profiles

log = logging.getLogger(__name__)

# (tiles done, tiles): fractional within a tile that runs several passes (self-ensemble), so a
# one-tile restore of 8 passes still moves.
ProgressFn = Callable[[float, int], None]
CancelFn = Callable[[], bool]

# CPU tiles: bigger tiles pay the fixed per-op costs, the overlap and the tiny coarse levels less
# often. The fastest side measured here, for both shipped networks (4 MP, bf16, interleaved, 2-core
# EPYC): compact 0.356 / 0.355 / 0.330 s/MP at 512 / 768 / 1024, lite 0.219 / 0.202 / 0.198 at 768 /
# 1024 / 1536. (512 px won for compact while big tensors were mmap()ed and page-faulted at every op,
# see core.cpu.keep_freed_memory.) The memory budget below shrinks it for big photos.
CPU_TILE = 1024
CPU_TILE_MIN = 384
# What a CPU restore may allocate (tile activations, blended rows, the image buffers twice): with
# torch (~0.5 GB) and the model, a 24 MP photo then peaks under 1 GB (`lorair bench`: lite 879 MB,
# compact 929 MB, both in tiles of 496; at 448 MB compact reached 985 MB).
CPU_BUDGET_MB = 400
# Tiled vs whole-image on a real 1 MP photo (shipped model, noise σ25): 68 dB apart at 16 px of
# overlap, 75 dB at 48 px, identical PSNR to the clean photo. 16 px recomputes 9 % instead of 31 %.
DEFAULT_OVERLAP = 16
OOM_TILE_MIN = 256  # the smallest tile an out-of-memory restore retries with (see Restorer._smaller_tile)
_OUT_ROWS = 64  # output rows converted at a time

# Self-ensemble: the restore averaged over flipped and turned copies of each tile (quarter turns,
# mirrored). Measured on the 8 held-out photos (`lorair eval --ensemble 8`, compact): noise
# +0.25/+0.27/+0.35 dB, blur +0.14, haze +0.18, jpeg +0.05/+0.11, low-light +0.13, at 8x the time.
# The first four keep every line's direction up to a mirror image; rain streaks fall one way, and
# turned by 90° they are unlike any rain the model learnt (x8 lost 7 dB on rain, x4 gains +0.31), so
# a mix with an oriented expert (ModelConfig.oriented) uses those four at most.
ENSEMBLES = (1, 2, 4, 8)
_TRANSFORMS = ((0, False), (0, True), (2, True), (2, False), (1, False), (3, False), (1, True), (3, True))


@dataclass
class Analysis:
    experts: tuple[str, ...]
    router_weights: list[float]
    logits: list[float]
    prior: torch.Tensor = field(repr=False)
    crops: int = 0  # router-sized crops the image was routed through (router.context_boxes); 0: whole

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
    ensemble: int = 1  # passes averaged per tile (fewer than asked where an oriented expert is mixed in)
    prior_steered: bool = False  # a manual mix moved the degradation prior too (routing.steer_prior)


PIXEL_DTYPES = (np.float32, np.uint8, np.uint16)
ROUTER_SHRINK = 1024  # huge images reach the router as an area-reduced copy with this long side


def check_image(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) float32 / uint8 / uint16 array without copying it (views are fine)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"expected an RGB array (H, W, 3), got shape {getattr(image, 'shape', None)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError("the image is empty (zero width or height)")
    if image.dtype not in PIXEL_DTYPES:
        if not np.issubdtype(image.dtype, np.floating):
            raise ImageError(f"unsupported pixel type {image.dtype}", "use float32 in [0, 1], uint8 or uint16")
        image = image.astype(np.float32)
    if image.dtype == np.float32:
        for rows in range(0, image.shape[0], 512):  # chunked: no full-size temporary for the check
            if not np.isfinite(image[rows : rows + 512]).all():
                raise ImageError("the image holds NaN or infinite values", "clamp or fix the float pixels first")
    return image


def to_float(block: np.ndarray) -> np.ndarray:
    """A block of pixels as float32 in [0, 1] (a copy only where a conversion is needed)."""
    if block.dtype == np.uint8:
        return block.astype(np.float32) * (1.0 / 255.0)
    if block.dtype == np.uint16:
        return block.astype(np.float32) * (1.0 / 65535.0)
    return np.clip(block, 0.0, 1.0, dtype=np.float32)


def from_float(block: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return (block * 255.0 + 0.5).astype(np.uint8)
    if dtype == np.uint16:
        return (block * 65535.0 + 0.5).astype(np.uint16)
    return block


def padded_block(img: np.ndarray, y0: int, x0: int, th: int, tw: int) -> np.ndarray:
    """img[y0:y0+th, x0:x0+tw] as float, reflect-padded past the bottom/right edge exactly as a
    whole-image run pads to the network's multiple (so border tiles match it)."""
    h, w = img.shape[:2]
    block = to_float(img[y0 : min(y0 + th, h), x0 : min(x0 + tw, w)])
    ph, pw = y0 + th - min(y0 + th, h), x0 + tw - min(x0 + tw, w)
    if ph or pw:
        mode = "reflect" if block.shape[0] > ph and block.shape[1] > pw else "edge"
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode=mode)
    return block


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
        keep_freed_memory()  # every tile op allocates big tensors: reuse freed blocks, no page faults
        self.channels_last = channels_last and self.device.type != "mps"
        self.memory_budget_mb = memory_budget_mb
        # CPU: fewer threads while other programs hold cores (spinning OpenMP teams collapse then).
        self.governor: ThreadGovernor | None = shared_governor() if self.device.type == "cpu" else None
        if self.device.type == "cpu":
            native.library()  # the fused kernels built (~1 s, once per machine) now, not in the first restore
        self.model = model.to(self.device).eval()
        # Both ways: a model handed on from a channels_last restorer would otherwise keep its
        # channels_last weights, and every conv would convert the input back to channels_last.
        self.model.net.to(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
        nc = self.model.cfg.net  # on a CPU, "auto" is bf16 only where it runs this network faster
        self.dtype = inference_dtype(self.device, precision, lambda: fastest_cpu_dtype(
            self.model.net, nc.prior_dim, nc.layout, self.channels_last))
        self._lock = threading.Lock()

    @property
    def experts(self) -> tuple[str, ...]:
        return self.model.experts

    def _to_tensor(self, image: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None].to(self.device)

    def _router_input(self, img: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The image for the global/paper views and, for huge images, the native crops cut from it."""
        h, w = img.shape[:2]
        rc = self.model.cfg.router
        if max(h, w) <= 2 * ROUTER_SHRINK:
            return self._to_tensor(to_float(img)), None
        scale = ROUTER_SHRINK / max(h, w)
        # Area-reduce in the input's own type: a float copy of a huge photo would cost 12 bytes a pixel.
        small = to_float(cv2.resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                                    interpolation=cv2.INTER_AREA))
        crops = None
        if rc.views == "native":
            s = rc.image_size
            crops = torch.stack([self._to_tensor(to_float(img[y0 : y0 + s, x0 : x0 + s]))[0]
                                 for y0, x0 in quadrant_boxes(h, w, s)])[None]
        return self._to_tensor(small), crops

    @torch.inference_mode()
    def analyze(self, image: np.ndarray) -> Analysis:
        """The router's expert weights and degradation prior for the whole image: from the mean
        features of the router's context crops where the image is bigger than one context
        (router.context_boxes, DGRouter.route_crops), else from the image at once."""
        img = check_image(image)
        boxes = context_boxes(*img.shape[:2], self.model.cfg.router.context)
        if boxes:
            crops = torch.stack([self._to_tensor(to_float(img[y0 : y0 + ch, x0 : x0 + cw]))[0]
                                 for y0, x0, ch, cw in boxes])
            out = self.model.router.route_crops(crops)
        else:
            out = self.model.router(*self._router_input(img))
        weights = self.model.router_weights(out.logits)[0]
        return Analysis(self.experts, weights.cpu().tolist(), out.logits[0].cpu().tolist(), out.prior, len(boxes))

    def auto_tile(self, height: int, width: int, buffers: int = 0) -> int:
        """Tile side. On a CPU: the fastest side for this network, shrunk until one tile and its band
        of blended rows fit CPU_BUDGET_MB beside the image's own `buffers` (input + output bytes).
        On accelerators (or with a memory budget given): the largest tile the budget holds."""
        m = self.model.cfg.pad_multiple
        nc = self.model.cfg.net
        bytes_per_value = torch.finfo(self.dtype).bits // 8
        if self.device.type == "cpu" and self.memory_budget_mb is None:
            tile = CPU_TILE
            # Measured forward peaks on a 1024² tile (bf16 / fp32): lite 318 / 590 B/px, compact 406 /
            # 814, i.e. ~12 live tensors of `width` channels. The buffers count twice: over many tiles
            # the allocator's kept free blocks grow by about their size (24 MP photos peaked 75-240 MB
            # above what the tile and the buffers add up to).
            per_px = 12 * nc.width * bytes_per_value
            ph, pw = -(-height // m) * m, -(-width // m) * m  # the image padded as the network pads it
            if max(ph, pw) <= CPU_TILE and ph * pw * per_px <= CPU_BUDGET_MB * 2**20:
                # One tile holds the whole image: no overlap computed twice, no per-tile costs (a 1 MP
                # float photo in bf16, lite: 6-9 % faster than the four tiles of 960 the rule below
                # gives it, interleaved). Its buffers, 25 MB at most here, have no tiles to grow over.
                return CPU_TILE
            budget = CPU_BUDGET_MB * 2**20 - 2 * buffers
            # Float photos of many megapixels exceed the budget by their buffers alone: the floor then
            # keeps the tiles efficient (a 384² tile adds ~60 MB to buffers of over a gigabyte).
            while tile > CPU_TILE_MIN and tile * tile * per_px + tile * width * 3 * 4 > budget:
                tile -= m
        else:
            budget = (self.memory_budget_mb or self._free_memory_mb()) * 2**20
            # Peak activation bytes per pixel of a NAFNet: ~ 12 live tensors of 2*width channels.
            per_px = 12 * 2 * nc.width * bytes_per_value
            tile = int(math.sqrt(budget / per_px))
        tile = max(4 * m, tile // m * m)
        return tile

    def _smaller_tile(self, tile: int) -> int:
        """After the device ran out of memory on tiles of ``tile``: half the side (a quarter of the
        memory), down to OOM_TILE_MIN, the freed cache given back first. Another program (Krita's
        canvas, a game, a second model) can take GPU memory between the budget's reading and the
        restore, and a user's own --tile may simply be too big for the card."""
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()
        smaller = max(OOM_TILE_MIN, tile // 2 // self.model.cfg.pad_multiple * self.model.cfg.pad_multiple)
        log.warning("out of %s memory on tiles of %d px: trying again with %d px", self.device.type, tile, smaller)
        return smaller

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
        out_dtype: np.dtype | type | None = None,
        ensemble: int = 1,
    ) -> RestoreResult:
        """Restore an (H, W, 3) float32 [0, 1] / uint8 / uint16 image. The result is float32 unless
        `out_dtype` asks for uint8/uint16; huge images stream through tiles with bounded memory.
        `ensemble` (1, 2, 4 or 8) averages that many flipped/turned passes (see ENSEMBLES)."""
        if ensemble not in ENSEMBLES:
            raise LoraIRError(f"ensemble must be one of {', '.join(map(str, ENSEMBLES))}, got {ensemble!r}",
                             "use 1 (off), 2, 4 or 8 passes")
        img = check_image(image)
        h, w = img.shape[:2]
        with self._lock:
            t0 = time.perf_counter()
            analysis = self.analyze(img)
            applied = apply_overrides(analysis.router_weights, overrides, self.experts, keep_router)
            prior = analysis.prior
            protos = self.model.prior_prototypes
            if overrides is not None and protos is not None:
                prior = steer_prior(prior, analysis.router_weights, applied, protos)
            t1 = time.perf_counter()
            directional = self.model.cfg.oriented
            oriented = any(w > 0 for e, w in zip(self.experts, applied, strict=True) if e in directional)
            passes = _TRANSFORMS[: min(ensemble, 4) if oriented else ensemble]
            weights = torch.tensor(applied, dtype=torch.float32, device=self.device)
            if merged:
                self.model.merge(weights, channels_last=self.channels_last)
            else:
                self.model.set_reference_mix(weights)
            try:
                buffers = img.nbytes + h * w * 3 * np.dtype(out_dtype or np.float32).itemsize
                tile_size = tile or self.auto_tile(h, w, buffers)
                while True:
                    try:
                        out, n, used = self._run_tiles(img, prior, tile_size, overlap, progress, cancel,
                                                       np.dtype(out_dtype or np.float32), passes)
                        break
                    except torch.OutOfMemoryError:
                        if tile_size <= OOM_TILE_MIN:
                            raise  # for the caller to report (the worker: E_OUT_OF_MEMORY)
                        tile_size = self._smaller_tile(tile_size)
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
            ensemble=len(passes),
            prior_steered=prior is not analysis.prior,
        )

    def _forward(self, x: torch.Tensor, prior: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if dtype == torch.float32:
            return self.model.net(x, prior).float()
        with torch.autocast(self.device.type, dtype=dtype):
            return self.model.net(x, prior).float()

    def _passes(self, x: torch.Tensor, prior: torch.Tensor, dtype: torch.dtype,
                passes: tuple[tuple[int, bool], ...], cancel: CancelFn | None,
                each: Callable[[int], None] | None = None) -> torch.Tensor:
        """The mean of the network's outputs over the (quarter turns, mirrored) copies of x; `each`
        hears how many passes are done after every one but the last."""
        acc = None
        for i, (turns, mirrored) in enumerate(passes):
            if each is not None and i:
                each(i)
            if cancel is not None and acc is not None and cancel():
                raise Cancelled("the restore was cancelled", "")
            t = torch.rot90(x, turns, (-2, -1)) if turns else x
            y = self._forward(t.flip(-1) if mirrored else t, prior, dtype)
            y = y.flip(-1) if mirrored else y
            y = torch.rot90(y, -turns, (-2, -1)) if turns else y
            acc = y if acc is None else acc.add_(y)
        assert acc is not None
        return acc if len(passes) == 1 else acc.div_(len(passes))

    def _run_tiles(self, img, prior, tile, overlap, progress, cancel, out_dtype, passes):  # type: ignore[no-untyped-def]
        """Stream tiles band by band. Blend weights are separable (w = wy * wx) and every band has the
        same columns, so each band is blended across its columns first, then bands are blended down
        the rows; rows are written to the output once final, so only ~one tile-tall float buffer lives."""
        m = self.model.cfg.pad_multiple
        h0, w0 = img.shape[:2]
        hp, wp = -(-h0 // m) * m, -(-w0 // m) * m  # padded size, as a whole-image run sees it
        tile = max(m, tile // m * m)
        ov = 0 if (hp <= tile and wp <= tile) else min(overlap, tile // 2 - 1)
        if ov == 0:
            tiles = plan_tiles(hp, wp, max(hp, wp), 0)
        else:
            tiles = plan_tiles(hp, wp, (balanced_length(hp, tile, ov, m), balanced_length(wp, tile, ov, m)), ov)
        bands: dict[int, list] = {}
        for t in tiles:
            bands.setdefault(t.y0, []).append(t)
        out = np.empty((h0, w0, 3), out_dtype)
        # Rows of the previous band that the next one covers too (its weighted sum and weights): the
        # only rows kept between bands, so besides the output only one band and a seam live at once.
        carry, carry_w = np.zeros((0, w0, 3), np.float32), np.zeros(0, np.float32)
        starts = sorted(bands)
        dtype = self.dtype
        done = 0
        for i, y0 in enumerate(starts):
            row = bands[y0]
            th = row[0].h
            band = np.zeros((th, wp, 3), np.float32)
            wx_sum = np.zeros(wp, np.float32)
            for t in row:
                if cancel is not None and cancel():
                    raise Cancelled("the restore was cancelled", "")
                if self.governor is not None:
                    self.governor.update()
                x = self._to_tensor(padded_block(img, t.y0, t.x0, t.h, t.w))
                each = None
                if progress is not None and len(passes) > 1:
                    def each(k: int, done: int = done) -> None:
                        progress(done + k / len(passes), len(tiles))
                y = self._passes(x, prior, dtype, passes, cancel, each)
                if not torch.isfinite(y).all() and dtype != torch.float32:
                    dtype = torch.float32  # reduced precision overflowed: redo in fp32 from here on
                    y = self._passes(x, prior, dtype, passes, cancel)
                pred = y[0].clamp_(0, 1).permute(1, 2, 0).cpu().numpy()
                wx = tile_profiles(t, hp, wp, ov)[1]
                band[:, t.x0 : t.x0 + t.w] += pred * wx[None, :, None]
                wx_sum[t.x0 : t.x0 + t.w] += wx
                done += 1
                if progress is not None:
                    progress(done, len(tiles))
            rows = min(th, h0 - y0)  # the bottom padding is dropped
            band = band[:rows, :w0]
            band /= np.maximum(wx_sum[:w0], 1e-8)[None, :, None]
            wy = tile_profiles(row[0], hp, wp, ov)[0][:rows].copy()
            band *= wy[:, None, None]
            n = carry.shape[0]
            band[:n] += carry
            wy[:n] += carry_w
            # Rows above the next band are final: no later band reaches them.
            final = min(starts[i + 1] - y0, rows) if i + 1 < len(starts) else rows
            for r in range(0, final, _OUT_ROWS):  # converted in slices: no full-band temporaries
                r1 = min(r + _OUT_ROWS, final)
                out[y0 + r : y0 + r1] = from_float(band[r:r1] / np.maximum(wy[r:r1], 1e-8)[:, None, None], out_dtype)
            carry, carry_w = band[final:].copy(), wy[final:]
        return out, len(tiles), dtype

