"""Ship a trained run: an fp16 copy of its weights, the manifest entry (sha256) and a model card.

    python -m lorair_desktop.training.export RUN/model.safetensors [--name lorair-compact]
        [--dest resources/weights] [--eval EVAL_DIR_OR_JSON] [--no-card] [--meta KEY=VALUE ...]

``export_model`` loads the run's fp32 checkpoint, writes ``<dest>/<name>.safetensors`` with every
float tensor in fp16 (half the bytes; the app loads it back into fp32 parameters), checks that the
fp16 model restores a fixed test image like the fp32 one (``FP16_TOLERANCE``) and only then
replaces the shipped file and updates ``<dest>/manifest.json``. ``write_model_card`` writes
``<dest>/<name>.md`` from the run's ``run.json`` and an ``eval.json`` of ``lorair eval``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ..atomic import replacing
from ..core.checkpoint import (
    load_checkpoint,
    model_from_tensors,
    read_checkpoint,
    record_weights,
    save_checkpoint,
    sha256_file,
    stamp_time,
    weights_dir,
)
from ..core.config import load_config, presets_dir
from ..core.inference import Restorer
from ..core.model import LoRAIR
from ..errors import CheckpointError, ConfigError, LoraIRError, report_error
from .dataset import FLAT_KEEP_PROB, DatasetError, photo_bank
from .prototypes import measure_prototypes
from .provenance import SOURCES_KEY, Provenance

__all__ = [
    "FP16_TOLERANCE", "export_model", "fp16_check", "load_eval", "status_lines", "test_image", "weights_lines",
    "write_model_card",
]

log = logging.getLogger(__name__)

#: Largest allowed differences between the fp16-stored and the fp32 model on ``test_image``:
#: output pixels (0–1 scale; 1/255 is one 8-bit level) and router expert weights.
FP16_TOLERANCE = {"max_abs": 2.0 / 255.0, "mean_abs": 0.25 / 255.0, "router_max_abs": 0.02}


def test_image(h: int = 176, w: int = 208, seed: int = 0) -> np.ndarray:
    """A fixed synthetic test input: smooth colour field + texture + edges, with σ 15 noise."""
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.random((6, 7, 3)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.random((h, w, 3)).astype(np.float32), (0, 0), 1.2)
    img = 0.6 * base + 0.4 * fine
    img[h // 3 : h // 2, :, :] += 0.25  # a hard edge band
    img = np.clip(img, 0, 1)
    return np.clip(img + rng.standard_normal(img.shape).astype(np.float32) * 15 / 255, 0, 1).astype(np.float32)


def fp16_check(ref: LoRAIR, half: LoRAIR, image: np.ndarray | None = None) -> dict[str, Any]:
    """Restore ``image`` (default ``test_image()``) with both models on the CPU in fp32 compute and
    compare outputs and router weights; ``ok`` says whether ``FP16_TOLERANCE`` holds."""
    img = test_image() if image is None else image
    a = Restorer(ref, device="cpu", precision="fp32").restore(img)
    b = Restorer(half, device="cpu", precision="fp32").restore(img)
    diff = np.abs(a.image.astype(np.float64) - b.image)
    rdiff = max(abs(a.router_weights[k] - b.router_weights[k]) for k in a.router_weights)
    res = {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "router_max_abs": float(rdiff),
        "tolerance": FP16_TOLERANCE,
    }
    res["ok"] = all(res[k] <= FP16_TOLERANCE[k] for k in FP16_TOLERANCE)
    return res


def _check_preset(cfg_dict: dict[str, Any], name: str, write_preset: bool) -> Path | None:
    """The preset ``name`` must describe this network. Returns the preset path still to be
    written (None when it exists and matches)."""
    path = presets_dir() / f"{name}.json"
    if path.is_file():
        preset = json.loads(load_config(name).to_json())
        if preset != cfg_dict:
            diff = sorted(k for k in cfg_dict if cfg_dict[k] != preset.get(k))
            raise ConfigError(
                f"the run's config differs from the preset '{name}' in {diff}",
                "export under another --name, or update the preset JSON to the run's config",
            )
        return None
    if not write_preset:
        raise ConfigError(f"there is no preset '{name}'", "add its JSON to resources/model_configs/")
    return path


def _measured_prototypes(model: LoRAIR) -> torch.Tensor | None:
    try:
        protos = measure_prototypes(model, photo_bank("train"))
    except DatasetError as exc:
        protos = None
        log.warning("%s", exc.message)
    if protos is None:
        log.warning("no prototype priors: a manual expert mix will not steer the prior; add them later with "
                    "`python -m lorair_desktop.training.prototypes MODEL --data DIR`")
    return protos


def export_model(
    run_checkpoint: Path,
    name: str = "lorair-compact",
    dest_dir: Path | None = None,
    meta: dict[str, str] | None = None,
    write_preset: bool = True,
) -> dict[str, Any]:
    """Write the fp16 copy of ``run_checkpoint`` as ``<dest_dir>/<name>.safetensors``, verify it
    and record it in ``<dest_dir>/manifest.json``. Returns the manifest entry plus the check."""
    run_checkpoint = Path(run_checkpoint)
    dest_dir = weights_dir() if dest_dir is None else Path(dest_dir)
    src_cfg, tensors, src_meta = read_checkpoint(run_checkpoint)
    model = model_from_tensors(src_cfg, tensors, run_checkpoint.name)
    if model.prior_prototypes is None:  # a run from before they existed, or stopped in its router stage
        model.prior_prototypes = _measured_prototypes(model)
    cfg = dataclasses.replace(model.cfg, name=name)
    model.cfg = cfg
    cfg_dict = json.loads(cfg.to_json())
    new_preset = _check_preset(cfg_dict, name, write_preset)
    final = dest_dir / f"{name}.safetensors"
    info = {
        "exported": stamp_time(),
        "source_sha256": sha256_file(run_checkpoint),
        # a merged checkpoint's record of which experts came from which run travels with it
        **Provenance.from_meta(src_meta, run_checkpoint.name, src_cfg.experts).to_meta(),
        **(meta or {}),
    }
    Provenance.from_meta(info, f"the metadata for {name}", src_cfg.experts)  # --meta may give a record by hand
    with replacing(final) as staging:  # the shipped file is replaced only by a checked copy
        save_checkpoint(model, staging, half=True, meta=info)
        check = fp16_check(model, load_checkpoint(staging))
        if not check["ok"]:
            raise CheckpointError(
                f"the fp16 copy of {run_checkpoint.name} differs from the fp32 model beyond the tolerance: "
                f"max {check['max_abs'] * 255:.2f}/255, mean {check['mean_abs'] * 255:.3f}/255, "
                f"router {check['router_max_abs']:.3f}",
                "the weights have values fp16 cannot hold; ship the fp32 checkpoint instead",
            )
    if new_preset is not None:  # a new model name: `resolve_model(name)` needs its preset
        new_preset.parent.mkdir(parents=True, exist_ok=True)
        new_preset.write_text(json.dumps(cfg_dict, indent=2) + "\n", encoding="utf-8")
        log.info("wrote preset %s", new_preset)
    entry = {"file": final.name, "sha256": sha256_file(final), "bytes": final.stat().st_size, "config": name}
    mpath = record_weights(name, entry, dest_dir / "manifest.json")
    log.info("exported %s (%.1f MB, sha256 %s…)", final, entry["bytes"] / 2**20, entry["sha256"][:12])
    preset = "existing" if new_preset is None else "written"
    return {**entry, "path": str(final), "manifest": str(mpath), "preset": preset, "fp16_check": check,
            "prototypes": model.prior_prototypes is not None, **info}


# ----------------------------------------------------------------------------------------------
# model card


def _param_counts(cfg_dict: dict[str, Any]) -> dict[str, int]:
    from ..core.config import config_from_dict

    model = LoRAIR(config_from_dict(cfg_dict))
    groups = model.parameter_groups()
    return {k: sum(p.numel() for p in v) for k, v in groups.items()}


def _fmt_minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f} min"


def load_eval(eval_json: Path | dict | None) -> dict[str, Any] | None:
    """A ``lorair eval`` report from its eval.json (or folder, or the dict itself), without the
    comparison part of a ``--compare`` report, which is no card table."""
    if eval_json is None or isinstance(eval_json, dict):
        return eval_json
    p = Path(eval_json)
    if p.is_dir():
        p = p / "eval.json"
    try:
        ev = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LoraIRError(f"cannot read the evaluation {p}: {exc}", "pass an eval.json `lorair eval --out` wrote") \
            from None
    if not isinstance(ev, dict) or not isinstance(ev.get("rows"), list):
        raise LoraIRError(f"{p} is not a `lorair eval` report", "pass an eval.json `lorair eval --out` wrote")
    ev.pop("compare", None)
    return ev


def _data_section(run: dict[str, Any]) -> list[str]:
    from .photos import MANIFEST_PATH, load_manifest

    train, val = run.get("train_images", []), run.get("val_images", [])
    entries = {e.name: e for e in load_manifest()}
    lines = ["## Data", ""]
    known = [n for n in train + val if n in entries]
    if known:
        mp = {s: sum(entries[n].width * entries[n].height for n in names if n in entries) / 1e6
              for s, names in (("train", train), ("val", val))}
        manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
        pk = ", ".join(f"`{k}` {v}" for k, v in manifest.get("packages", {}).items())
        lines += [
            f"Real photographs from Debian wallpaper packages ({pk}), listed with size and sha256 in "
            "`lorair_desktop/training/photo_manifest.json` (fetch: `lorair data fetch`). "
            "Images are downscaled to a long side of 1600 px; training crops are textured random crops "
            "(`dataset.RestorationDataset`) with degradations synthesised on the fly (`degradations.py`).",
            "",
            f"- train: {len(train)} photos ({mp['train']:.0f} MP at full size): {', '.join(train)}",
            f"- validation (held out, never trained on): {len(val)} photos ({mp['val']:.0f} MP): {', '.join(val)}",
        ]
    else:
        lines += [
            f"A custom folder (`--data {run.get('data', '?')}`), split by a stable hash of each file's path:",
            "",
            f"- train: {len(train)} images: {', '.join(train)}",
            f"- validation: {len(val)} images: {', '.join(val)}",
        ]
    return [*lines, ""]


def _stage_progress(run_dir: Path, stage: str) -> tuple[int, list[dict], float | None] | None:
    """(step, history, wall seconds) from the stage's resumable state file: fresher than
    run.json, which a stage only updates when its session ends."""
    path = run_dir / f"state-{stage}.pt"
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        wall = state.get("wall_s")
        return int(state["step"]), json.loads(state.get("history", "[]")), None if wall is None else float(wall)
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        log.warning("cannot read %s: %s", path, exc)
        return None


def _recipe_section(run: dict[str, Any], run_dir: Path) -> list[str]:
    from .train_cli import STAGE_DEFAULTS
    from .trainer import STAGES

    recipe = run.get("recipe")
    lines = ["## Recipe", ""]
    if not recipe:
        lines += ["(This run predates recipe recording in `run.json`; the values below are the `lorair train` "
                  "defaults it ran with.)", ""]
    loss = {"router": "cross-entropy on the degradation label", "base": "PSNR loss (10·log10 MSE)",
            "experts": "PSNR loss (10·log10 MSE)"}
    trains = {"router": "router (tower + MLP head)", "base": "base network + DAM (router frozen)",
              "experts": "LoRA experts (base frozen)"}
    lines += [
        "| stage | trains | loss | steps done / planned | batch | lr → min | crop (net / router context) | "
        "bf16 | wall time | final loss | last validation |",
        "|---|---|---|---:|---:|---|---|---|---:|---:|---|",
    ]
    crop_default = run.get("config", {}).get("net", {}).get("train_size", 128)
    for st in STAGES:
        res = dict(run.get(f"stage_{st}") or {})
        progress = _stage_progress(run_dir, st)
        if progress is not None and progress[0] >= res.get("step", 0):
            res["step"], res["history"] = progress[0], progress[1]
            if progress[2] is not None:
                res["wall_s_total"] = progress[2]
        if not res and st not in (recipe or {}):
            continue
        rc = (recipe or {}).get(st) or {**STAGE_DEFAULTS[st], "min_lr": 1e-5, "crop": crop_default}
        what = "LoRA experts + base network (full fine-tuning)" if st == "experts" and rc.get("full") else trains[st]
        if rc.get("tasks", "all") != "all":
            what += f"; tasks {rc['tasks']}"
        if rc.get("mixed"):
            what += f"; {100 * rc['mixed']:.0f} % of samples with two degradations"
        if rc.get("flat_crops", FLAT_KEEP_PROB) != FLAT_KEEP_PROB:
            what += f"; {100 * rc['flat_crops']:.0f} % of crops without the texture preference"
        val = [h for h in res.get("history", []) if "val_psnr" in h or "val_acc" in h]
        last = "–"
        if val:
            h = val[-1]
            last = (f"{100 * h['val_acc']:.1f} % acc" if "val_acc" in h else f"{h['val_psnr']:.2f} dB") + \
                f" @ {h['step']}"
        crop = "–" if st == "router" else rc.get("crop", crop_default)
        if st != "router" and rc.get("crops_per_context", 1) > 1:
            crop = f"{crop} ×{rc['crops_per_context']}"
        steps = f"{res.get('step', 0)} / {rc.get('steps')}"
        if rc.get("time_schedule"):
            steps = f"{res.get('step', 0)} (schedule over {rc.get('minutes'):g} min)"
        wall = res.get("wall_s_total", res.get("wall_s"))
        final = res.get("loss")
        if final is None:
            losses = [h["loss"] for h in res.get("history", []) if "loss" in h]
            final = float(np.mean(losses[-3:])) if losses else None
        stage_loss = loss[st]
        if st == "router" and rc.get("anchor_prior"):
            stage_loss += " + squared distance to the anchored prior (training.anchor; BatchNorm frozen)"
        lines.append(
            f"| {st} | {what} | {stage_loss} | {steps} | {rc.get('batch')} | "
            f"{rc.get('lr'):g} → {rc.get('min_lr', 1e-5):g} | {crop} / {rc.get('context')} | "
            f"{'yes' if rc.get('bf16') else 'no'} | {_fmt_minutes(wall)} | "
            f"{'–' if final is None else f'{final:.4f}'} | {last} |"
        )
    if lines[-1].startswith("|---"):
        lines.append("| (no stage has run yet) |" + " |" * 10)
    lines += [
        "",
        "AdamW (betas 0.9/0.9, weight decay 1e-3), linear warm-up then cosine decay, gradient-norm clip 1.0, "
        "batches seeded by step (a resumed run continues exactly). Resume or extend with "
        f"`lorair train --preset {run.get('preset', 'compact')} --stage all --resume`.",
        "",
    ]
    return lines


def _machine(hw: dict[str, Any], run: dict[str, Any]) -> str:
    gpu = f", GPU {hw['gpu']}" if hw.get("gpu") else ""
    return (f"{hw.get('device', run.get('device'))}: {hw.get('cpu')}, {hw.get('cores')} cores, "
            f"{hw.get('torch_threads')} torch threads{gpu}, torch {hw.get('torch')}.")


def weights_lines(weights: dict[str, Any]) -> list[str]:
    """The card's lines naming the shipped file: size, sha256, when and from what it was exported
    (``weights``: a manifest entry plus the file's metadata, as ``export_model`` returns it)."""
    line = (f"- exported {weights.get('exported', '?')} from a run checkpoint with sha256 "
            f"`{weights.get('source_sha256', '?')}`")
    record = Provenance.from_meta(weights, "the weights file")
    if record.sources:  # experts put in by merge_experts from other runs
        by_source: dict[tuple[str, float], list[str]] = {}
        for expert, sha in record.sources.items():
            by_source.setdefault((sha, record.blends.get(expert, 1.0)), []).append(expert)
        parts = []
        for (sha, w), ex in by_source.items():
            what = f"the {', '.join(ex)} expert{'s' if len(ex) > 1 else ''}"
            parts.append(f"{what} from a run checkpoint with sha256 `{sha}`" if w == 1.0 else
                         f"{what} blended ({1 - w:g} of its own adapters, {w:g} of those of a run checkpoint "
                         f"with sha256 `{sha}`)")
        line += "; " + "; ".join(parts)
    return [f"- file: `{weights['file']}` ({weights['bytes'] / 2**20:.1f} MB, fp16), sha256 `{weights['sha256']}`",
            line]


def status_lines(ev: dict[str, Any]) -> list[str]:
    """The card's Status section from an evaluation's targets."""
    missed = [t["target"] for t in ev.get("targets", []) if t.get("met") is False]
    unmeasured = [t["target"] for t in ev.get("targets", []) if t.get("met") is None]
    lines = ["Targets not reached yet: " + "; ".join(missed) + "." if missed else "All measured targets met."]
    if unmeasured:
        lines.append(f"Not measured in this evaluation: {'; '.join(unmeasured)} (run `lorair eval --baselines`).")
    lines.append("Training is resumable: the same command continues from the last checkpoint.")
    return lines


def write_model_card(
    run_dir: Path, eval_json: Path | dict | None, dest: Path, weights: dict[str, Any] | None = None
) -> Path:
    """Write a Markdown model card to ``dest`` from ``run_dir/run.json``, an ``eval.json`` (or its
    folder, or the dict) and optionally the exported manifest entry ``weights``."""
    from .evaluate import to_markdown
    from .trainer import read_run_info

    run_dir = Path(run_dir)
    rpath = run_dir / "run.json"
    if not rpath.is_file():
        raise LoraIRError(f"{rpath} does not exist", "pass the folder of a `lorair train` run")
    run = read_run_info(run_dir)
    cfg = run.get("config", {})
    net, lora, router = cfg.get("net", {}), cfg.get("lora", {}), cfg.get("router", {})
    name = (weights or {}).get("config") or cfg.get("name") or run.get("preset", "model")
    counts = _param_counts(cfg) if cfg else {}
    lines = [f"# Model card: {name}", "", cfg.get("description", ""), ""]
    if weights:
        lines += weights_lines(weights)
    floor = f", a share under {lora['min_share']:.0%} left out" if lora.get("min_share") else ""
    lines += [
        f"- experts: {', '.join(cfg.get('experts', []))} (routed automatically, top-{lora.get('top_k')} softmax"
        f"{floor}; or mixed by hand with `--experts`)",
    ]
    if (weights or {}).get("prototypes"):
        lines.append("- prototype priors: the router's mean prior over training crops of each degradation, so that "
                     "a manual mix steers the prior the network is conditioned on too (`core.routing.steer_prior`)")
    lines += [
        "",
        "## Architecture",
        "",
        f"- restoration network: NAFNet width {net.get('width')}, encoder {net.get('enc_blocks')}, middle "
        f"{net.get('middle_blocks')}, decoder {net.get('dec_blocks')}, DAM prior blocks (prior {net.get('prior_dim')}"
        f"-d), TLC {'on' if net.get('tlc') else 'off'}",
        f"- LoRA experts: rank {lora.get('rank')}, alpha {lora.get('alpha')} on every convolution, merged into the "
        "weights once per image at inference",
        f"- DG-Router: open_clip `{router.get('clip_model')}` tower at {router.get('image_size')} px, global + 2x2 "
        f"'{router.get('views')}' views, MLP head {router.get('head_hidden')} → {net.get('prior_dim')}; "
        f"{'pretrained ' + str(router.get('pretrained')) if router.get('pretrained') else 'trained from scratch'}",
    ]
    if counts:
        lines.append(
            f"- parameters: router {counts['router'] / 1e6:.2f} M, base network {counts['base'] / 1e6:.2f} M, "
            f"experts {counts['experts'] / 1e6:.2f} M (total {sum(counts.values()) / 1e6:.2f} M)"
        )
    lines.append("")
    lines += _data_section(run)
    lines += _recipe_section(run, run_dir)
    notes = run.get("notes")
    if isinstance(notes, list) and notes:  # free-text history a maintainer added to run.json
        lines += ["## Training history", "", *[f"- {n}" for n in notes], ""]
    lines += ["## Hardware", ""]
    # Each stage records the machine its last session ran on; older runs only the run's last one.
    by_machine: dict[str, list[str]] = {}
    for st, rc in (run.get("recipe") or {}).items():
        if isinstance(rc, dict) and rc.get("hardware"):
            by_machine.setdefault(_machine(rc["hardware"], run), []).append(st)
    if len(by_machine) > 1:
        lines += [f"- {', '.join(stages)}: {desc}" for desc, stages in by_machine.items()]
    elif by_machine or run.get("hardware"):
        lines.append(f"Trained on {next(iter(by_machine), None) or _machine(run['hardware'], run)}")
    else:
        lines.append(f"Trained on device `{run.get('device', '?')}` (the run did not record more).")
    ev = load_eval(eval_json)
    lines += ["", "## Validation", ""]
    if ev:
        ehw = ev.get("hardware", {})
        lines += [
            f"`lorair eval` on the held-out validation photos ({ev['data'].get('source', '')}); evaluated on "
            f"{ehw.get('device', '?')} ({ehw.get('cpu', '?')}).",
            "",
            to_markdown(ev).rstrip(),
        ]
        lines += ["", "## Status", "", *status_lines(ev)]
    else:
        lines.append("Not evaluated yet: run `lorair eval --model <weights> --baselines --out DIR` and regenerate.")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return dest


# ----------------------------------------------------------------------------------------------
# command line


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorair_desktop.training.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_model", type=Path, help="the run's model.safetensors")
    p.add_argument("--name", default="lorair-compact", help="model name (preset and file name)")
    p.add_argument("--dest", type=Path, default=None, help="weights folder (default: resources/weights)")
    p.add_argument("--eval", type=Path, default=None, help="eval.json (or its folder) for the model card")
    p.add_argument("--no-card", action="store_true", help="do not write <name>.md")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                   help="extra metadata for the weights file (repeatable), e.g. "
                        f"{SOURCES_KEY}='{{\"jpeg\": \"<sha256>\"}}' for an expert a merged checkpoint's own "
                        "metadata does not name")
    args = p.parse_args(argv)
    meta = {}
    for item in args.meta:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or key.strip() in ("format", "config"):
            p.error(f"--meta {item!r}: give KEY=VALUE, with a key other than 'format' and 'config'")
        meta[key.strip()] = value
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("lorair_desktop").setLevel(logging.INFO)  # not open_clip's chatter on the root logger
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        res = export_model(args.run_model, args.name, args.dest, meta=meta)
        chk = res["fp16_check"]
        print(f"{res['path']}: {res['bytes'] / 2**20:.2f} MB, sha256 {res['sha256']}")
        print(f"fp16 vs fp32 on the test image: max {chk['max_abs'] * 255:.3f}/255, mean {chk['mean_abs'] * 255:.4f}"
              f"/255, router weights max {chk['router_max_abs']:.4f} (ok)")
        print(f"manifest: {res['manifest']}")
        if not args.no_card:
            card = write_model_card(args.run_model.parent, args.eval, Path(res["path"]).with_suffix(".md"), res)
            print(f"model card: {card}")
    except LoraIRError as exc:
        return report_error(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
