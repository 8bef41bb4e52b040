"""Two `lorair eval` reports side by side: what a change of weights gained or lost, row by row.

    lorair eval --model run/model.safetensors --compare before/eval.json   # evaluate, then compare
    python -m lorair_desktop.training.eval_compare BEFORE.json AFTER.json  # compare two reports

Every "tried, not shipped" or "shipped" line of a model card's history is such a comparison. Only
reports made with the same photos, crops, seed and ensemble are compared: the same crops are what
make the differences mean something, so reports that differ there are refused, naming the setting.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import LoraIRError, report_error

# Settings under `data` that decide which crops are restored, and how.
SAME = ("images", "crop", "crops_per_image", "seed", "ensemble", "quantized_8bit")
CROP_CHANGE_DB = 0.5  # a crop whose own gain moved more than this is named (a mean can hide it)
CROPS_LISTED = 6


def read_report(path: Path) -> dict[str, Any]:
    """An eval.json, checked for what a comparison reads."""
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoraIRError(f"cannot read the evaluation report {path}: {exc}",
                          "give the eval.json that `lorair eval --out DIR` wrote") from exc
    rows = rep.get("rows") if isinstance(rep, dict) else None
    if not isinstance(rows, list) or not isinstance(rep.get("data"), dict) or not all(
            isinstance(r, dict) and isinstance(r.get("row"), str) and isinstance(r.get("model"), dict)
            and isinstance(r.get("input"), dict) for r in rows):
        raise LoraIRError(f"{path} is not a `lorair eval` report (no rows of model and input results)",
                          "give the eval.json that `lorair eval --out DIR` wrote")
    return rep


def _num(d: dict[str, Any] | None, key: str) -> float | None:
    v = None if d is None else d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def _routed(row: dict[str, Any]) -> dict[str, Any]:
    routed = row.get("routed")
    return routed if isinstance(routed, dict) else {}


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def check_same_crops(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Refuses two reports' `data` sections that restored other crops (see SAME)."""
    differ = [k for k in SAME if before.get(k) != after.get(k)]
    if differ:
        k = differ[0]
        raise LoraIRError(f"the two evaluations restore different crops: {k} {before.get(k)!r} vs {after.get(k)!r}",
                          "evaluate both with the same --data, --crop, --crops-per-image, --seed and --ensemble")


def _mix_of(crop: dict[str, Any]) -> dict[str, float]:
    mix = crop.get("mix")
    return {str(k): v for k, v in mix.items() if _num(mix, k) is not None} if isinstance(mix, dict) else {}


def _crop_changes(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The crops of one row whose model PSNR moved by more than CROP_CHANGE_DB (reports that keep them)."""
    a, b = old.get("crops"), new.get("crops")
    if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return []
    out = []
    for x, y in zip(a, b, strict=True):
        if not (isinstance(x, dict) and isinstance(y, dict)) or (x.get("image"), x.get("crop")) != (
                y.get("image"), y.get("crop")):
            return []  # not the same crops in the same order: nothing to pair
        d = _delta(_num(x, "model"), _num(y, "model"))
        if d is not None and abs(d) > CROP_CHANGE_DB:
            out.append({"row": new["row"], "image": y["image"], "crop": y["crop"], "delta": d,
                        "gain_before": _delta(_num(x, "input"), _num(x, "model")),
                        "gain_after": _delta(_num(y, "input"), _num(y, "model")),
                        "mix_before": _mix_of(x), "mix_after": _mix_of(y)})
    return out


def compare(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Per-row PSNR and worst-crop changes (after − before), forced-mix and router changes."""
    check_same_crops(before["data"], after["data"])
    old = {r["row"]: r for r in before["rows"]}
    rows, crops = [], []
    for r in after["rows"]:
        o = old.get(r["row"])
        if o is None:
            continue
        crops += _crop_changes(o, r)
        row = {"row": r["row"],
               "before": _num(o["model"], "psnr"), "after": _num(r["model"], "psnr"),
               "worst_before": _num(o, "worst_gain"), "worst_after": _num(r, "worst_gain"),
               "routed_before": _routed(o), "routed_after": _routed(r)}
        row["delta"] = _delta(row["before"], row["after"])
        row["ssim_delta"] = _delta(_num(o["model"], "ssim"), _num(r["model"], "ssim"))
        if isinstance(o.get("forced"), dict) and isinstance(r.get("forced"), dict):
            row["forced_delta"] = _delta(_num(o["forced"], "psnr"), _num(r["forced"], "psnr"))
        rows.append(row)
    top1 = (_num(before.get("router"), "top1"), _num(after.get("router"), "top1"))
    models = [m if isinstance(m, dict) else {} for m in (before.get("model"), after.get("model"))]
    crops.sort(key=lambda c: c["delta"])  # the biggest losses first
    return {"before": models[0], "after": models[1], "rows": rows, "crops": crops,
            "router_top1": {"before": top1[0], "after": top1[1]},
            "missing": sorted(set(old) - {r["row"] for r in rows})}


def mix_text(mix: dict[str, float]) -> str:
    """An expert mix as "haze 0.89, jpeg 0.11"."""
    return ", ".join(f"{k} {v:.2f}" for k, v in mix.items()) or "none"


def _f(v: float | None, fmt: str = "+.2f") -> str:
    return "–" if v is None else format(v, fmt)


def _model(m: dict[str, Any]) -> str:
    sha = m.get("sha256")
    return f"{m.get('name', '?')} ({sha[:12]}…)" if isinstance(sha, str) else str(m.get("name", "?"))


def compare_markdown(cmp: dict[str, Any]) -> str:
    forced = any("forced_delta" in r for r in cmp["rows"])
    lines = [f"### {_model(cmp['after'])} against {_model(cmp['before'])}", "",
             "| row | before dB | after dB | Δ dB | Δ SSIM | worst crop dB, before → after |"
             + (" forced Δ dB |" if forced else "") + " routed, after |",
             "|---|---:|---:|---:|---:|---|" + ("---:|" if forced else "") + "---|"]
    for r in cmp["rows"]:
        routed = ", ".join(f"{k} {v}" for k, v in r["routed_after"].items())
        lines.append(f"| {r['row']} | {_f(r['before'], '.2f')} | {_f(r['after'], '.2f')} | {_f(r['delta'])} | "
                     f"{_f(r['ssim_delta'], '+.4f')} | {_f(r['worst_before'])} → {_f(r['worst_after'])} |"
                     + (f" {_f(r.get('forced_delta'))} |" if forced else "") + f" {routed} |")
    t = cmp["router_top1"]
    if t["before"] is not None and t["after"] is not None:
        lines += ["", f"Router top-1: {100 * t['before']:.1f} → {100 * t['after']:.1f} %."]
    changed = cmp.get("crops") or []
    if changed:
        shown = changed if len(changed) <= CROPS_LISTED else changed[:CROPS_LISTED // 2] + changed[-CROPS_LISTED // 2:]
        lines += ["", f"Crops whose own result moved more than {CROP_CHANGE_DB:g} dB: {len(changed)}"
                  + ("" if shown is changed else f", the {len(shown)} that moved most") + ", losses first:", ""]
        for c in shown:
            lines.append(f"- {c['row']}: {c['image']} crop {c['crop']} {c['delta']:+.2f} dB (gain "
                         f"{_f(c['gain_before'])} → {_f(c['gain_after'])}; mixed {mix_text(c['mix_before'])} → "
                         f"{mix_text(c['mix_after'])})")
    if cmp["missing"]:
        lines += ["", f"Rows only in the earlier report: {', '.join(cmp['missing'])}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorair_desktop.training.eval_compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="the earlier eval.json")
    p.add_argument("after", type=Path, help="the later eval.json")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    args = p.parse_args(argv)
    try:
        cmp = compare(read_report(args.before), read_report(args.after))
    except LoraIRError as exc:
        return report_error(exc)
    print(json.dumps(cmp, indent=2) if args.json else compare_markdown(cmp), end="" if not args.json else "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
