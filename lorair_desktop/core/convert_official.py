"""Convert the official LoRA-IR release (shallowdream204/LoRA-IR, Setting I) into our checkpoint format.

The release is two pickled state dicts, tensors under "params":
- the DG-Router (`setting1_router.pth`): a transformers `CLIPVisionModelWithProjection` under
  `clip_model.vision_tower.`, the MLP head `de_extractor.{0,2}` and the classifier `cls_head`;
- the restoration network (`setting1_ir.pth`): NAFNet whose every conv is a loralib-style
  `ConvMixLoRA` (`<conv>.conv.weight|bias`, `<conv>.lora_A_list`, `<conv>.lora_B_list`).

Our LoRA layout equals loralib's, so expert tensors copy unchanged; only names move. The CLIP tower
moves to open_clip's layout (q/k/v fused into `in_proj`, the projection transposed). Every key must
be known, every target key filled and every shape equal, else a CheckpointError names the key.
The target shapes come from our model built on the meta device, so converting the full-size
model never allocates it. Pure torch + safetensors: no Qt, no network (see core.download).
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from ..atomic import replacing
from .checkpoint import (
    FORMAT,
    canonicalize_file,
    key_problems,
    record_weights,
    sha256_file,
    stamp_time,
    weights_dir,
)
from .config import ModelConfig, load_config, presets_dir
from .errors import CheckpointError, ConfigError
from .model import LoRAIR

OFFICIAL_PRESET = "lorair-setting1"
CLIP_PREFIX = "clip_model.vision_tower."
TOWER = "router.tower."

__all__ = [
    "OFFICIAL_PRESET",
    "ConversionResult",
    "convert_official",
    "convert_state_dicts",
    "expected_shapes",
    "fetch_model",
    "load_official",
    "map_clip_vision",
    "map_ir",
    "map_router",
]


# ----------------------------------------------------------------------------------------------
# reading the release


def load_official(path: Path) -> dict[str, Tensor]:
    """The tensors of an official .pth (under "params"), loaded without running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist", "pass the path of the downloaded .pth file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        obj = None  # old (non-zip) format cannot be memory-mapped: read it plainly below
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {exc}",
                              "re-download it; only plain tensor checkpoints are accepted") from exc
    if obj is None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{path.name} is not a readable PyTorch checkpoint: {exc}",
                                  "re-download it; only plain tensor checkpoints are accepted") from exc
    if isinstance(obj, Mapping) and "params" in obj:
        obj = obj["params"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name} holds no state dict of tensors under 'params'",
                              "is this a LoRA-IR release file (setting1_router.pth / setting1_ir.pth)?")
    # DataParallel/DDP saves prefix every key with "module."; the release should not, but be lenient.
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _unknown(keys: list[str], where: str) -> CheckpointError:
    return CheckpointError(f"{len(keys)} unknown key(s) in the official {where} checkpoint: {', '.join(keys[:5])}",
                           "is this the released Setting I file? other settings need their own preset")


# ----------------------------------------------------------------------------------------------
# key mapping


_CLIP_LAYER = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.(.+)$")
_CLIP_LAYER_MAP = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_CLIP_TOP_MAP = {
    "vision_model.embeddings.class_embedding": "class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "positional_embedding",
    "vision_model.pre_layrnorm.weight": "ln_pre.weight",  # (sic) transformers' spelling
    "vision_model.pre_layrnorm.bias": "ln_pre.bias",
    "vision_model.post_layernorm.weight": "ln_post.weight",
    "vision_model.post_layernorm.bias": "ln_post.bias",
}
_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)$")


def map_clip_vision(sd: Mapping[str, Tensor], dest: str = "", origin: dict[str, str] | None = None
                    ) -> dict[str, Tensor]:
    """transformers CLIPVisionModelWithProjection keys -> open_clip VisionTransformer keys (under `dest`).

    Both compute the same function: pre-LN ViT, class token, the post-LN on the pooled token, then
    the projection (x @ proj in open_clip, x @ W.T in transformers, hence the transpose).
    `origin`, when given, receives new key -> official key (for error messages).
    """
    origin = {} if origin is None else origin
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, Tensor]] = {}
    unknown: list[str] = []
    for key, t in sd.items():
        if key == "vision_model.embeddings.position_ids":
            continue  # a constant arange buffer (persistent in old transformers), not a weight
        new = None
        if key in _CLIP_TOP_MAP:
            new = dest + _CLIP_TOP_MAP[key]
        elif key == "visual_projection.weight":
            new, t = dest + "proj", t.t().contiguous()
        elif m := _CLIP_LAYER.match(key):
            layer, rest = int(m.group(1)), m.group(2)
            if rest in _CLIP_LAYER_MAP:
                new = f"{dest}transformer.resblocks.{layer}.{_CLIP_LAYER_MAP[rest]}"
            elif q := _QKV.match(rest):
                qkv.setdefault((layer, q.group(2)), {})[q.group(1)] = t
                continue
        if new is None:
            unknown.append(key)
        else:
            out[new], origin[new] = t, key
    if unknown:
        raise _unknown(sorted(unknown), "CLIP vision tower")
    for (layer, kind), parts in sorted(qkv.items()):
        missing = [p for p in "qkv" if p not in parts]
        if missing:
            names = ", ".join(f"vision_model.encoder.layers.{layer}.self_attn.{p}_proj.{kind}" for p in missing)
            raise CheckpointError(f"the official CLIP tower lacks {names}", "the router file is incomplete")
        # nn.MultiheadAttention stacks the projections as [q; k; v] along the output dimension.
        new = f"{dest}transformer.resblocks.{layer}.attn.in_proj_{kind}"
        out[new] = torch.cat([parts[p] for p in "qkv"])
        origin[new] = f"vision_model.encoder.layers.{layer}.self_attn.[qkv]_proj.{kind}"
    return out


_HEAD_MAP = {
    "de_extractor.0.": "router.head.0.",  # Linear 2D -> D (D = CLIP embedding size), GELU
    "de_extractor.2.": "router.head.2.",  # Linear D -> D/2 = the prior, GELU
    "cls_head.": "router.classifier.",  # Linear prior -> one logit per degradation
}


def map_router(sd: Mapping[str, Tensor], origin: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The official CLIPDeRouter state dict -> our `router.*` keys."""
    origin = {} if origin is None else origin
    clip = {k[len(CLIP_PREFIX):]: v for k, v in sd.items() if k.startswith(CLIP_PREFIX)}
    tower_origin: dict[str, str] = {}
    out = map_clip_vision(clip, TOWER, tower_origin)
    origin.update({k: CLIP_PREFIX + v for k, v in tower_origin.items()})
    unknown = []
    for key, t in sd.items():
        if key.startswith(CLIP_PREFIX):
            continue
        prefix = next((p for p in _HEAD_MAP if key.startswith(p)), None)
        if prefix is None or key[len(prefix):] not in ("weight", "bias"):
            unknown.append(key)
        else:
            new = _HEAD_MAP[prefix] + key[len(prefix):]
            out[new], origin[new] = t, key
    if unknown:
        raise _unknown(sorted(unknown), "router")
    return out


# Official names inside a NAFNet level -> ours. The DAM convs sit directly on the official level
# (`encoders.i.conv1..4`, `.norm`, `.beta`); ours group them under `.dam`.
_DAM = {"conv1": "proj1", "conv2": "proj2", "conv3": "se1", "conv4": "se2", "norm": "norm", "beta": "beta"}
_BLOCK_PART = r"(conv[1-5]|sca\.1|norm[12]|beta|gamma)"
_CONV_LEAF = r"(conv\.weight|conv\.bias|lora_A_list|lora_B_list)"
_PARAM_LEAF = r"(weight|bias)"
_IR_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    (re.compile(r"(intro|ending)\.(.+)$"), lambda m: f"net.{m[1]}.{m[2]}"),
    (re.compile(r"intro_de\.([02])\.(.+)$"), lambda m: f"net.prior_proj{1 if m[1] == '0' else 2}.{m[2]}"),
    (re.compile(r"downs\.(\d+)\.(.+)$"), lambda m: f"net.downs.{m[1]}.{m[2]}"),
    (re.compile(r"ups\.(\d+)\.0\.(.+)$"), lambda m: f"net.ups.{m[1]}.{m[2]}"),
    (re.compile(r"(encoders\.\d+|middle_blks)\.(conv[1-4]|norm|beta)(\..+)?$"),
     lambda m: f"net.{_level(m[1])}.dam.{_DAM[m[2]]}{m[3] or ''}"),
    (re.compile(r"(encoders\.\d+|middle_blks|decoders\.\d+)\.blocks\.(\d+)\." + _BLOCK_PART + r"(\..+)?$"),
     lambda m: f"net.{_level(m[1])}.blocks.{m[2]}.{m[3].replace('sca.1', 'sca')}{m[4] or ''}"),
]
_LEAF_OK = re.compile(r".*\.(" + _CONV_LEAF + "|" + _PARAM_LEAF + r")$|.*\.(beta|gamma)$")


def _level(official: str) -> str:
    return "middle" if official == "middle_blks" else official


def map_ir(sd: Mapping[str, Tensor], origin: dict[str, str] | None = None) -> dict[str, Tensor]:
    """The official PriorFtModel state dict -> our `net.*` keys (loralib's A/B lists keep their layout)."""
    origin = {} if origin is None else origin
    out: dict[str, Tensor] = {}
    unknown = []
    for key, t in sd.items():
        new = None
        if _LEAF_OK.match(key):
            for pattern, repl in _IR_RULES:
                if m := pattern.fullmatch(key):
                    new = repl(m)
                    break
        if new is None:
            unknown.append(key)
            continue
        new = new.replace(".lora_A_list", ".lora_A").replace(".lora_B_list", ".lora_B")
        if new in out:
            raise CheckpointError(f"two official keys map to {new} (second: {key})", "this is a converter bug")
        out[new], origin[new] = t, key
    if unknown:
        raise _unknown(sorted(unknown), "IR")
    return out


# ----------------------------------------------------------------------------------------------
# checking against our model


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of our model for `cfg` and its shape, without allocating the model."""
    with torch.device("meta"):
        model = LoRAIR(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check(converted: Mapping[str, Tensor], expected: Mapping[str, tuple[int, ...]], cfg: ModelConfig,
           origin: Mapping[str, str]) -> None:
    problems = key_problems(expected, {k: tuple(v.shape) for k, v in converted.items()},
                            name=lambda k: f"{origin[k]} -> {k}" if k in origin else k)
    if problems:
        raise CheckpointError(f"the official weights do not fit the '{cfg.name}' architecture: " + "; ".join(problems),
                              "check that the files are the Setting I release and the preset is lorair-setting1")


def convert_state_dicts(router: Mapping[str, Tensor], ir: Mapping[str, Tensor], cfg: ModelConfig,
                        expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Tensor]:
    """Both official state dicts -> one state dict of ours, checked key by key and shape by shape."""
    origin: dict[str, str] = {}
    out = map_router(router, origin)
    out.update(map_ir(ir, origin))  # prefixes differ (router.* / net.*): no key can collide
    _check(out, expected if expected is not None else expected_shapes(cfg), cfg, origin)
    return out


# ----------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class ConversionResult:
    path: Path
    sha256: str
    bytes: int
    name: str
    manifest: Path | None  # the manifest updated, or None (explicit output path / no preset of that name)
    tensors: int
    parameters: int


def _cast(t: Tensor, dtype: str) -> Tensor:
    if not t.is_floating_point() or dtype == "keep":
        return t
    if dtype == "fp32":
        return t.float()
    # fp16 only from fp32: bf16 values may exceed fp16's range and lose nothing by staying bf16.
    return t.half() if t.dtype == torch.float32 else t


def convert_official(
    router_path: Path,
    ir_path: Path,
    *,
    preset: str | Path = OFFICIAL_PRESET,
    name: str | None = None,
    output: Path | None = None,
    dtype: str = "keep",
) -> ConversionResult:
    """Convert the two release files into `<weights>/<name>.safetensors` and record it in the manifest.

    `preset`: the config describing the official architecture; `name` renames the model (default:
    the preset's). With `output`, the file goes there and no manifest is touched. `dtype`: "keep"
    (the release's own dtypes: lossless), "fp16" (fp32 tensors halved) or "fp32".
    """
    if dtype not in ("keep", "fp16", "fp32"):
        raise ConfigError(f"dtype {dtype!r} is not valid", "use keep, fp16 or fp32")
    cfg = load_config(preset)
    if name:
        cfg = dataclasses.replace(cfg, name=name)
    router_path, ir_path = Path(router_path), Path(ir_path)
    tensors = convert_state_dicts(load_official(router_path), load_official(ir_path), cfg)
    seen: set[int] = set()
    clean: dict[str, Tensor] = {}
    for k in sorted(tensors):
        t = _cast(tensors[k], dtype).contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # safetensors refuses tensors sharing storage
            t = t.clone()
        seen.add(ptr)
        clean[k] = t
    sources = {"router": router_path, "ir": ir_path}
    meta = {
        "format": FORMAT,
        "config": cfg.to_json(),
        "source": "shallowdream204/LoRA-IR official release (Apache-2.0)",
        "converted": stamp_time(),
        **{f"{role}_file": p.name for role, p in sources.items()},
        **{f"{role}_sha256": sha256_file(p) for role, p in sources.items()},
    }
    use_manifest = output is None
    final = Path(output) if output is not None else weights_dir() / f"{cfg.name}.safetensors"
    final.parent.mkdir(parents=True, exist_ok=True)
    with replacing(final) as tmp:  # a crash never leaves half a checkpoint under the real name
        save_file(clean, str(tmp), metadata=meta)
        canonicalize_file(tmp)  # the same release files convert to the same sha256
    sha = sha256_file(final)
    mpath: Path | None = None
    if use_manifest and (presets_dir() / f"{cfg.name}.json").is_file():
        # The manifest maps a preset name to its weights; without a preset of that name the file is
        # used by path (--model FILE) and the manifest stays as it is.
        mpath = record_weights(cfg.name, {
            "file": final.name, "sha256": sha, "bytes": final.stat().st_size, "config": cfg.name,
            "source": "official", **{f"{role}_sha256": meta[f"{role}_sha256"] for role in sources},
        })
    return ConversionResult(path=final, sha256=sha, bytes=final.stat().st_size, name=cfg.name, manifest=mpath,
                            tensors=len(clean), parameters=sum(t.numel() for t in clean.values()))


# ----------------------------------------------------------------------------------------------
# fetching the release


FetchProgress = Callable[[str, int, int | None], None]  # (file name, bytes done, total or None)


def fetch_model(
    name: str,
    cache_dir: Path,
    *,
    allow_unverified: bool = False,
    progress: FetchProgress | None = None,
    keep_downloads: bool = False,
    dtype: str = "keep",
) -> ConversionResult:
    """Download a model's release files (manifest "sources"), verify, convert and install them.

    Downloads resume from `cache_dir`; they are deleted after a successful conversion unless
    `keep_downloads`. A file whose sha256 the manifest does not know is refused before any byte is
    fetched, unless `allow_unverified`.
    """
    from urllib.parse import urlparse

    from .checkpoint import read_sources
    from .download import DownloadError, download
    from .errors import ModelNotFound

    sources = read_sources()
    if name not in sources:
        raise ModelNotFound(f"no download is known for model '{name}'",
                            f"downloadable models: {', '.join(sorted(sources)) or 'none'}")
    src = sources[name]
    files = src.get("files", {})
    if src.get("converter") != "official-lorair" or set(files) != {"router", "ir"}:
        raise ConfigError(f"the manifest's download entry for '{name}' is not an official LoRA-IR release",
                          "expected converter 'official-lorair' with 'router' and 'ir' files")
    unverified = [f.get("file") or role for role, f in files.items() if not f.get("sha256")]
    if unverified and not allow_unverified:
        raise DownloadError(f"the sha256 of {', '.join(unverified)} is not recorded, so the download cannot be "
                            "verified",
                            "pass --no-verify to accept the files unverified, or download them yourself and run "
                            "`lorair import-official --router R.pth --ir IR.pth`")
    paths: dict[str, Path] = {}
    for role in ("router", "ir"):
        f = files[role]
        fname = f.get("file") or Path(urlparse(f["url"]).path).name
        cb = None if progress is None else (lambda done, total, _n=fname: progress(_n, done, total))
        paths[role] = download(f["url"], Path(cache_dir) / name / fname, f.get("sha256"), progress=cb,
                               allow_unverified=allow_unverified)
    result = convert_official(paths["router"], paths["ir"], preset=name, dtype=dtype)
    if not keep_downloads:
        for p in paths.values():
            p.unlink(missing_ok=True)
    return result
