"""`lorair eval`: PSNR/SSIM per degradation row, baselines, router confusion; JSON + Markdown.

    lorair eval --model lorair-compact                # validation photos of the manifest
    lorair eval --model run/model.safetensors --quick # 3 images, fast smoke check
    lorair eval --data ~/Pictures --split all --baselines --out eval-mine
    lorair eval --model run/model.safetensors --compare eval-before/eval.json  # change per row
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import platformdirs
import torch

from ..core.checkpoint import DEFAULT_MODEL, load_checkpoint, resolve_model, sha256_file, verify_sha256
from ..core.errors import LoraIRError
from ..core.inference import ENSEMBLES, Restorer
from ..core.model import LoRAIR
from .dataset import ImageBank, photo_bank
from .eval_compare import check_same_crops, compare, compare_markdown, read_report
from .evaluate import EvalSettings, evaluate, report_data, to_markdown

log = logging.getLogger(__name__)

QUICK_IMAGES = 3


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help="preset name or .safetensors path")
    p.add_argument("--data", type=Path, default=None, help="folder of clean photos (default: the photo manifest)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"], help="which photos of the folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    p.add_argument("--precision", default="fp32",
                   help="fp32 (default: the model's own numbers, alike on every machine) | auto | bf16 | fp16")
    p.add_argument("--out", type=Path, default=None, help="folder for eval.json and eval.md")
    p.add_argument("--quick", action="store_true", help=f"only {QUICK_IMAGES} images and fewer router crops")
    p.add_argument("--baselines", nargs="?", const="all", default="", choices=("all", "fast"),
                   help="also run CBM3D, Wiener and the dark channel prior (slow); 'fast': all but CBM3D, which "
                        "takes minutes per whole photo")
    p.add_argument("--images", type=int, default=None, help="use at most this many images")
    p.add_argument("--crop", type=int, default=256,
                   help="side of the fixed evaluation crops; 0: whole photos, routed and tiled as a user's photo "
                        "(one per image, also for the router's confusion matrix)")
    p.add_argument("--crops-per-image", type=int, default=1)
    p.add_argument("--router-crops", type=int, default=4, help="crops per image for the router confusion matrix")
    p.add_argument("--tile", type=int, default=None, help="force tiled inference with this tile side")
    p.add_argument("--ensemble", type=int, choices=ENSEMBLES, default=1,
                   help="self-ensemble passes per restore, as `lorair restore --ensemble` (that many times slower)")
    p.add_argument("--forced", action="store_true",
                   help="also restore every crop with its row's experts forced, as a user's manual mix would")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the JSON report instead of the table")
    p.add_argument("--compare", type=Path, default=None, metavar="EVAL_JSON",
                   help="an earlier report of the same crops (its eval.json): print and keep the change per row")


def _load(name_or_path: str) -> tuple[LoRAIR, dict]:
    entry = resolve_model(name_or_path)
    assert entry.weights is not None
    sha = entry.sha256
    if sha:
        verify_sha256(entry.weights, sha)
    else:
        sha = sha256_file(entry.weights)
    info = {"name": entry.name, "weights": str(entry.weights), "sha256": sha,
            "bytes": entry.weights.stat().st_size}
    return load_checkpoint(entry.weights), info


def run(args: argparse.Namespace) -> int:
    if args.crop < 0 or 0 < args.crop < 16:
        raise LoraIRError(f"--crop {args.crop} is not a crop side", "use 16 pixels or more, or 0 for whole photos")
    if args.threads:
        torch.set_num_threads(args.threads)
    model, model_info = _load(args.model)
    split = None if args.split == "all" else args.split
    if args.data is not None:
        bank = ImageBank.from_folder(args.data, split)
        source = str(args.data)
    else:
        bank = photo_bank(split)
        source = "photo manifest (lorair_desktop/training/photo_manifest.json)"
    limit = args.images or (QUICK_IMAGES if args.quick else None)
    if limit is not None and limit < len(bank):
        bank = ImageBank(bank.images[:limit], bank.names[:limit])
    before = read_report(args.compare) if args.compare is not None else None  # a bad file fails before the run
    settings = EvalSettings(
        crop=args.crop,
        crops_per_image=args.crops_per_image,
        router_crops=min(args.router_crops, 2) if args.quick else args.router_crops,
        seed=args.seed,
        baselines=args.baselines,
        tile=args.tile,
        ensemble=args.ensemble,
        forced=args.forced,
    )
    if before is not None:  # the same crops, or the comparison means nothing: refused before the run
        check_same_crops(before["data"], report_data(bank, settings))
    restorer = Restorer(model, device=args.device, precision=args.precision)
    report = evaluate(restorer, bank, settings)
    report["model"] = model_info
    report["data"].update({"source": source, "split": args.split, "quick": args.quick})
    out = args.out or Path(platformdirs.user_cache_dir("lorair-desktop")) / "eval" / model_info["name"]
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(report, f"{model_info['name']} ({Path(model_info['weights']).name}, sha256 "
                             f"{model_info['sha256'][:12]}…) on {args.split} photos")
    if before is not None:
        report["compare"] = compare(before, report)
        md += "\n" + compare_markdown(report["compare"])
    (out / "eval.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "eval.md").write_text(md, encoding="utf-8")
    print(json.dumps(report, indent=2) if args.json else md)
    print(f"wrote {out / 'eval.json'} and {out / 'eval.md'} ({report['wall_s']:.0f} s)")
    return 0
