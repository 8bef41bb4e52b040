"""Tiled inference agrees with whole-image inference, without seams; tile plans cover the image."""

import itertools

import numpy as np
import pytest

from lorair_desktop.core import Restorer
from lorair_desktop.core.errors import Cancelled, ImageError
from lorair_desktop.core.tiling import plan_tiles, tile_profiles
from tests.conftest import with_router_context


def _image(h: int = 208, w: int = 272) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.3 * np.sin(xx / 17) * np.cos(yy / 23), 0.5 + 0.2 * np.sin((xx + yy) / 31),
                    0.4 + 0.3 * np.cos(xx / 9)], -1)
    img += np.random.default_rng(0).normal(0, 0.05, img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def test_plan_covers_every_pixel_with_positive_weight() -> None:
    for h, w, t, o in [(100, 100, 64, 16), (257, 129, 96, 32), (50, 300, 64, 8), (16, 300, (16, 64), 16)]:
        acc = np.zeros((h, w))
        for tile in plan_tiles(h, w, t, o):
            assert tile.y0 + tile.h <= h and tile.x0 + tile.w <= w
            acc[tile.y0 : tile.y0 + tile.h, tile.x0 : tile.x0 + tile.w] += np.outer(*tile_profiles(tile, h, w, o))
        assert acc.min() > 0.5


def test_tiled_matches_whole_image_without_seams(small_model) -> None:
    r = Restorer(small_model, "cpu")
    img = _image()
    whole = r.restore(img, tile=4096)
    tiled = r.restore(img, tile=96, overlap=32, overrides={"noise": 0.7, "jpeg": 0.3})
    tiled_auto = r.restore(img, tile=96, overlap=32)
    assert whole.tiles == 1 and tiled.tiles > 4
    d = np.abs(tiled_auto.image - whole.image).mean(-1)
    # Shared routing + padding once + TLC-free overlap blending: interior agreement to ~1e-4.
    assert d.mean() < 2e-4 and d.max() < 5e-3
    # Seams: the error on tile borders is not larger than elsewhere.
    step = 96 - 32
    border_cols = [x for x in range(step, img.shape[1], step)]
    seam = d[:, border_cols].mean()
    assert seam < 5 * d.mean() + 1e-5
    assert tiled.applied_weights["noise"] == pytest.approx(0.7)
    assert not np.allclose(tiled.image, tiled_auto.image)  # the manual mix really applies


def test_progress_and_cancel(small_model) -> None:
    r = Restorer(small_model, "cpu")
    seen = []
    r.restore(_image(160, 160), tile=64, overlap=16, progress=lambda i, n: seen.append((i, n)))
    assert seen[-1][0] == seen[-1][1] == len(seen) > 1
    calls = []
    with pytest.raises(Cancelled):
        r.restore(_image(160, 160), tile=64, overlap=16, cancel=lambda: len(calls) > 1 or calls.append(1) or False)


def test_bad_images_are_refused(small_model) -> None:
    r = Restorer(small_model, "cpu")
    with pytest.raises(ImageError):
        r.restore(np.zeros((0, 10, 3), np.float32))
    with pytest.raises(ImageError):
        r.restore(np.full((8, 8, 3), np.nan, np.float32))
    with pytest.raises(ImageError):
        r.restore(np.zeros((8, 8), np.float32))


def test_odd_sizes_and_tiny_images(small_model) -> None:
    r = Restorer(small_model, "cpu")
    for h, w in [(1, 1), (7, 33), (17, 5)]:
        out = r.restore(np.random.default_rng(0).random((h, w, 3), dtype=np.float32))
        assert out.image.shape == (h, w, 3) and np.isfinite(out.image).all()
    # strips longer than a tile and thinner than twice the overlap: tiled along their length only
    # (a 1x3000 strip failed with "overlap 16 must be less than half the tile size 16")
    for h, w in [(1, 300), (300, 3), (20, 250)]:
        strip = np.random.default_rng(1).random((h, w, 3), dtype=np.float32)
        out = r.restore(strip, tile=96, overlap=16)
        assert out.tiles > 1 and out.image.shape == (h, w, 3) and np.isfinite(out.image).all()
        whole = r.restore(strip, tile=4096)
        assert np.abs(out.image - whole.image).mean() < 2e-3  # blended along the strip, as in one piece


def test_integer_inputs_and_outputs_match_the_float_path(small_model) -> None:
    r = Restorer(small_model, "cpu")
    u8 = (_image(64, 80) * 255 + 0.5).astype(np.uint8)
    ref = r.restore(u8.astype(np.float32) / 255, tile=48, overlap=16)
    out8 = r.restore(u8, tile=48, overlap=16, out_dtype=np.uint8)
    assert out8.image.dtype == np.uint8
    assert np.abs(out8.image.astype(np.float32) - ref.image * 255).max() <= 0.5 + 1e-3
    u16 = u8.astype(np.uint16) * 257
    out16 = r.restore(u16, tile=48, overlap=16, out_dtype=np.uint16)
    assert np.abs(out16.image.astype(np.float32) / 65535 - ref.image).max() < 1e-4
    rgba = np.dstack([u8, np.full(u8.shape[:2], 7, np.uint8)])
    view = r.restore(rgba[..., :3], tile=48, overlap=16, out_dtype=np.uint8)  # a strided view, no copy needed
    assert np.array_equal(view.image, out8.image)


def test_huge_image_router_path_agrees_with_the_direct_one(small_model, monkeypatch) -> None:
    import lorair_desktop.core.inference as inf

    r = Restorer(with_router_context(small_model, 0), "cpu")  # routed whole: no context crops
    img = _image(400, 600)
    direct = r.analyze(img)
    monkeypatch.setattr(inf, "ROUTER_SHRINK", 150)  # force the reduced-copy + native-crops path
    reduced = r.analyze(img)
    assert np.abs(np.array(direct.logits) - np.array(reduced.logits)).max() < 0.05


def test_balanced_tiles_keep_the_count_and_cover_with_less_overlap() -> None:
    from lorair_desktop.core.tiling import axis_starts, balanced_length

    for length, tile, ov, m in [(1024, 384, 16, 16), (6000, 384, 16, 16), (4000, 384, 48, 16), (500, 384, 16, 16)]:
        side = balanced_length(length, tile, ov, m)
        assert side % m == 0 and side <= tile
        starts = axis_starts(length, side, ov)
        assert len(starts) == len(axis_starts(length, tile, ov))
        assert starts[0] == 0 and starts[-1] + side == length  # covers the axis exactly
        assert all(b - a <= side - ov for a, b in itertools.pairwise(starts))  # every seam keeps its overlap
    assert balanced_length(1024, 384, 16, 16) == 352
    assert balanced_length(300, 384, 16, 16) == 300  # one tile: the whole axis


def planned_tiles(model, h: int, w: int, buffers: int) -> tuple[int, int]:
    """(auto tile side, tiles planned) of a bf16 CPU restore of an h x w image."""
    tile = Restorer(model, device="cpu", precision="bf16").auto_tile(h, w, buffers)
    return tile, len(plan_tiles(h, w, tile, 16))


def test_cpu_tiles_are_the_fastest_side_shrunk_to_the_memory_budget(small_model) -> None:
    import dataclasses

    from lorair_desktop.core import LoRAIR
    from lorair_desktop.core.inference import CPU_TILE, CPU_TILE_MIN

    cfg = small_model.cfg
    lite_net = dataclasses.replace(cfg.net, enc_blocks=(0, 1, 1, 2), dec_blocks=(1, 1, 1, 0))
    assert lite_net.layout != cfg.net.layout
    lite = LoRAIR(dataclasses.replace(cfg, net=lite_net)).eval()
    assert Restorer(small_model, device="cpu", precision="bf16").auto_tile(1000, 1000) == CPU_TILE
    assert Restorer(lite, device="cpu", precision="bf16").auto_tile(1000, 1000) == CPU_TILE
    # a 1 MP float photo is one tile, its buffers (in and out, 24 MB) notwithstanding; a little
    # bigger than one tile, the buffers count and the tiles shrink to the budget
    float_buffers = 2 * 1000 * 1000 * 3 * 4
    assert planned_tiles(lite, 1000, 1000, float_buffers) == (CPU_TILE, 1)
    tile, n = planned_tiles(lite, 1000, 1100, float_buffers)
    assert tile < CPU_TILE and n == 4
    # in fp32 a 1 MP tile is over the budget (~780 MB of activations): tiled as before
    assert Restorer(lite, device="cpu", precision="fp32").auto_tile(1000, 1000, float_buffers) < CPU_TILE
    # a 24 MP photo's buffers leave less room for the tile (8-bit in and out), down to a floor
    r = Restorer(lite, device="cpu", precision="bf16")
    photo = 2 * 24_000_000 * 3
    assert CPU_TILE_MIN <= r.auto_tile(4000, 6000, photo) < CPU_TILE
    assert r.auto_tile(4000, 6000, 4 * photo) == CPU_TILE_MIN  # float in and out: over budget already
    assert Restorer(lite, device="cpu", precision="fp32").auto_tile(4000, 6000, photo) < r.auto_tile(4000, 6000, photo)
    # a memory budget still bounds the tile, whatever the network
    assert Restorer(lite, device="cpu", memory_budget_mb=64).auto_tile(4000, 6000) < CPU_TILE
    # and the bigger tile restores the same image as small tiles do (same seams tolerance as above)
    img = _image(272, 336)
    r = Restorer(lite, device="cpu")
    whole, tiled = r.restore(img, tile=CPU_TILE), r.restore(img, tile=128)
    assert whole.tiles == 1 and tiled.tiles > 4
    d = np.abs(whole.image - tiled.image).mean(-1)
    assert d.mean() < 2e-4 and d.max() < 5e-3


def test_self_ensemble_averages_flipped_and_turned_passes(small_model) -> None:
    """x8 equals the hand-made mean of the eight flipped/turned restores; rain mixes keep to the four
    passes that leave streak directions alone; 1 is the plain restore; other counts are refused."""
    from lorair_desktop.core.inference import ENSEMBLES
    from lorair_desktop.errors import LoraIRError

    r = Restorer(small_model, device="cpu", precision="fp32")
    img = _image(96, 128)  # one tile: the ensemble runs on the whole image
    mix = {"noise": 1.0}
    plain = r.restore(img, overrides=mix)
    # the same restore again, to float rounding: the CPU thread governor may change the thread count
    # between two calls under load, and the convolutions' sums then round differently (seen: 1 ulp)
    again = r.restore(img, overrides=mix, ensemble=1)
    assert plain.ensemble == 1 and again.ensemble == 1 and np.abs(again.image - plain.image).max() < 1e-5
    views = []
    for turns in range(4):
        for mirrored in (False, True):
            v = np.rot90(img, turns)
            v = v[:, ::-1] if mirrored else v
            out = r.restore(np.ascontiguousarray(v), overrides=mix).image
            out = out[:, ::-1] if mirrored else out
            views.append(np.rot90(out, -turns))
    seen: list[tuple[float, int]] = []
    x8 = r.restore(img, overrides=mix, ensemble=8, progress=lambda done, total: seen.append((done, total)))
    assert x8.ensemble == 8
    assert seen == [(k / 8, 1) for k in range(1, 9)]  # one tile: its passes move the progress
    # the passes are averaged before the clip to [0, 1]: compare where no single pass was clipped
    inside = np.all((np.array(views) > 0) & (np.array(views) < 1), axis=0)
    assert inside.mean() > 0.5
    assert np.abs(x8.image - np.mean(views, axis=0))[inside].max() < 1e-4
    assert np.abs(x8.image - plain.image).max() > 1e-3  # the passes really differ
    rainy = r.restore(img, overrides={"rain": 0.5, "noise": 0.5}, ensemble=8)
    assert rainy.ensemble == 4
    # what is oriented is the model's to say: one that lists no oriented expert turns rain too
    import dataclasses

    from lorair_desktop.core import LoRAIR

    unoriented = LoRAIR(dataclasses.replace(small_model.cfg, oriented_experts=()))
    unoriented.load_state_dict(small_model.state_dict())
    turned = Restorer(unoriented, device="cpu", precision="fp32").restore(
        img, overrides={"rain": 0.5, "noise": 0.5}, ensemble=8)
    assert turned.ensemble == 8
    assert 2 in ENSEMBLES and r.restore(img, overrides=mix, ensemble=2).ensemble == 2
    for bad in (0, 3, 16):
        with pytest.raises(LoraIRError, match="ensemble"):
            r.restore(img, ensemble=bad)


def test_out_of_memory_retries_with_smaller_tiles(small_model, monkeypatch) -> None:
    """A device that cannot hold a tile (another program took the GPU's memory, or --tile was too big)
    is retried at half the side until OOM_TILE_MIN; the result is the one those tiles give."""
    import torch

    from lorair_desktop.core.inference import OOM_TILE_MIN

    r = Restorer(small_model, "cpu", precision="fp32")
    img = _image(300, 560)
    ref = r.restore(img, tile=OOM_TILE_MIN)
    real = r._forward
    sides: list[int] = []

    def forward(x, prior, dtype):  # type: ignore[no-untyped-def]
        sides.append(max(x.shape[-2:]))
        if max(x.shape[-2:]) > OOM_TILE_MIN:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(x, prior, dtype)

    monkeypatch.setattr(r, "_forward", forward)
    seen: list[tuple[float, int]] = []
    res = r.restore(img, tile=1024, progress=lambda i, n: seen.append((i, n)))
    assert res.tile_size == OOM_TILE_MIN and res.tiles == ref.tiles > 1
    assert np.abs(res.image - ref.image).max() < 1e-5  # oneDNN's kernels may round the last bit apart
    # the whole image (tile 1024) failed, then a tile of 512, then tiles of at most 256 went through
    assert sides[0] > 512 and OOM_TILE_MIN < sides[1] <= 512 and max(sides[2:]) <= OOM_TILE_MIN
    assert seen[-1] == (ref.tiles, ref.tiles)  # the progress ends at the plan that ran

    def no_memory(x, prior, dtype):  # type: ignore[no-untyped-def]
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(r, "_forward", no_memory)
    with pytest.raises(torch.OutOfMemoryError):  # not even the smallest tile: the caller reports it
        r.restore(img, tile=1024)
    monkeypatch.setattr(r, "_forward", real)
    assert np.abs(r.restore(img, tile=OOM_TILE_MIN).image - ref.image).max() < 1e-5  # the experts were unmerged
