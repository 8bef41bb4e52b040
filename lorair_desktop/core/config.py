"""Model configs: strict dataclasses loaded from the JSON presets in resources/model_configs/.

An unknown or missing key is a ConfigError that names the valid keys, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigError

_EXPERT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
# Degradations whose look has a direction (streaks fall one way): a quarter turn makes them unlike
# anything the expert learnt, so the self-ensemble keeps to mirror images where one is mixed in.
# The default of a model that does not list its own (ModelConfig.oriented_experts).
KNOWN_ORIENTED = frozenset({"rain", "rain-fog", "snow"})


BUILTIN_RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def resources_dir() -> Path:
    """The repository's resources folder (override with LORAIR_RESOURCES)."""
    env = os.environ.get("LORAIR_RESOURCES")
    if env:
        return Path(env)
    return BUILTIN_RESOURCES


@dataclass(frozen=True)
class NetConfig:
    """NAFNet backbone with the degradation prior (DAM blocks on encoder levels and middle)."""

    width: int = 16
    enc_blocks: tuple[int, ...] = (1, 1, 1, 2)
    middle_blocks: int = 2
    dec_blocks: tuple[int, ...] = (1, 1, 1, 1)
    prior_dim: int = 384  # size of the router's degradation prior
    dam_hidden: int = 128  # 1x1 prior -> hidden -> C inside each DAM
    dam_reduction: int = 16  # SE-style squeeze ratio inside each DAM
    train_size: int = 128  # training crop; sets the TLC pooling window (1.5x)
    tlc: bool = True  # test-time local converter for the channel attention

    @property
    def layout(self) -> str:
        """The network's shape in one line (what its speed depends on, weights aside)."""
        enc, dec = "-".join(map(str, self.enc_blocks)), "-".join(map(str, self.dec_blocks))
        return f"width {self.width} enc {enc} middle {self.middle_blocks} dec {dec}"


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 4
    alpha: float = 8.0
    top_k: int = 1  # router weights keep the k largest logits, softmax over them
    # ...and drop a share below this from that mix (routing.topk_softmax): 0 keeps the paper's top-k
    min_share: float = 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


@dataclass(frozen=True)
class RouterConfig:
    """DG-Router: an open_clip vision tower seen through 1 global + 2x2 high-resolution views."""

    clip_model: str = "lorair-tiny-vit"  # open_clip architecture name (custom ones live in clip/)
    image_size: int = 128  # side of each view fed to the tower
    views: str = "native"  # "paper": image resized to 2S and cut in 4; "native": 4 S-crops at full res
    resample: str = "bilinear"  # view resizing filter; "bicubic" matches the official (PIL) preprocessing
    head_hidden: int = 256
    pretrained: str | None = None  # open_clip pretrained tag or local file (then tower frozen)
    freeze_tower: bool = False
    # Side of the crops the router was trained on (its "context"): a bigger image is routed through a
    # grid of such crops at full resolution (router.context_boxes, DGRouter.route_crops), since a whole
    # photo squeezed into the global view looks unlike anything it learnt. 0: the whole image at once,
    # as the paper's router (trained on whole images) routes.
    context: int = 0


@dataclass(frozen=True)
class ModelConfig:
    name: str
    description: str
    experts: tuple[str, ...]
    net: NetConfig = field(default_factory=NetConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    # experts whose degradation has a direction; None: those of KNOWN_ORIENTED among the experts
    oriented_experts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.experts:
            raise ConfigError(f"model '{self.name}' lists no experts", "add an 'experts' list")
        for e in self.experts:
            if not _EXPERT_NAME.match(e):
                raise ConfigError(
                    f"expert name {e!r} is not valid", "use lowercase letters, digits and '-', e.g. 'low-light'"
                )
        if len(set(self.experts)) != len(self.experts):
            raise ConfigError(f"model '{self.name}' repeats an expert name: {list(self.experts)}")
        stray = sorted(set(self.oriented_experts or ()) - set(self.experts))
        if stray:
            raise ConfigError(f"oriented_experts names {stray}, which are not experts of '{self.name}'",
                              f"list some of {list(self.experts)}, or [] for none")
        if not 1 <= self.lora.top_k <= len(self.experts):
            raise ConfigError(f"lora.top_k={self.lora.top_k} must lie in 1..{len(self.experts)}")
        if not 0.0 <= self.lora.min_share < 1.0 / self.lora.top_k:
            raise ConfigError(f"lora.min_share={self.lora.min_share} must lie in [0, 1/top_k)",
                              "the largest of top_k shares is at least 1/top_k and must stay; 0 turns it off")
        if self.router.views not in ("paper", "native"):
            raise ConfigError(f"router.views={self.router.views!r} is not valid", "use 'paper' or 'native'")
        if self.router.resample not in ("bilinear", "bicubic"):
            raise ConfigError(f"router.resample={self.router.resample!r} is not valid", "use 'bilinear' or 'bicubic'")
        ctx = self.router.context
        if isinstance(ctx, bool) or not isinstance(ctx, int) or ctx < 0:
            raise ConfigError(f"router.context={ctx!r} must be 0 (whole image) or a crop side in pixels")
        if self.net.width % 2 or self.net.width < 4:
            raise ConfigError(f"net.width={self.net.width} must be an even number >= 4")
        if len(self.net.enc_blocks) != len(self.net.dec_blocks):
            raise ConfigError("net.enc_blocks and net.dec_blocks must have the same number of levels")

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def pad_multiple(self) -> int:
        return 2 ** len(self.net.enc_blocks)

    @property
    def oriented(self) -> frozenset[str]:
        """The experts whose degradation has a direction (see KNOWN_ORIENTED)."""
        if self.oriented_experts is None:
            return KNOWN_ORIENTED & set(self.experts)
        return frozenset(self.oriented_experts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["oriented_experts"] is None:  # unstated stays unstated: older checkpoints' configs round-trip
            del d["oriented_experts"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


T = TypeVar("T")


def _build(cls: type[T], data: Any, where: str) -> T:
    """Build a frozen dataclass from a dict, refusing unknown keys and missing required ones."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {where}", f"valid keys: {sorted(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing key '{name}' in {where}", f"valid keys: {sorted(fields)}")
            continue
        value = data[name]
        sub = _NESTED.get((cls, name))
        if sub is not None:
            value = _build(sub, value, f"{where}.{name}")
        elif (cls, name) in _NAME_LISTS:
            if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{where}.{name} must be a list of expert names or null, got {value!r}")
            value = None if value is None else tuple(value)
        else:
            value = _check_type(value, f.default, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - guarded by the key checks above
        raise ConfigError(f"{where}: {exc}") from exc


def _check_type(value: Any, default: Any, where: str) -> Any:
    """Values must have the type of the field's default (ints for ints, lists for tuples, ...)."""
    if default is dataclasses.MISSING or default is None:
        ok = default is None and (value is None or isinstance(value, str))
        ok = ok or default is dataclasses.MISSING
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, list)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        want = "a list" if isinstance(default, tuple) else type(default).__name__
        raise ConfigError(f"{where} must be {want}, got {value!r}")
    return tuple(value) if isinstance(value, list) else value


_NAME_LISTS = {(ModelConfig, "oriented_experts")}  # None or a list of names (not a str, as None would allow)
_NESTED: dict[tuple[type, str], type] = {
    (ModelConfig, "net"): NetConfig,
    (ModelConfig, "lora"): LoRAConfig,
    (ModelConfig, "router"): RouterConfig,
}


def config_from_dict(data: Any, where: str = "config") -> ModelConfig:
    cfg = _build(ModelConfig, data, where)
    _check_types(cfg, where)
    return cfg


def _check_types(cfg: ModelConfig, where: str) -> None:
    ints = {
        "net.width": cfg.net.width,
        "net.middle_blocks": cfg.net.middle_blocks,
        "net.prior_dim": cfg.net.prior_dim,
        "net.dam_hidden": cfg.net.dam_hidden,
        "net.dam_reduction": cfg.net.dam_reduction,
        "net.train_size": cfg.net.train_size,
        "lora.rank": cfg.lora.rank,
        "lora.top_k": cfg.lora.top_k,
        "router.image_size": cfg.router.image_size,
        "router.head_hidden": cfg.router.head_hidden,
    }
    for key, v in ints.items():
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ConfigError(f"{where}: {key} must be a positive integer, got {v!r}")
    for key, seq in (("net.enc_blocks", cfg.net.enc_blocks), ("net.dec_blocks", cfg.net.dec_blocks)):
        if not all(isinstance(v, int) and v >= 0 for v in seq):
            raise ConfigError(f"{where}: {key} must be a list of non-negative integers, got {list(seq)}")


def presets_dir() -> Path:
    return resources_dir() / "model_configs"


def list_presets() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.json"))


def load_config(name_or_path: str | Path) -> ModelConfig:
    """Load a preset by name (e.g. 'lorair-compact') or a JSON file path."""
    path = Path(name_or_path)
    if path.suffix != ".json":
        path = presets_dir() / f"{name_or_path}.json"
        if not path.is_file():
            raise ConfigError(f"unknown model preset '{name_or_path}'", f"valid presets: {list_presets()}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read model config {path}: {exc}") from exc
    return config_from_dict(data, where=path.name)
