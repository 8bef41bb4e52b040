"""The router's five views: a global view and four high-resolution views."""

import torch
import torch.nn.functional as F

from lorair_desktop.core.router import make_views


def test_paper_views_are_the_resized_image_cut_in_four() -> None:
    img = torch.rand(2, 3, 100, 140)
    v = make_views(img, 32, "paper")
    assert v.shape == (2, 5, 3, 32, 32)
    glob = F.interpolate(img, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(v[:, 0], glob)
    big = F.interpolate(img, size=(64, 64), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(v[:, 1], big[..., :32, :32])
    assert torch.equal(v[:, 4], big[..., 32:, 32:])


def test_native_views_are_full_resolution_crops_at_quadrant_centres() -> None:
    img = torch.rand(1, 3, 200, 300)
    v = make_views(img, 32, "native")
    # quadrant centres (50, 75), (50, 225), (150, 75), (150, 225): crops start 16 px before
    assert torch.equal(v[0, 1], img[0, :, 34:66, 59:91])
    assert torch.equal(v[0, 4], img[0, :, 134:166, 209:241])


def test_native_falls_back_to_paper_for_small_images() -> None:
    img = torch.rand(1, 3, 50, 60)
    assert torch.equal(make_views(img, 32, "native"), make_views(img, 32, "paper"))


def test_router_output_shapes(small_model) -> None:
    with torch.no_grad():
        out = small_model.route(torch.rand(2, 3, 130, 170))
    assert out.prior.shape == (2, small_model.cfg.net.prior_dim)
    assert out.logits.shape == (2, 6)


def test_context_boxes_grid_the_image_in_router_sized_crops() -> None:
    from lorair_desktop.core.router import context_boxes

    assert context_boxes(1000, 1600, 0) == []  # 0: the whole image at once
    assert context_boxes(300, 380, 256) == []  # about one context: routed whole
    boxes = context_boxes(1000, 1600, 256)
    assert len(boxes) == 6  # 2 rows (1000 px) x 3 columns (1600 px)
    assert {(h, w) for _, _, h, w in boxes} == {(256, 256)}
    assert sorted({y for y, _, _, _ in boxes}) == [122, 622]  # centred in cells of 500 px
    assert sorted({x for _, x, _, _ in boxes}) == [138, 672, 1205]
    assert len(context_boxes(6000, 4000, 256)) == 9  # at most 3 x 3, however big the photo
    strip = context_boxes(200, 3000, 256)  # a strip lower than a context: crops of its height
    assert len(strip) == 3 and {(y, h, w) for y, _, h, w in strip} == {(0, 200, 256)}
    for y, x, h, w in context_boxes(517, 731, 256):
        assert 0 <= y <= 517 - h and 0 <= x <= 731 - w


def test_an_image_bigger_than_the_context_is_routed_through_its_context_crops() -> None:
    import numpy as np

    from lorair_desktop.core import Restorer, load_model
    from lorair_desktop.core.router import context_boxes

    model = load_model("lorair-lite")  # the shipped router, whose outputs differ from crop to crop
    assert model.cfg.router.context == 256
    rng = np.random.default_rng(0)
    yy, _ = np.mgrid[0:600, 0:840].astype(np.float32)
    img = np.repeat((0.2 + 0.6 * yy / 600)[..., None], 3, axis=2)  # dark at the top, bright below
    img[:, 420:] += rng.normal(0, 0.2, (600, 420, 3)).astype(np.float32)  # noisy on the right only
    img = np.clip(img, 0, 1)
    restorer = Restorer(model, "cpu")
    a = restorer.analyze(img)
    boxes = context_boxes(600, 840, 256)
    assert len(boxes) == 4
    with torch.inference_mode():
        crops = [torch.from_numpy(img[y : y + h, x : x + w].transpose(2, 0, 1).copy())[None] for y, x, h, w in boxes]
        # each crop on its own through the tower; the head reads the mean of their features
        feats = torch.cat([model.router.features(c) for c in crops])
        ref = model.router.from_features(feats.mean(0, keepdim=True))
        single = model.router.from_features(feats)
    assert np.allclose(a.logits, ref.logits[0].numpy(), atol=1e-4)
    assert torch.allclose(a.prior, ref.prior, atol=1e-4)
    # the crops differ (clean on the left, noisy on the right): the image's routing is none of theirs
    assert (single.logits[0] - single.logits[1]).abs().max() > 1.0
    assert not any(np.allclose(a.logits, row.numpy(), atol=0.1) for row in single.logits)
    # an image of about one context is routed whole, as before
    small = img[:300, :360]
    whole = restorer.analyze(small)
    with torch.inference_mode():
        ref = model.router(torch.from_numpy(small.transpose(2, 0, 1).copy())[None])
    assert np.allclose(whole.logits, ref.logits[0].numpy(), atol=1e-4)


def test_router_context_must_be_a_crop_side_or_zero() -> None:
    import json

    import pytest

    from lorair_desktop.core.config import config_from_dict, load_config
    from lorair_desktop.core.errors import ConfigError

    data = json.loads(load_config("lorair-lite").to_json())
    assert data["router"]["context"] == 256
    for bad in (-1, 1.5, True, "256"):
        data["router"]["context"] = bad
        with pytest.raises(ConfigError, match=r"router\.context"):
            config_from_dict(data)
    del data["router"]["context"]  # checkpoints from before the key: routed whole, as they were
    assert config_from_dict(data).router.context == 0
