"""NAFNet backbone with the degradation prior (DAM blocks) and LoRA experts on every convolution.

Shapes: image (B, 3, H, W) in [0, 1]; prior (B, P). Every conv is a LoRAConv2d; with no expert
weights set (or all zero) the network is exactly the Stage 1 base network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import native
from .config import ModelConfig
from .lora import LoRAConv2d

ConvFactory = Callable[..., LoRAConv2d]


class LayerNorm2d(nn.Module):
    """LayerNorm over channels of a (B, C, H, W) tensor (NAFNet's, with `weight`/`bias` names)."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x: Tensor, weight: Tensor | None = None, bias: Tensor | None = None, *,
                residual: bool = False) -> Tensor:
        """Normalised x with this norm's affine, or with `weight`/`bias` given in its place; plus x
        itself where `residual`."""
        w = self.weight if weight is None else weight
        b = self.bias if bias is None else bias
        y = native.layer_norm_nhwc(x, w, b, self.eps, residual=residual)
        if y is not None:  # the fused C kernel: one pass, ~2-6x faster on short rows (native.py)
            return y
        # One fused kernel over the channel axis: on a channels_last tensor the NHWC permute is free,
        # and this memory-bound op then reads and writes the tensor once instead of ~7 times.
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), w, b, self.eps).permute(0, 3, 1, 2)
        return x + y if residual else y


def _box_sum(x: Tensor, k: int, dim: int) -> Tensor:
    """Sums over windows of k along dim ('valid' positions only), by a 1-D cumulative sum."""
    c = F.pad(x.cumsum(dim), (0, 0, 1, 0) if dim == -2 else (1, 0))
    n = c.shape[dim]
    return c.narrow(dim, k, n - k) - c.narrow(dim, 0, n - k)


def local_mean(x: Tensor, window: tuple[int, int]) -> Tensor:
    """Mean over a sliding window, edges replicated (TLC). Equals the global mean when the window covers x."""
    h, w = x.shape[-2:]
    kh, kw = min(window[0], h), min(window[1], w)
    if kh == h and kw == w:
        return x.mean((-2, -1), keepdim=True)
    xf = x.float()
    if x.shape[1] >= 64 and x.is_contiguous(memory_format=torch.channels_last):
        # Many channels side by side in memory: two 1-D average pools vectorise over them and beat the
        # cumulative sums (measured at 128 x 124², window 24: 2.6 against 4.3 ms); with fewer, not.
        out = F.avg_pool2d(F.avg_pool2d(xf, (kh, 1), 1), (1, kw), 1)
    else:
        # Separable 1-D cumulative sums: each runs over one axis only, so float32 keeps ~1e-6 precision.
        out = _box_sum(_box_sum(xf, kh, -2), kw, -1) / (kh * kw)
    oh, ow = out.shape[-2:]
    pad = ((w - ow) // 2, (w - ow + 1) // 2, (h - oh) // 2, (h - oh + 1) // 2)
    return F.pad(out, pad, mode="replicate").to(x.dtype)


class ChannelPool(nn.Module):
    """Global average pool while training; a local window (TLC) at inference when `window` is set."""

    def __init__(self, window: int | None) -> None:
        super().__init__()
        self.window = window

    def grid(self, h: int, w: int) -> tuple[int, int]:
        """(cell size, window in cells) of the coarse grid the local means are taken on.

        A window this wide varies slowly: averaging on cells of `step` pixels (16-32 cells per window)
        and box-filtering the small grid costs ~step² fewer sums than at full resolution. An odd
        number of cells keeps each window centred on a cell centre, where bilinear upsampling
        (expand) puts the cell's value; an even count would shift every mean by step/2 pixels."""
        if self.window is None or self.training:
            return 1, 1
        k = min(self.window, h, w)
        # Prefer a cell that divides the size (inside the network every level is a multiple of
        # 16 >> level): the grid then tiles x exactly. Otherwise x is edge-padded (looser at the edge).
        step = next((s for s in range(k // 16, k // 32, -1) if h % s == 0 and w % s == 0), max(1, k // 16))
        if step == 1:
            return 1, self.window
        cells = self.window // step
        return step, cells - (1 - cells % 2)

    def cell(self, h: int, w: int) -> int:
        """The cell size `forward` averages x on first (1: none, i.e. global means or pixel windows)."""
        if self.window is None or self.training or min(self.window, h, w) == max(h, w):
            return 1
        return self.grid(h, w)[0]

    def forward(self, x: Tensor, cell_means: Tensor | None = None) -> Tensor:
        """(B, C, 1, 1) global means, or local means on a grid `step` times coarser than x (see expand).
        `cell_means`: x's means over cells of `cell(h, w)` pixels where the caller has them already."""
        if self.window is None or self.training:
            return x.mean((-2, -1), keepdim=True)
        h, w = x.shape[-2:]
        k = min(self.window, h, w)
        if k == h and k == w:
            return x.mean((-2, -1), keepdim=True)
        step, cells = self.grid(h, w)
        if step == 1:
            return local_mean(x, (cells, cells))
        if cell_means is None:
            ph, pw = (-h) % step, (-w) % step
            if ph or pw:  # not a multiple of the cell: edge-pad (TLC replicates edges too)
                x = F.pad(x, (0, pw, 0, ph), mode="replicate")
            cell_means = F.avg_pool2d(x, step)
        return local_mean(cell_means, (cells, cells))

    def expand(self, att: Tensor, size: tuple[int, int]) -> Tensor:
        """The per-pixel attention from its grid: 1x1 convs and bilinear upsampling are both linear
        per pixel, so the attention conv runs on the small grid and only its result is upsampled."""
        if (att.shape[-1] == 1 and att.shape[-2] == 1) or att.shape[-2:] == size:
            return att
        step = self.grid(*size)[0]
        up = F.interpolate(att, scale_factor=step, mode="bilinear", align_corners=False)
        return up[..., : size[0], : size[1]]

    def attend(self, x: Tensor, att: Tensor) -> Tensor:
        """x times its attention (from forward's grid, through sca): where att is a grid of cells,
        upsampled and multiplied in one pass by the fused kernel if it applies."""
        size = (x.shape[-2], x.shape[-1])
        if att.shape[-2:] != (1, 1) and att.shape[-2:] != size:
            y = native.scale_by_grid(x, att, self.grid(*size)[0])
            if y is not None:
                return y
        return x * self.expand(att, size)


class NAFBlock(nn.Module):
    def __init__(self, c: int, conv: ConvFactory, tlc_window: int | None) -> None:
        super().__init__()
        dw = 2 * c
        self.norm1 = LayerNorm2d(c)
        self.conv1 = conv(c, dw, 1)
        self.conv2 = conv(dw, dw, 3, padding=1, groups=dw)
        self.pool = ChannelPool(tlc_window)
        self.sca = conv(dw // 2, dw // 2, 1)
        self.conv3 = conv(dw // 2, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.conv4 = conv(c, 2 * c, 1)
        self.conv5 = conv(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, inp: Tensor) -> Tensor:
        x = self.conv2(self.conv1(self.norm1(inp)))  # (B, 2C, H, W)
        x, cell_means = self.gate(x)  # SimpleGate -> (B, C, H, W)
        att = self.sca(self.pool(x, cell_means))  # simplified channel attention: (B, C, 1, 1) or a coarse TLC grid
        y = inp + self.conv3(self.pool.attend(x, att), out_scale=self.beta)
        a, b = self.conv4(self.norm2(y)).chunk(2, dim=1)
        return y + self.conv5(a * b, out_scale=self.gamma)

    def gate(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """SimpleGate (a * b of x's halves), with the attention's cell means from the same pass where
        the fused kernel applies (native.gate_pool), else None."""
        step = self.pool.cell(x.shape[-2], x.shape[-1])
        fused = native.gate_pool(x, step) if step > 1 else None
        if fused is not None:
            return fused
        a, b = x.chunk(2, dim=1)
        return a * b, None


class DAM(nn.Module):
    """Degradation-aware modulation: x <- x + beta * LayerNorm(x) * sigmoid(SE(h(prior)))."""

    def __init__(self, c: int, prior_dim: int, hidden: int, reduction: int, conv: ConvFactory) -> None:
        super().__init__()
        self.norm = LayerNorm2d(c)
        self.proj1 = conv(prior_dim, hidden, 1)
        self.proj2 = conv(hidden, c, 1)
        squeeze = max(1, c // reduction)
        self.se1 = conv(c, squeeze, 1)
        self.se2 = conv(squeeze, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))

    def forward(self, x: Tensor, prior: Tensor) -> Tensor:  # prior: (B, P, 1, 1)
        h = self.proj2(F.gelu(self.proj1(prior)))
        g = torch.sigmoid(self.se2(F.relu(self.se1(h))))  # (B, C, 1, 1)
        if g.shape[0] == 1:
            # One prior (inference): beta * g folds into the norm's affine, one pass instead of three.
            s = (self.beta * g).reshape(-1)
            return self.norm(x, weight=self.norm.weight * s, bias=self.norm.bias * s, residual=True)
        return x + self.beta * (self.norm(x) * g)


class Level(nn.Module):
    """An encoder level or the middle: optional DAM, then NAFBlocks."""

    def __init__(self, c: int, n: int, conv: ConvFactory, tlc: int | None, dam: DAM | None) -> None:
        super().__init__()
        self.dam = dam
        self.blocks = nn.ModuleList(NAFBlock(c, conv, tlc) for _ in range(n))

    def forward(self, x: Tensor, prior: Tensor | None = None) -> Tensor:
        if self.dam is not None:
            assert prior is not None
            x = self.dam(x, prior)
        for blk in self.blocks:
            x = blk(x)
        return x


class LoRAIRNet(nn.Module):
    """The restoration network. forward(image (B,3,H,W), prior (B,P)) -> restored (B,3,H,W)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        n, lc = cfg.num_experts, cfg.lora

        def conv(i: int, o: int, k: int, **kw: object) -> LoRAConv2d:
            return LoRAConv2d(i, o, k, num_experts=n, rank=lc.rank, alpha=lc.alpha, **kw)  # type: ignore[arg-type]

        nc = cfg.net
        self.pad_multiple = cfg.pad_multiple
        base_window = int(nc.train_size * 1.5) if nc.tlc else None

        def window(level: int) -> int | None:
            return None if base_window is None else max(1, base_window >> level)

        p = nc.prior_dim
        self.intro = conv(3, nc.width, 3, padding=1)
        self.prior_proj1 = conv(p, p, 1)
        self.prior_proj2 = conv(p, p, 1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = nc.width
        for lvl, nb in enumerate(nc.enc_blocks):
            dam = DAM(c, p, nc.dam_hidden, nc.dam_reduction, conv)
            self.encoders.append(Level(c, nb, conv, window(lvl), dam))
            self.downs.append(conv(c, 2 * c, 2, stride=2))
            c *= 2
        depth = len(nc.enc_blocks)
        self.middle = Level(c, nc.middle_blocks, conv, window(depth),
                            DAM(c, p, nc.dam_hidden, nc.dam_reduction, conv))
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i, nb in enumerate(nc.dec_blocks):
            self.ups.append(conv(c, 2 * c, 1, bias=False))
            c //= 2
            self.decoders.append(Level(c, nb, conv, window(depth - 1 - i), None))
        self.ending = conv(nc.width, 3, 3, padding=1)

    def forward(self, image: Tensor, prior: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        m = self.pad_multiple
        x0 = F.pad(image, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect" if min(h, w) > m else "replicate")
        pr = prior.reshape(prior.shape[0], -1, 1, 1).to(image.dtype)
        pr = F.gelu(self.prior_proj2(F.gelu(self.prior_proj1(pr))))
        x = self.intro(x0)
        skips = []
        for enc, down in zip(self.encoders, self.downs, strict=True):
            x = enc(x, pr)
            skips.append(x)
            x = down(x)
        x = self.middle(x, pr)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips), strict=True):
            u = up(x)
            fused = native.shuffle_add(u, skip)  # one pass instead of two where it applies
            x = fused if fused is not None else F.pixel_shuffle(u, 2) + skip
            x = dec(x)
        x = self.ending(x) + x0
        return x[..., :h, :w]
