"""`lorair train`: the three training steps of a preset, resumable, on any folder of photos."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import sys
import time
from functools import partial
from pathlib import Path

import platformdirs
import torch
import torch.distributed as dist

from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.config import ModelConfig, NetConfig, load_config
from ..core.device import select_device
from ..core.lora import lora_layers
from ..core.model import LoRAIR
from ..errors import LoraIRError
from ..single_instance import single_instance
from ..stop_signals import stop_on_signal
from .dataset import (
    FLAT_KEEP_PROB,
    BatchStream,
    ImageBank,
    RestorationDataset,
    StepBatches,
    ValidationDataset,
    build_validation_set,
    photo_bank,
)
from .prototypes import measure_prototypes
from .provenance import Provenance, carried
from .trainer import (
    STAGES,
    UNBOUNDED_STEPS,
    StageConfig,
    StageRunner,
    announce_stop,
    ddp_info,
    load_or_init,
    read_run_info,
    stage_config_dict,
    tuned_base,
    write_run_info,
)

log = logging.getLogger(__name__)

# Per-stage defaults for the compact preset on a laptop-class budget (override on the command line).
STAGE_DEFAULTS = {
    "router": {"steps": 2000, "batch": 16, "lr": 1e-3, "context": 256},
    "base": {"steps": 3000, "batch": 8, "lr": 1e-3, "context": 256},
    "experts": {"steps": 1000, "batch": 8, "lr": 5e-4, "context": 256},
}
MINUTE_SHARE = {"router": 0.15, "base": 0.5, "experts": 0.35}


def preset_name(name: str) -> str:
    return name if name.startswith("lorair-") or name.endswith(".json") else f"lorair-{name}"


def default_run_dir(preset: str) -> Path:
    return Path(platformdirs.user_cache_dir("lorair-desktop")) / "runs" / preset


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="compact", help="model preset (compact = lorair-compact) or config JSON")
    p.add_argument("--stage", default="all", choices=[*STAGES, "all"])
    p.add_argument("--data", type=Path, default=None, help="folder of clean photos (default: the photo manifest)")
    p.add_argument("--device", default="auto")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget (split across stages for all)")
    p.add_argument("--steps", type=int, default=None,
                   help="steps for the stage (default per stage; on a --time-schedule, as many as --minutes allow)")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--crop", type=int, default=None, help="network training crop (default: the preset's train_size)")
    p.add_argument("--context", type=int, default=None, help="crop the router sees (default 256)")
    p.add_argument("--full", action=argparse.BooleanOptionalAction, default=None,
                   help="experts stage: fine-tune the base network too")
    p.add_argument("--tune-base", default=None, metavar="MODULE,...",
                   help="experts stage: fine-tune the base weights of these network modules too (e.g. "
                   "'middle.blocks.2,middle.blocks.3', the blocks a grown network added), the rest kept as it is")
    p.add_argument("--freeze-experts", default=None, metavar="NAME,...",
                   help="experts stage: keep these experts bit for bit even where --tasks gives their "
                   "degradations data, so the experts trained learn the mixes the router puts them in "
                   "(e.g. --tasks blur=2,haze=1 --freeze-experts haze)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (CUDA or CPUs with AMX)")
    p.add_argument("--run-dir", type=Path, default=None, help="where checkpoints live (default: user cache)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --run-dir, with the options it was started with (those given here win)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--val-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--tasks",
        default=None,
        metavar="NAME[=W],...",
        help="train and validate on these degradations only, with optional relative weights "
        "(e.g. 'noise' for a single-task model, or 'jpeg=2,noise,blur,rain,haze,low-light')",
    )
    p.add_argument(
        "--router-from",
        type=Path,
        default=None,
        metavar="MODEL",
        help="start a new run with the trained router of this checkpoint (same router config); "
        "the router stage is then skipped",
    )
    p.add_argument(
        "--init-from",
        type=Path,
        default=None,
        metavar="MODEL",
        help="start a new run from all the weights of this checkpoint (same preset), e.g. to fine-tune "
        "the shipped model on more data or a faster machine",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes that synthesise batches ahead (default: 0 on CPU, one per spare core on a GPU)",
    )
    p.add_argument(
        "--crops-per-context",
        type=int,
        default=None,
        help="network crops cut from each router context crop (base/experts; default 1); more uses each "
        "synthesised sample more on a GPU",
    )
    p.add_argument(
        "--mixed",
        type=float,
        default=None,
        metavar="FRACTION",
        help="this fraction of the training samples carries two degradations at once (e.g. blur then "
        "JPEG), which the router learns to route half to each expert; 0 (default) trains on single ones",
    )
    p.add_argument(
        "--flat-crops",
        type=float,
        default=None,
        metavar="FRACTION",
        help=f"this fraction of the crops is taken as drawn; the rest prefer textured regions (default "
        f"{FLAT_KEEP_PROB}); more shows the router and the experts skies and walls, which they should leave alone",
    )
    p.add_argument(
        "--anchor-prior",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="router stage of a trained model: teach the router only where it routes wrong, toward the prior "
        "a manual mix steers to, so the network needs no retraining after it (see training.anchor)",
    )
    p.add_argument(
        "--time-schedule",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="with --minutes: the learning-rate schedule runs over the time budget (or --steps, whichever "
        "ends first), so a session on hardware of unknown speed still ends annealed",
    )


def parse_tasks(spec: str | None, experts: tuple[str, ...]) -> list[float] | None:
    """Per-expert sampling weights from ``--tasks`` (None: all experts, uniformly)."""
    if spec is None:
        return None
    weights = dict.fromkeys(experts, 0.0)
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition("=")
        if name not in weights:
            raise LoraIRError(f"--tasks: unknown degradation {name!r}", f"this preset has {', '.join(experts)}")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise LoraIRError(f"--tasks: weight {w!r} of {name} is not a number", "write e.g. jpeg=2") from None
        if not 0 < weights[name] < 1e6:
            raise LoraIRError(f"--tasks: weight of {name} must be positive", "drop a task to leave it out")
    if not any(weights.values()):
        raise LoraIRError("--tasks names no degradation", f"choose from {', '.join(experts)}")
    return [weights[n] for n in experts]


def frozen_experts(o: argparse.Namespace, experts: tuple[str, ...]) -> tuple[int, ...]:
    """The experts the experts stage keeps bit for bit: those --tasks gives no data, and those
    --freeze-experts names (their degradations' crops still train the other experts the router
    mixes in). Refused where no adapter would be left to train."""
    names = o.freeze_experts.split(",") if isinstance(o.freeze_experts, str) else list(o.freeze_experts or [])
    names = [n.strip() for n in names if n.strip()]
    for n in names:
        if n not in experts:
            raise LoraIRError(f"--freeze-experts: unknown expert {n!r}", f"this preset has {', '.join(experts)}")
    o.freeze_experts = names or None
    idx = {i for i, w in enumerate(o.task_weights or []) if w == 0} | {experts.index(n) for n in names}
    if names and len(idx) == len(experts) and not (o.full or o.tune_base):
        raise LoraIRError("--freeze-experts keeps every expert that --tasks trains: nothing is left to train",
                          "name fewer experts, or add a task for an expert to learn")
    return tuple(sorted(idx))


#: New-run values of the options a resume restores from the stage's recorded recipe when the command
#: line leaves them out (steps, batch, lr and context come from STAGE_DEFAULTS). A stopped run so
#: continues as it was started: the same schedule, the same trained parameters (--full), the same data mix.
OPTION_DEFAULTS: dict[str, object] = {
    "crop": None, "full": False, "bf16": False, "seed": 0, "tasks": None, "crops_per_context": 1, "mixed": 0.0,
    "flat_crops": FLAT_KEEP_PROB, "time_schedule": False, "anchor_prior": False, "tune_base": None,
    "freeze_experts": None,
}


def stage_options(args: argparse.Namespace, stage: str, recipe: dict | None, share: float) -> argparse.Namespace:
    """The options `stage` trains with: those given on the command line; on a resume, the recorded
    recipe's for the rest (`restored` names them); else the defaults. `minutes` is the stage's own
    budget (its `share` of --minutes); a resumed time schedule keeps its recorded length."""
    o = argparse.Namespace(restored=[])
    for name, default in {**OPTION_DEFAULTS, **STAGE_DEFAULTS[stage]}.items():
        value = getattr(args, name)
        if value is None and recipe and recipe.get(name) is not None:
            value = None if name == "tasks" and recipe[name] == "all" else recipe[name]
            if value is not None and value != default:
                shown = ",".join(value) if isinstance(value, list) else value
                o.restored.append(f"--{name.replace('_', '-')} {shown}" if value is not True else f"--{name}")
        setattr(o, name, default if value is None else value)
    o.minutes = None if args.minutes is None else args.minutes * share
    if o.minutes is None and o.time_schedule and recipe and recipe.get("minutes"):
        o.minutes = float(recipe["minutes"])  # the schedule's length, over all sessions of the stage
        o.restored.append(f"--minutes {o.minutes:g}")
    if o.crops_per_context < 1:
        raise LoraIRError("--crops-per-context must be at least 1")
    if o.time_schedule and o.minutes is None:
        raise LoraIRError("--time-schedule fits the schedule to --minutes", "add --minutes N")
    if o.time_schedule and args.steps is None and not (recipe and recipe.get("steps")):
        o.steps = UNBOUNDED_STEPS  # the budget is the minutes: a stage default of steps would end it early
    if not 0.0 <= o.mixed < 1.0:
        raise LoraIRError(f"--mixed is a fraction of the samples, got {o.mixed}", "use e.g. --mixed 0.2")
    if isinstance(o.tune_base, str):  # a recorded recipe holds the list
        o.tune_base = [m.strip() for m in o.tune_base.split(",") if m.strip()]
    o.tune_base = tuple(o.tune_base or ()) if stage == "experts" else ()
    if o.tune_base and o.full:
        raise LoraIRError("--tune-base fine-tunes part of the base, --full all of it", "choose one of them")
    if not 0.0 <= o.flat_crops <= 1.0:
        raise LoraIRError(f"--flat-crops is a fraction of the crops, got {o.flat_crops}", "use e.g. --flat-crops 0.3")
    return o


def other_blocks(src: NetConfig, dst: NetConfig) -> bool:
    """dst is src with NAFBlocks left out or added (per level, at the end): same widths and levels."""
    return src != dst and dataclasses.replace(
        src, enc_blocks=dst.enc_blocks, middle_blocks=dst.middle_blocks, dec_blocks=dst.dec_blocks) == dst


def seed_run(run_dir: Path, cfg: ModelConfig, source: Path, seed: int, router_only: bool) -> None:
    """A new run started from ``source``: its router alone (the rest fresh), or all its weights. A
    network with fewer NAFBlocks keeps the rest of the source's weights (a faster network to tune);
    one with more starts its new blocks as the identity (a NAFBlock's residual scales beta and gamma
    are zero at init, its experts' B too), so it restores exactly as the source until trained."""
    flag = "--router-from" if router_only else "--init-from"
    if (run_dir / "model.safetensors").exists():
        raise LoraIRError(f"{flag} starts a new run, but {run_dir} already holds one",
                          f"choose an empty --run-dir, or drop {flag} to continue it")
    src = load_checkpoint(source)  # validated key for key against its own config
    same = src.cfg.router == cfg.router and tuple(src.experts) == tuple(cfg.experts)
    # a preset of higher LoRA rank may start from a trained lower-rank model: same outputs, more room
    grow = src.cfg.lora.rank < cfg.lora.rank and src.cfg.lora.top_k == cfg.lora.top_k
    reshaped = src.cfg.lora == cfg.lora and other_blocks(src.cfg.net, cfg.net)
    if not router_only:
        same = same and ((src.cfg.net == cfg.net and (src.cfg.lora == cfg.lora or grow)) or reshaped)
    if not same:
        part = "router" if router_only else "network"
        raise LoraIRError(f"{source.name}'s {part} differs from the {cfg.name} {part} (config or experts)",
                          "use a checkpoint of the same preset, of the same network with a lower LoRA rank, "
                          "or of the same network with other block counts")
    torch.manual_seed(seed)
    model = LoRAIR(cfg)
    if router_only:
        model.router.load_state_dict(src.router.state_dict())
    elif src.cfg.lora != cfg.lora:
        loaded = model.load_state_dict({k: v for k, v in src.state_dict().items() if ".lora_" not in k}, strict=False)
        assert not loaded.unexpected_keys and all(".lora_" in k for k in loaded.missing_keys), loaded
        for big, small in zip(lora_layers(model), lora_layers(src), strict=True):
            big.grow_from(small)
    else:
        # blocks are numbered from 0 in every level, so the kept ones have the source's names
        theirs = src.state_dict()
        loaded = model.load_state_dict({k: v for k, v in theirs.items() if k in model.state_dict()}, strict=False)
        assert all(".blocks." in k for k in loaded.missing_keys), loaded.missing_keys  # only added blocks are new
    model.prior_prototypes = src.prior_prototypes  # every branch keeps the source's router, so they hold
    # Which experts a merged source took from other runs holds for the adapters kept as they were
    # (a rank grown keeps what each expert computes); new blocks' adapters are this run's own.
    record = Provenance() if router_only or reshaped else Provenance.of_file(source, cfg.experts)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, run_dir / "model.safetensors", meta=record.to_meta())


def default_workers(device: torch.device, processes: int = 1) -> int:
    """On a GPU, the cores the trainer processes leave, shared among them; on a CPU the cores train."""
    if device.type == "cpu":
        return 0
    return max(1, min(16, ((os.cpu_count() or 2) - processes) // processes))


def _val_batches(
    bank: ImageBank, names: tuple[str, ...], context: int, weights: list[float] | None = None, batch: int = 8
) -> list:
    """The fixed validation batches; with task weights, only the tasks trained on (same items)."""
    samples = build_validation_set(bank, names, crop_size=context, crops_per_image=1, seed=1234)
    if weights is not None:
        samples = [s for s in samples if weights[s.label] > 0]
    vds = ValidationDataset(samples)
    items = [vds[i] for i in range(len(vds))]
    return [
        tuple(torch.stack([it[k] for it in items[i : i + batch]]) for k in range(3))
        for i in range(0, len(items), batch)
    ]


def run(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = preset_name(args.preset)
    cfg = load_config(preset)
    run_dir = args.run_dir or default_run_dir(cfg.name)
    stages = list(STAGES) if args.stage == "all" else [args.stage]
    if args.router_from is not None and args.init_from is not None:
        raise LoraIRError("--router-from and --init-from both seed a new run", "choose one of them")
    if args.router_from is not None:
        if args.stage == "router":
            raise LoraIRError("--router-from brings a trained router", "train --stage base or experts with it")
        stages = [s for s in stages if s != "router"]
    if run_dir.exists() and any(run_dir.glob("state-*.pt")) and not args.resume:
        raise LoraIRError(
            f"a training run already exists in {run_dir}", "add --resume to continue it, or choose another --run-dir"
        )
    recorded = read_run_info(run_dir)  # read once: its recipes are restored (on --resume) and kept
    if args.resume and args.data is None and recorded.get("data") not in (None, "photo manifest"):
        args.data = Path(recorded["data"])  # the run's own photo folder, not the manifest
        print(f"resuming on the run's data: --data {args.data}", file=sys.stderr)
    options: dict[str, argparse.Namespace] = {}
    for st in stages:  # every stage's options checked before any trains
        resumed = args.resume and (run_dir / f"state-{st}.pt").is_file()
        o = stage_options(args, st, recorded.get("recipe", {}).get(st) if resumed else None,
                          MINUTE_SHARE[st] if len(stages) > 1 else 1.0)
        o.task_weights = parse_tasks(o.tasks, tuple(cfg.experts))
        o.frozen = frozen_experts(o, tuple(cfg.experts)) if st == "experts" else ()
        if o.mixed and o.task_weights is not None and sum(w > 0 for w in o.task_weights) < 2:
            raise LoraIRError("--mixed pairs two degradations, --tasks names only one", "add a task or drop --mixed")
        if o.restored:
            print(f"resuming {st} with its recorded options: {' '.join(o.restored)}", file=sys.stderr)
        options[st] = o
    for flag, given in (("--tune-base", args.tune_base), ("--freeze-experts", args.freeze_experts)):
        if given and args.stage not in ("experts", "all"):
            raise LoraIRError(f"{flag} is for the experts stage", "add --stage experts")
    if "experts" in options and options["experts"].tune_base:
        tuned_base(LoRAIR(cfg), options["experts"].tune_base)  # an unknown module is refused before any training
    seed = 0 if args.seed is None else args.seed
    rank, world = ddp_info()  # under torchrun: joins the process group; rank 0 alone writes the run folder
    source = args.router_from or args.init_from
    if rank == 0 and source is not None and not (args.resume and (run_dir / "model.safetensors").is_file()):
        seed_run(run_dir, cfg, source, seed, router_only=args.router_from is not None)  # checked first
    if world > 1:
        dist.barrier()  # the other ranks load the seeded model
    run_dir.mkdir(parents=True, exist_ok=True)
    # One trainer per run folder (rank 0 speaks for a DDP run): a second would overwrite the checkpoints.
    with (
        single_instance(run_dir / "train.lock") if rank == 0 else contextlib.nullcontext(True) as mine,
        stop_on_signal(announce=announce_stop) as stop,
    ):
        if not mine:
            raise LoraIRError(f"another lorair train is training in {run_dir}",
                              "wait for it or stop it, or choose another --run-dir")
        device = select_device(args.device)
        if world > 1 and device.type == "cuda":  # one GPU per process
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        workers = default_workers(device, world) if args.workers is None else max(0, args.workers)
        if args.data is not None:
            train_bank = ImageBank.from_folder(args.data, "train")
            val_bank = ImageBank.from_folder(args.data, "val")
        else:
            train_bank, val_bank = photo_bank("train"), photo_bank("val")
        model = load_or_init(run_dir, cfg, seed).to(device)
        from .evaluate import hardware_info  # lazy: only needed here, for the model card

        hardware = hardware_info(device)
        info = partial(write_run_info, run_dir) if rank == 0 else lambda _info: None
        say = print if rank == 0 else lambda *_a, **_k: None
        info(
            {
                "preset": cfg.name,
                "config": cfg.to_dict(),
                "device": str(device),
                "hardware": hardware,
                "data": str(args.data) if args.data is not None else "photo manifest",
                "train_images": train_bank.names,
                "val_images": val_bank.names,
                **({"router_from": str(args.router_from)} if args.router_from is not None else {}),
                **({"init_from": str(args.init_from)} if args.init_from is not None else {}),
            },
        )
        recipes = recorded.get("recipe", {})
        for st in stages:
            o = options[st]
            context = o.context
            crop = o.crop or cfg.net.train_size
            sc = StageConfig(
                stage=st,
                steps=o.steps,
                minutes=o.minutes,
                batch=o.batch,
                lr=o.lr,
                full=o.full,
                tune_base=o.tune_base,
                bf16=o.bf16,
                seed=o.seed,
                val_every=args.val_every,
                time_schedule=o.time_schedule,
                crops_per_context=o.crops_per_context,
                anchor_prior=o.anchor_prior and st == "router",
                frozen_experts=o.frozen,
            )
            ds = RestorationDataset(
                train_bank,
                cfg.experts,
                crop_size=context,
                length=10**9,
                seed=o.seed + 17 * STAGES.index(st),
                weights=o.task_weights,
                mixed=o.mixed,
                flat_keep_prob=o.flat_crops,
            )
            val = _val_batches(val_bank, cfg.experts, context, o.task_weights)
            # Across processes the batches travel as 8 bits: a quarter of the bytes, the same values.
            batches = StepBatches(ds, sc.batch, sc.steps, as_uint8=workers > 0, rank=rank, world=world)
            stream = BatchStream(batches, workers, pin_memory=device.type == "cuda")
            runner = StageRunner(model, sc, run_dir, stream, val, device, stop)
            runner.try_resume()
            if runner.step >= sc.steps:
                log.info("stage %s already complete (%d steps)", st, runner.step)
                continue
            # Per stage, hardware included: a run may move between machines.
            recipe = {**stage_config_dict(sc), "context": context, "crop": None if st == "router" else crop,
                      "tasks": o.tasks or "all", "freeze_experts": o.freeze_experts, "mixed": o.mixed,
                      "flat_crops": o.flat_crops, "hardware": hardware}
            recipes = {**recipes, st: recipe}
            info({"recipe": recipes})
            t0 = time.monotonic()
            if st == "router":
                model.prior_prototypes = None  # measured anew below: the router they describe changes
            try:
                result = runner.run(crop=None if st == "router" else crop)
            finally:
                stream.close()
            if st == "router" and rank == 0 and not result["interrupted"]:  # a stop request stops now
                model.prior_prototypes = measure_prototypes(model, train_bank)
                save_checkpoint(model, run_dir / "model.safetensors",
                                meta=carried(run_dir / "model.safetensors", cfg.experts))
            result["wall_s"] = time.monotonic() - t0
            result["wall_s_total"] = runner.wall_s  # all sessions of this stage (kept in its state file)
            result["history"] = runner.history[-20:]
            info({f"stage_{st}": result})
            say(
                f"[{st}] step {result['step']}/{sc.steps} loss {result['loss']}, {result['wall_s'] / 60:.1f} min, "
                f"last {[h for h in runner.history if 'val_psnr' in h or 'val_acc' in h][-1:]}"
            )
            if not result["done"]:
                why = "stopped on request, checkpoint saved" if result["interrupted"] else "stopped by the time budget"
                say(f"{why}; continue with: lorair train --preset {args.preset} --stage {args.stage} "
                    f"--resume --run-dir {run_dir}")
                return 130 if result["interrupted"] else 0
        say(f"run folder: {run_dir} (model.safetensors)")
        return 0
