"""Dataset over a folder of small synthetic images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from lorair_desktop.training import dataset as DS
from lorair_desktop.training.degradations import EXPERTS
from lorair_desktop.training.photos import load_manifest


def textured(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((5, 5, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 0.8)
    return (np.clip(0.6 * base + 0.4 * fine, 0, 1) * 255).astype(np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    (root / "sub").mkdir(parents=True)
    Image.fromarray(textured(120, 160, 0)).save(root / "a.png")
    Image.fromarray(textured(300, 200, 1)).save(root / "big.jpg", quality=95)
    Image.fromarray(textured(90, 100, 2)[..., 0]).save(root / "sub" / "gray.png")
    rgba = np.dstack([textured(100, 100, 3), np.full((100, 100), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(root / "sub" / "alpha.png")
    Image.fromarray(textured(64, 64, 4)).save(root / "small.webp")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    Image.fromarray(textured(64, 64, 5)).save(root / ".hidden" / "skip.png")
    return root


def test_list_and_load(folder: Path) -> None:
    paths = DS.list_images(folder)
    assert [p.relative_to(folder).as_posix() for p in paths] == [
        "a.png",
        "big.jpg",
        "small.webp",
        "sub/alpha.png",
        "sub/gray.png",
    ]
    big = DS.load_image(folder / "big.jpg", max_side=160)
    assert big.dtype == np.uint8 and big.shape == (160, 107, 3)
    assert DS.load_image(folder / "sub" / "gray.png").shape == (90, 100, 3)
    assert DS.load_image(folder / "sub" / "alpha.png").shape == (100, 100, 3)
    with pytest.raises(DS.DatasetError):
        DS.load_image(folder / "notes.txt")
    with pytest.raises(DS.DatasetError):
        DS.list_images(folder / "missing")


def test_own_phone_photos_train_and_gifs_do_not(tmp_path: Path) -> None:
    """A user's folder of iPhone photos (HEIC) trains as it is; a GIF's 256 colours are no clean target."""
    Image.fromarray(textured(80, 120, 6)).save(tmp_path / "IMG_0001.HEIC", format="HEIF", quality=-1, chroma=444)
    Image.fromarray(textured(40, 40, 7)).save(tmp_path / "icon.gif")
    assert [p.name for p in DS.list_images(tmp_path)] == ["IMG_0001.HEIC"]
    photo = DS.load_image(tmp_path / "IMG_0001.HEIC")
    assert photo.shape == (80, 120, 3) and np.abs(photo.astype(int) - textured(80, 120, 6)).max() <= 2


def test_hash_split(folder: Path) -> None:
    paths = DS.list_images(folder)
    train = DS.select_split(paths, folder, "train")
    val = DS.select_split(paths, folder, "val")
    assert val and train
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(paths)
    assert DS.select_split(paths, folder, "val") == val
    assert DS.select_split(paths, folder, None) == paths


def test_manifest_split(tmp_path: Path) -> None:
    entries = load_manifest()
    for e in entries[:10]:
        Image.fromarray(textured(40, 40, 0)).save(tmp_path / e.name, format="PNG")
    Image.fromarray(textured(40, 40, 0)).save(tmp_path / "stranger.png")
    paths = DS.list_images(tmp_path)
    val = {p.name for p in DS.select_split(paths, tmp_path, "val")}
    train = {p.name for p in DS.select_split(paths, tmp_path, "train")}
    assert val == {e.name for e in entries[:10] if e.split == "val"}
    assert train == {e.name for e in entries[:10] if e.split == "train"}


def test_bank_downscales(folder: Path) -> None:
    bank = DS.ImageBank.from_folder(folder, max_side=128)
    assert len(bank) == 5
    assert all(im.dtype == np.uint8 and max(im.shape[:2]) <= 128 for im in bank.images)
    assert "sub/gray.png" in bank.names
    with pytest.raises(DS.DatasetError):
        DS.photo_bank("train", folder=folder / "nowhere")


def test_training_items(folder: Path) -> None:
    bank = DS.ImageBank.from_folder(folder, max_side=200)
    ds = DS.RestorationDataset(bank, crop_size=48, length=20, seed=7)
    assert len(ds) == 20
    labels = set()
    for i in range(12):
        deg, clean, label = ds[i]
        assert deg.shape == clean.shape == (3, 48, 48)
        assert deg.dtype == clean.dtype == torch.float32
        assert label.dtype == torch.int64 and 0 <= int(label) < len(EXPERTS)
        assert float(deg.min()) >= 0 and float(deg.max()) <= 1
        assert float(clean.min()) >= 0 and float(clean.max()) <= 1
        labels.add(int(label))
    assert len(labels) >= 3
    with pytest.raises(IndexError):
        ds[20]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 3, 48, 48) and batch[2].shape == (4,)


def test_training_items_are_deterministic(folder: Path) -> None:
    bank = DS.ImageBank.from_folder(folder, max_side=200)
    a = DS.RestorationDataset(bank, crop_size=32, length=10, seed=3)
    b = DS.RestorationDataset(bank, crop_size=32, length=10, seed=3)
    for i in (0, 5, 9):
        for x, y in zip(a[i], b[i], strict=True):
            assert torch.equal(x, y)
    assert not torch.equal(a[0][1], a[1][1])
    c = DS.RestorationDataset(bank, crop_size=32, length=10, seed=4)
    assert not torch.equal(a[0][1], c[0][1])
    first = a[2][1]
    a.set_epoch(1)
    assert not torch.equal(first, a[2][1])


def test_small_images_are_padded(tmp_path: Path) -> None:
    Image.fromarray(textured(20, 30, 1)).save(tmp_path / "tiny.png")
    ds = DS.RestorationDataset(DS.ImageBank.from_folder(tmp_path), crop_size=40, length=3)
    assert ds[0][0].shape == (3, 40, 40)


def test_prefers_textured_crops() -> None:
    img = np.full((200, 200, 3), 128, np.uint8)
    img[:, 150:] = textured(200, 50, 9)  # only a quarter of the image has texture
    bank = DS.ImageBank([img], ["half"])
    ds = DS.RestorationDataset(
        bank, names=["noise"], crop_size=32, scale_range=(1, 1), min_texture=0.02, flat_keep_prob=0.0
    )
    lax = DS.RestorationDataset(bank, names=["noise"], crop_size=32, scale_range=(1, 1), min_texture=0.0)
    # --flat-crops 1: every crop as drawn, whatever the texture threshold
    flat = DS.RestorationDataset(
        bank, names=["noise"], crop_size=32, scale_range=(1, 1), min_texture=0.02, flat_keep_prob=1.0
    )
    picky = np.mean([DS.texture_score(ds.random_crop(ds.rng_for(i))) > 0.02 for i in range(40)])
    plain = np.mean([DS.texture_score(lax.random_crop(lax.rng_for(i))) > 0.02 for i in range(40)])
    as_drawn = np.mean([DS.texture_score(flat.random_crop(flat.rng_for(i))) > 0.02 for i in range(40)])
    assert picky > 0.9
    assert plain < 0.6
    assert as_drawn < 0.6


def test_texture_score() -> None:
    flat = np.full((32, 32, 3), 0.5, np.float32)
    assert DS.texture_score(flat) == 0.0
    assert DS.texture_score(textured(32, 32, 1)) > 0.02


def test_validation_set(folder: Path) -> None:
    bank = DS.ImageBank.from_folder(folder, "val", max_side=200)
    names = ["noise", "jpeg", "haze"]
    mixed = [("haze", "noise")]
    v1 = DS.build_validation_set(bank, names, crop_size=48, crops_per_image=2, seed=1, mixed=mixed)
    v2 = DS.build_validation_set(bank, names, crop_size=48, crops_per_image=2, seed=1, mixed=mixed)
    assert len(v1) == len(bank) * 2 * (len(names) + 1)
    for s1, s2 in zip(v1, v2, strict=True):
        assert np.array_equal(s1.degraded, s2.degraded) and np.array_equal(s1.clean, s2.clean)
        assert s1.degraded.shape == (48, 48, 3)
    assert {s.degradation for s in v1} == {"noise", "jpeg", "haze", "haze+noise"}
    assert all(s.label == names.index(s.degradation) for s in v1 if "+" not in s.degradation)
    assert all(s.label == -1 for s in v1 if "+" in s.degradation)
    v3 = DS.build_validation_set(bank, names, crop_size=48, seed=2)
    assert not np.array_equal(v1[0].degraded, v3[0].degraded)
    deg, _clean, label = DS.ValidationDataset(v1)[0]
    assert deg.shape == (3, 48, 48) and label.dtype == torch.int64


def test_mixed_items_carry_target_distributions(folder: Path) -> None:
    bank = DS.ImageBank.from_folder(folder, max_side=200)
    ds = DS.RestorationDataset(bank, crop_size=32, length=60, seed=5, mixed=0.5)
    pairs = 0
    for i in range(60):
        target = ds[i][2]
        assert target.dtype == torch.float32 and target.shape == (len(EXPERTS),)
        assert float(target.sum()) == pytest.approx(1.0)
        assert set(target.unique().tolist()) <= {0.0, 0.5, 1.0}
        pairs += int((target == 0.5).sum() == 2)
    assert 15 <= pairs <= 45  # about half
    # Without mixing the items are exactly those of a run written before the option existed.
    plain, zero = DS.RestorationDataset(bank, crop_size=32, length=5, seed=5), DS.RestorationDataset(
        bank, crop_size=32, length=5, seed=5, mixed=0.0)
    for i in range(5):
        assert all(torch.equal(a, b) for a, b in zip(plain[i], zero[i], strict=True))
    with pytest.raises(ValueError):
        DS.RestorationDataset(bank, mixed=1.0)
