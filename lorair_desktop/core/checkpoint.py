"""Checkpoints: safetensors with the model config embedded, and the weights manifest (sha256).

Nothing here unpickles: safetensors holds tensors only, the config travels as JSON metadata.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .. import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported: core users import it from here
from ..atomic import replacing, write_text
from .config import ModelConfig, config_from_dict, load_config, resources_dir
from .errors import CheckpointError, ConfigError, ModelNotFound, ModelNotTrained
from .model import PROTOTYPES_KEY, LoRAIR

FORMAT = "lorair-1"
_verified: dict[tuple[str, int, int], str] = {}


def weights_dir() -> Path:
    return resources_dir() / "weights"


def manifest_path() -> Path:
    return weights_dir() / "manifest.json"


def _read_manifest_file() -> dict:
    path = manifest_path()
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"weights manifest {path} is not valid JSON: {exc}") from exc


def record_weights(name: str, entry: dict, manifest: Path | None = None) -> Path:
    """Set the manifest's entry for `name` (other entries and sections kept), written atomically."""
    path = manifest or manifest_path()
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.setdefault("models", {})[name] = entry
    write_text(path, json.dumps(data, indent=2) + "\n")
    return path


def read_manifest() -> dict[str, dict]:
    return _read_manifest_file().get("models", {})


def read_sources() -> dict[str, dict]:
    """Downloadable models: name -> {"files": {role: {"url", "sha256", ...}}, ...} (see core.download)."""
    return _read_manifest_file().get("sources", {})


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    got = _verified.get(key) or sha256_file(path)
    if got != expected:
        raise CheckpointError(
            f"checksum mismatch for {path.name}: expected sha256 {expected[:12]}…, file has {got[:12]}…",
            "the file is damaged or was replaced; reinstall it or retrain, then update the manifest",
        )
    _verified[key] = got


def _canonical_header(raw: bytes) -> bytes:
    """A safetensors JSON header with its keys sorted, padded as safetensors pads it (the data
    section stays 8-byte aligned). safetensors writes the header in hash-map order, which differs
    between runs, so the same tensors and metadata would hash differently: sorted, a re-export of a
    run checkpoint (or a re-conversion of the same files) reproduces the sha256."""
    head = json.dumps(json.loads(raw), sort_keys=True, separators=(",", ":")).encode()
    return head + b" " * (-len(head) % 8)


def _write_canonical(blob: bytes, path: Path) -> None:
    """Writes the safetensors bytes `blob` to `path` with a canonical header."""
    n = int.from_bytes(blob[:8], "little")
    head = _canonical_header(blob[8 : 8 + n])
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        f.write(memoryview(blob)[8 + n :])


def canonicalize_file(path: Path) -> None:
    """Gives a safetensors file written by safetensors itself a canonical header, in place where
    the length allows (it does: the same JSON, only reordered), else by streaming the data across.
    For files too big to hold twice in memory (the official Setting I weights)."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        head = _canonical_header(f.read(n))
        if len(head) == n:
            f.seek(8)
            f.write(head)
            return
    with replacing(path) as tmp, open(path, "rb") as src, open(tmp, "wb") as dst:
        src.seek(8 + n)
        dst.write(len(head).to_bytes(8, "little"))
        dst.write(head)
        while chunk := src.read(1 << 24):
            dst.write(chunk)


def stamp_time() -> str:
    """Now in UTC, or the reproducible-builds ``SOURCE_DATE_EPOCH`` when set: the same inputs then
    give byte-identical weight files (the time is the only thing in them that varies)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        when = dt.datetime.now(dt.UTC)
    else:
        try:
            when = dt.datetime.fromtimestamp(int(epoch), dt.UTC)
        except (ValueError, OverflowError, OSError) as exc:
            raise ConfigError(f"SOURCE_DATE_EPOCH={epoch!r} is not a Unix time in seconds",
                              "set it to e.g. $(git log -1 --format=%ct), or unset it") from exc
    return when.isoformat(timespec="seconds")


def save_checkpoint(model: LoRAIR, path: Path, half: bool = False, meta: dict[str, str] | None = None) -> str:
    """Write config + weights; returns the file's sha256. `half` stores float tensors as fp16."""
    tensors = {}
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        if half and v.is_floating_point():
            v = v.half()
        tensors[k] = v.contiguous()
    if model.prior_prototypes is not None:
        tensors[PROTOTYPES_KEY] = model.prior_prototypes.detach().cpu().to(torch.float16 if half else torch.float32)
    metadata = {"format": FORMAT, "config": model.cfg.to_json(), **(meta or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:  # a crash never leaves a half-written checkpoint under the real name
        _write_canonical(save(tensors, metadata=metadata), tmp)
    return sha256_file(path)


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path.name} is not a readable safetensors file: {exc}",
                           "re-download or re-export the checkpoint")


def read_metadata(path: Path) -> dict[str, str]:
    """A checkpoint's metadata (config, export record, merged experts' sources) from its header
    alone, without reading the tensors."""
    if not path.is_file():
        raise ModelNotFound(f"checkpoint {path} does not exist")
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    if meta.get("format") != FORMAT or "config" not in meta:
        raise CheckpointError(f"{path.name} is not a LoRA-IR Desktop checkpoint (no embedded config)",
                              "convert official weights with `lorair import-official`")
    return meta


def read_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc
    try:
        cfg = config_from_dict(json.loads(meta["config"]), where=f"{path.name}:config")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path.name} carries a damaged config: {exc}") from exc
    return cfg, tensors, meta


def rewrite_checkpoint(model: LoRAIR, path: Path, read: tuple[dict[str, torch.Tensor], dict[str, str]]) -> str:
    """Write ``model`` to ``path`` as the checkpoint it was read from: ``read`` is that checkpoint's
    (tensors, metadata) from `read_checkpoint`, whose storage precision (fp16 stays fp16) and
    metadata are kept. Atomic; where ``path`` is a manifest entry (a shipped or installed model),
    its sha256 and size there are updated. Returns the new sha256."""
    tensors, meta = read
    half = any(v.dtype == torch.float16 for v in tensors.values())
    extra = {k: v for k, v in meta.items() if k not in ("format", "config")}
    sha = save_checkpoint(model, path, half=half, meta=extra)
    for name, entry in read_manifest().items():
        if (weights_dir() / entry.get("file", "")).resolve() == path.resolve():
            record_weights(name, {**entry, "sha256": sha, "bytes": path.stat().st_size})
    return sha


def key_problems(expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]],
                 name: Callable[[str], str] = str, limit: int = 5) -> list[str]:
    """Missing, unexpected and mis-shaped keys, each named (through `name`) with both shapes."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(name(k) for k in set(got) - set(expected))
    bad = [f"{name(k)}: file {got[k]} vs model {expected[k]}"
           for k in sorted(set(expected) & set(got)) if got[k] != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing: {', '.join(missing[:limit])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {', '.join(unexpected[:limit])}")
    if bad:
        problems.append(f"{len(bad)} with another shape: {'; '.join(bad[:limit])}")
    return problems


def load_state_strict(model: LoRAIR, tensors: dict[str, torch.Tensor], source: str) -> None:
    """Load tensors, naming every missing, unexpected or mis-shaped key with its shapes."""
    own = model.state_dict()
    problems = key_problems({k: tuple(v.shape) for k, v in own.items()},
                            {k: tuple(v.shape) for k, v in tensors.items()})
    if problems:
        raise CheckpointError(f"{source} does not match its config: " + "; ".join(problems),
                              "the file and its config disagree; re-export it from the training run")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in tensors.items()}, strict=True)


def _prototypes(tensors: dict[str, torch.Tensor], cfg: ModelConfig, source: str) -> torch.Tensor | None:
    """Takes the optional prototype priors out of `tensors`, checked: (experts, prior_dim), finite."""
    protos = tensors.pop(PROTOTYPES_KEY, None)
    if protos is None:
        return None
    want = (cfg.num_experts, cfg.net.prior_dim)
    if tuple(protos.shape) != want or not protos.is_floating_point() or not bool(torch.isfinite(protos).all()):
        raise CheckpointError(
            f"{source}: {PROTOTYPES_KEY} must be {want[0]} x {want[1]} finite numbers, got "
            f"{tuple(protos.shape)} {protos.dtype}",
            "re-measure them with `python -m lorair_desktop.training.prototypes`, or re-export the model",
        )
    return protos.float()


def model_from_tensors(cfg: ModelConfig, tensors: dict[str, torch.Tensor], source: str) -> LoRAIR:
    """The model that `read_checkpoint`'s config and tensors describe, checked key for key."""
    tensors = dict(tensors)  # the prototypes come out of it: the caller's dict stays as read
    protos = _prototypes(tensors, cfg, source)
    model = LoRAIR(cfg)
    load_state_strict(model, tensors, source)
    model.prior_prototypes = protos
    return model.eval()


def load_checkpoint(path: Path) -> LoRAIR:
    cfg, tensors, _ = read_checkpoint(path)
    return model_from_tensors(cfg, tensors, path.name)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    config: ModelConfig
    weights: Path | None  # None: a preset with no trained weights yet
    sha256: str | None


def list_models() -> list[ModelEntry]:
    from .config import list_presets

    return [resolve_model(n, must_have_weights=False) for n in list_presets()]


def resolve_model(name_or_path: str | Path, must_have_weights: bool = True) -> ModelEntry:
    """A preset name (weights from the manifest) or a .safetensors path."""
    p = Path(name_or_path)
    if p.suffix == ".safetensors" or p.is_file():
        cfg, _, _ = read_checkpoint(p)
        return ModelEntry(cfg.name, cfg, p, None)
    name = str(name_or_path)
    try:
        cfg = load_config(name)
    except ConfigError as exc:
        raise ModelNotFound(exc.message, exc.hint) from exc
    entry = read_manifest().get(name)
    weights = weights_dir() / entry["file"] if entry else None
    if weights is not None and not weights.is_file():
        weights = None
    if weights is None and must_have_weights:
        hint = f"train it with `lorair train --preset {name}` or pass a checkpoint path with --model"
        if name in read_sources():  # released weights exist: fetching beats training
            hint = f"download it with `lorair models fetch {name}` or convert the files with `lorair import-official`"
        raise ModelNotTrained(f"model '{name}' has no trained weights installed, so it would only produce noise", hint)
    return ModelEntry(name, cfg, weights, entry.get("sha256") if entry else None)


def load_model(name_or_path: str | Path) -> LoRAIR:
    entry = resolve_model(name_or_path)
    assert entry.weights is not None
    if entry.sha256:
        verify_sha256(entry.weights, entry.sha256)
    return load_checkpoint(entry.weights)


