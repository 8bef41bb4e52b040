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
