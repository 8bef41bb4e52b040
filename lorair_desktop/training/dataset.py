"""Training and validation data: images kept in memory, textured random crops, synthetic
degradations.

Any folder of images works (``--data DIR``). When the folder holds the manifest photos
(``photo_manifest.json``), a ``split`` selects the manifest's train or val photos; for any
other folder the split is a stable hash of each file's relative path (``val_fraction``).

Randomness is derived from ``(seed, epoch, index)`` only, so a sample is the same whichever
DataLoader worker produces it.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset

from lorair_desktop.errors import LoraIRError
from lorair_desktop.imageio import READ_SUFFIXES
from lorair_desktop.training.degradations import (
    EXPERTS,
    degrade,
    degrade_mixed,
    make_mixed_pair,
    make_training_pair,
    quantize8,
)
from lorair_desktop.training.photos import default_photo_dir, load_manifest

__all__ = [
    "IMAGE_EXTENSIONS",
    "BatchStream",
    "DatasetError",
    "ImageBank",
    "RestorationDataset",
    "StepBatches",
    "ValSample",
    "ValidationDataset",
    "build_validation_set",
    "fixed_crop_positions",
    "list_images",
    "load_image",
    "photo_bank",
    "select_split",
    "texture_score",
    "to_float",
]

log = logging.getLogger(__name__)

# What imageio reads (its import lets Pillow open HEIF too), less GIF: 256 colours are no clean target.
IMAGE_EXTENSIONS = READ_SUFFIXES - {".gif"}
Image.MAX_IMAGE_PIXELS = 200_000_000  # big wallpapers are legitimate; still refuse absurd sizes


class DatasetError(LoraIRError):
    """No usable training images."""

    code = "bad_dataset"


# ----------------------------------------------------------------------------------------------
# files


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive, hidden entries skipped), sorted by relative path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist", "pass an existing folder with --data DIR")
    files = [
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(folder).as_posix())


def select_split(paths: Sequence[Path], root: Path, split: str | None, val_fraction: float = 0.2) -> list[Path]:
    """Keep the files of ``split`` (``None``: all).

    Manifest photos (matched by file name) use the manifest's split and other files are
    ignored; otherwise files are ordered by sha1 of their relative path and the first
    ``max(1, round(n·val_fraction))`` form ``val`` (none when there is a single file).
    """
    if split is None:
        return list(paths)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train', 'val' or None, not {split!r}")
    manifest = {e.name: e.split for e in load_manifest()}
    known = [p for p in paths if p.name in manifest]
    if known:
        if len(known) < len(paths):
            log.warning("%d files not in the photo manifest are ignored", len(paths) - len(known))
        return [p for p in known if manifest[p.name] == split]
    root = Path(root)

    def key(p: Path) -> str:
        return hashlib.sha1(p.relative_to(root).as_posix().encode()).hexdigest()

    ordered = sorted(paths, key=key)
    n_val = 0 if len(ordered) < 2 else max(1, round(len(ordered) * val_fraction))
    val = set(ordered[:n_val])
    return [p for p in paths if (p in val) == (split == "val")]


def load_image(path: Path, max_side: int | None = 1600) -> np.ndarray:
    """Decode an image as ``H x W x 3`` uint8 RGB (EXIF orientation applied), shrunk with area
    interpolation so its long side is at most ``max_side``."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, rgba)
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DatasetError(f"cannot read image {path}: {exc}", "remove or re-save the file") from exc
    h, w = arr.shape[:2]
    if max_side is not None and max(h, w) > max_side:
        s = max_side / max(h, w)
        size = (max(1, round(w * s)), max(1, round(h * s)))
        arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(arr)


@dataclass
class ImageBank:
    """Decoded images held in memory as uint8 ``H x W x 3`` arrays."""

    images: list[np.ndarray]
    names: list[str]

    def __post_init__(self) -> None:
        if len(self.images) != len(self.names):
            raise ValueError("images and names differ in length")

    def __len__(self) -> int:
        return len(self.images)

    @classmethod
    def from_paths(cls, paths: Sequence[Path], max_side: int | None = 1600, root: Path | None = None) -> ImageBank:
        """Load every path once."""
        if not paths:
            raise DatasetError("no images to load", "check the folder and the split")
        images = [load_image(p, max_side) for p in paths]
        names = [Path(p).relative_to(root).as_posix() if root else Path(p).name for p in paths]
        mp = sum(im.shape[0] * im.shape[1] for im in images) / 1e6
        log.info("loaded %d images (%.1f MP after downscaling)", len(images), mp)
        return cls(images, names)

    @classmethod
    def from_folder(
        cls, folder: Path, split: str | None = None, max_side: int | None = 1600, val_fraction: float = 0.2
    ) -> ImageBank:
        """Load the images of ``folder`` (optionally one split, see ``select_split``)."""
        folder = Path(folder)
        paths = select_split(list_images(folder), folder, split, val_fraction)
        if not paths:
            raise DatasetError(
                f"no {split + ' ' if split else ''}images in {folder}",
                f"add images ({', '.join(sorted(s[1:] for s in IMAGE_EXTENSIONS))}) or choose another split",
            )
        return cls.from_paths(paths, max_side, root=folder)

    @property
    def areas(self) -> np.ndarray:
        return np.array([im.shape[0] * im.shape[1] for im in self.images], dtype=np.float64)


def photo_bank(split: str | None = "train", max_side: int | None = 1600, folder: Path | None = None) -> ImageBank:
    """The manifest photos (fetched with ``lorair_desktop.training.photos``) of one split."""
    folder = default_photo_dir() if folder is None else Path(folder)
    if not folder.is_dir() or not list_images(folder):
        raise DatasetError(
            f"the training photos are not in {folder}",
            "run 'python -m lorair_desktop.training.photos' first, or pass --data DIR",
        )
    return ImageBank.from_folder(folder, split, max_side)


# ----------------------------------------------------------------------------------------------
# crops


def texture_score(patch: np.ndarray) -> float:
    """Mean absolute luma gradient ``mean|∂x L| + mean|∂y L|`` with ``L`` in [0, 1]
    (uint8 input is scaled by 1/255). On 128² crops of the photos at 1600 px: flat sky ≈ 0.004,
    median ≈ 0.014, foliage and rocks ≈ 0.08."""
    arr = np.asarray(patch, dtype=np.float32)
    if patch.dtype == np.uint8:
        arr = arr / 255.0
    lum = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32) if arr.ndim == 3 else arr
    if lum.shape[0] < 2 or lum.shape[1] < 2:
        return 0.0
    return float(np.abs(np.diff(lum, axis=1)).mean() + np.abs(np.diff(lum, axis=0)).mean())


def _pad_to(img: np.ndarray, size: int) -> np.ndarray:
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    ph, pw = max(0, size - h), max(0, size - w)
    return cv2.copyMakeBorder(img, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)


def _dihedral(img: np.ndarray, k: int, flip: bool) -> np.ndarray:
    out = np.rot90(img, k)
    if flip:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def _to_chw(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32))


#: Fraction of training crops kept as drawn, without the texture preference (`lorair train --flat-crops`).
#: Low by default: most of a photo is smooth, and textured crops teach restoration faster.
FLAT_KEEP_PROB = 0.1


class RestorationDataset(Dataset):
    """Map-style dataset of ``(degraded CHW float32, clean CHW float32, label int64)``.

    Each item draws an image (weighted by area), a random square region of ``crop_size / s``
    pixels with ``s ∈ scale_range`` (area-resized to ``crop_size``: downscaling makes detail
    denser), preferring regions whose ``texture_score`` reaches ``min_texture`` (up to
    ``texture_retries`` tries, keeping the most textured; a fraction ``flat_keep_prob`` is kept
    as drawn so flat areas are still seen), a random flip/rot90, then one degradation of
    ``names`` (``label`` indexes ``names``). ``length`` is the virtual epoch size.

    With ``mixed`` > 0 that fraction of the items carries two degradations (``make_mixed_pair``)
    and every label becomes the router's target distribution, float32 over ``names`` (one-hot for
    a single degradation, 0.5/0.5 for a pair).
    """

    def __init__(
        self,
        bank: ImageBank,
        names: Sequence[str] = EXPERTS,
        crop_size: int = 128,
        length: int = 10_000,
        seed: int = 0,
        scale_range: tuple[float, float] = (0.5, 1.0),
        min_texture: float = 0.02,
        texture_retries: int = 10,
        flat_keep_prob: float = FLAT_KEEP_PROB,
        weights: Sequence[float] | None = None,
        quantize: bool = True,
        mixed: float = 0.0,
    ) -> None:
        if len(bank) == 0:
            raise DatasetError("the image bank is empty", "check the folder and the split")
        if not names:
            raise ValueError("need at least one degradation name")
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"bad scale_range {scale_range}")
        if not 0.0 <= mixed < 1.0:
            raise ValueError(f"mixed must be a fraction in [0, 1), got {mixed}")
        self.bank = bank
        self.names = tuple(names)
        self.crop_size = int(crop_size)
        self.length = int(length)
        self.seed = int(seed)
        self.scale_range = (float(lo), float(hi))
        self.min_texture = float(min_texture)
        self.texture_retries = max(1, int(texture_retries))
        self.flat_keep_prob = float(flat_keep_prob)
        self.weights = None if weights is None else list(weights)
        self.quantize = quantize
        self.mixed = float(mixed)
        self.epoch = 0
        areas = bank.areas
        self._image_p = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def set_epoch(self, epoch: int) -> None:
        """Vary the samples between epochs (call before creating the epoch's iterator)."""
        self.epoch = int(epoch)

    def rng_for(self, index: int) -> np.random.Generator:
        """The generator of item ``index``: a function of ``(seed, epoch, index)`` only."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def random_crop(self, rng: np.random.Generator) -> np.ndarray:
        """A textured ``crop_size`` square uint8 crop of a random image, randomly flipped/rotated."""
        img = self.bank.images[int(rng.choice(len(self.bank), p=self._image_p))]
        cs = self.crop_size
        s = float(rng.uniform(*self.scale_range))
        region = max(cs, round(cs / s))
        img = _pad_to(img, cs)
        h, w = img.shape[:2]
        region = min(region, h, w)
        check = rng.random() >= self.flat_keep_prob
        best, best_score = None, -1.0
        for _ in range(self.texture_retries if check else 1):
            y = int(rng.integers(0, h - region + 1))
            x = int(rng.integers(0, w - region + 1))
            patch = img[y : y + region, x : x + region]
            if region != cs:
                patch = cv2.resize(patch, (cs, cs), interpolation=cv2.INTER_AREA)
            if not check:
                best = patch
                break
            score = texture_score(patch)
            if score > best_score:
                best, best_score = patch, score
            if score >= self.min_texture:
                break
        assert best is not None
        return _dihedral(best, int(rng.integers(0, 4)), bool(rng.random() < 0.5))

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray, int | np.ndarray]:
        """Item ``index`` as numpy ``(degraded HWC, clean HWC, label)``: an int, or with ``mixed``
        the target distribution."""
        rng = self.rng_for(index)
        clean = self.random_crop(rng).astype(np.float32) / 255.0
        if not self.mixed:  # no extra draw: runs without mixing keep their exact items
            return make_training_pair(clean, self.names, rng, self.weights, self.quantize)
        if rng.random() < self.mixed:
            return make_mixed_pair(clean, self.names, rng, self.weights, self.quantize)
        degraded, clean, label = make_training_pair(clean, self.names, rng, self.weights, self.quantize)
        target = np.zeros(len(self.names), np.float32)
        target[label] = 1.0
        return degraded, clean, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        degraded, clean, label = self.sample(index)
        target = torch.from_numpy(label) if isinstance(label, np.ndarray) else torch.tensor(label, dtype=torch.int64)
        return _to_chw(degraded), _to_chw(clean), target


# ----------------------------------------------------------------------------------------------
# validation


@dataclass
class ValSample:
    """One fixed validation item (HWC float32 images)."""

    degraded: np.ndarray = field(repr=False)
    clean: np.ndarray = field(repr=False)
    label: int  # index into the expert names, -1 for a mixed row
    degradation: str  # "noise", ..., or "haze+noise" for a mixed row
    image: str
    seed: int


def fixed_crop_positions(img: np.ndarray, crop_size: int, count: int = 1, grid: int = 4) -> list[tuple[int, int]]:
    """Deterministic crop corners: the ``count`` most textured of a ``grid x grid`` lattice of
    candidate positions (ties broken by position)."""
    h, w = img.shape[:2]
    ys = np.linspace(0, max(0, h - crop_size), grid).round().astype(int)
    xs = np.linspace(0, max(0, w - crop_size), grid).round().astype(int)
    cands = sorted({(int(y), int(x)) for y in ys for x in xs})
    scored = [(-texture_score(img[y : y + crop_size, x : x + crop_size]), y, x) for y, x in cands]
    scored.sort()
    return [(y, x) for _, y, x in scored[:count]]


def fixed_crops(img: np.ndarray, crop_size: int, count: int = 1) -> list[np.ndarray]:
    """The ``count`` fixed crops of ``fixed_crop_positions`` (the image reflect-padded where it is
    smaller than a crop), or the whole image where ``crop_size`` is 0: a photo as a user restores it,
    routed and tiled as a whole."""
    if crop_size == 0:
        return [img]
    padded = _pad_to(img, crop_size)
    return [padded[y : y + crop_size, x : x + crop_size] for y, x in fixed_crop_positions(padded, crop_size, count)]


def build_validation_set(
    bank: ImageBank,
    names: Sequence[str] = EXPERTS,
    crop_size: int = 256,
    crops_per_image: int = 1,
    seed: int = 0,
    mixed: Sequence[Sequence[str]] = (),
    quantize: bool = True,
) -> list[ValSample]:
    """Fixed validation items: for each image, its ``crops_per_image`` most textured crops (see
    ``fixed_crops``; ``crop_size`` 0: the whole image), each degraded by every name in ``names`` and
    every combination in ``mixed`` (``degrade_mixed``), with seeds from ``(seed, image, crop, row)``."""
    rows: list[tuple[str, int, tuple[str, ...]]] = [(n, i, (n,)) for i, n in enumerate(names)]
    rows += [("+".join(combo), -1, tuple(combo)) for combo in mixed]
    out: list[ValSample] = []
    for ii, (img, image_name) in enumerate(zip(bank.images, bank.names, strict=True)):
        for ci, crop in enumerate(fixed_crops(img, crop_size, crops_per_image)):
            clean = crop.astype(np.float32) / 255.0
            for ri, (label_name, label, combo) in enumerate(rows):
                item_seed = int.from_bytes(
                    hashlib.sha256(f"{seed}/{ii}/{ci}/{ri}/{label_name}".encode()).digest()[:8], "little"
                )
                rng = np.random.default_rng(item_seed)
                deg = degrade(clean, combo[0], rng) if len(combo) == 1 else degrade_mixed(clean, combo, rng)
                if quantize:
                    deg = quantize8(deg)
                out.append(ValSample(deg, clean, label, label_name, image_name, item_seed))
    return out


class ValidationDataset(Dataset):
    """Tensors ``(degraded CHW, clean CHW, label int64)`` of a fixed validation list."""

    def __init__(self, samples: Sequence[ValSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        s = self.samples[index]
        return _to_chw(s.degraded), _to_chw(s.clean), torch.tensor(s.label, dtype=torch.int64)


# ----------------------------------------------------------------------------------------------
# training batches, made ahead in worker processes


class StepBatches(Dataset):
    """Item ``step``: the stacked batch of dataset items ``step·batch … step·batch + batch − 1``
    (wrapping at ``len(ds)``), so a batch depends on its step alone. Under DDP, rank ``r`` of
    ``world`` takes the ``r``-th of ``world`` consecutive batches: every process trains on its own.

    With ``as_uint8`` the images travel as 8-bit values (a quarter of the bytes between processes
    and to a GPU); ``to_float`` turns them back into exactly the float values. Only for datasets whose
    degraded images are quantised to 8 bits (the clean crops always are)."""

    def __init__(
        self, ds: Dataset, batch: int, steps: int, as_uint8: bool = False, rank: int = 0, world: int = 1
    ) -> None:
        if as_uint8 and not getattr(ds, "quantize", False):
            raise ValueError("as_uint8 needs a dataset that quantises its degraded images to 8 bits")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside a world of {world}")
        self.ds, self.batch, self.steps, self.as_uint8 = ds, int(batch), int(steps), as_uint8
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, ...]:
        n = len(self.ds)
        first = (step * self.world + self.rank) * self.batch
        items = [self.ds[(first + i) % n] for i in range(self.batch)]
        deg, clean, labels = (torch.stack([it[k] for it in items]) for k in range(3))
        if self.as_uint8:
            deg, clean = (t.mul(255.0).round_().to(torch.uint8) for t in (deg, clean))
        return deg, clean, labels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """8-bit batches (``StepBatches(as_uint8=True)``) as float32 in [0, 1]; float batches as they are."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


class BatchStream:
    """``step -> batch`` for the trainer. With ``workers`` > 0 the batches are synthesised ahead, in
    step order, by that many processes (a GPU outruns one CPU core's degradation synthesis ~20×);
    a step asked out of order restarts the stream there. Either way batch ``s`` is the same."""

    def __init__(self, batches: StepBatches, workers: int = 0, pin_memory: bool = False, prefetch: int = 4) -> None:
        self.batches, self.workers, self.pin_memory, self.prefetch = batches, int(workers), pin_memory, prefetch
        self._it = None
        self._next = -1

    def __call__(self, step: int) -> tuple[torch.Tensor, ...]:
        if self.workers <= 0:
            return self.batches[step]
        if self._it is None or step != self._next:
            self.close()
            # OpenCV's thread pool does not survive fork: a forked worker that touches it waits forever.
            # With one thread here the workers inherit a serial OpenCV (one process per core anyway);
            # the trainer itself needs no OpenCV threads once the photos are loaded.
            cv2.setNumThreads(1)
            loader = DataLoader(
                self.batches,
                batch_size=None,
                sampler=range(step, max(step + 1, len(self.batches))),
                num_workers=self.workers,
                prefetch_factor=self.prefetch,
                pin_memory=self.pin_memory,
            )
            self._it = iter(loader)
        self._next = step + 1
        return next(self._it)

    def close(self) -> None:
        """Stop the worker processes (they are also stopped when the stream is collected)."""
        it, self._it = self._it, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
