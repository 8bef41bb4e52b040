"""The three LoRA-IR training steps, resumable, on CPU, CUDA or several GPUs (torchrun).

- router:  the DG-Router as a degradation classifier (cross-entropy) on 5-view inputs; with
           `anchor_prior`, also held to the prior the network knows (training.anchor);
- base:    Stage 1, the network with the router's prior (router frozen), PSNR loss;
- experts: Stage 2, the LoRA experts mixed by the router's weights, base frozen (or all, --full).

A run lives in one folder: `model.safetensors` (the whole model, updated at each checkpoint) and
`state-<stage>.pt` (optimizer, scheduler, step; loaded with weights_only=True). Batches are drawn
from a generator seeded by (seed, step, rank), so a resumed run continues exactly where it was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from ..atomic import replacing, write_text
from ..core.checkpoint import load_checkpoint, save_checkpoint
from ..core.config import ModelConfig
from ..core.model import LoRAIR
from ..errors import LoraIRError
from .anchor import PriorAnchor
from .dataset import to_float
from .provenance import carried

log = logging.getLogger(__name__)
STAGES = ("router", "base", "experts")
#: The step count of a stage on a time schedule with no --steps: its minutes alone end it.
UNBOUNDED_STEPS = 10**9

BatchFn = Callable[[int], tuple[Tensor, Tensor, Tensor]]  # step -> (degraded, clean, labels), NCHW float


@dataclass
class StageConfig:
    stage: str
    steps: int = 2000
    minutes: float | None = None  # wall-clock budget; stops early (resumable) when spent
    time_schedule: bool = False  # the lr schedule runs over `minutes` (or `steps`, whichever ends first)
    batch: int = 8
    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 1e-3
    clip: float = 1.0
    crops_per_context: int = 1  # network crops cut from each router context (same prior for each)
    full: bool = False  # experts stage: fine-tune the base too
    # experts stage: fine-tune the base weights of these network modules too (name prefixes, e.g. the
    # blocks a grown network added), the rest of the base kept as it is
    tune_base: tuple[str, ...] = ()
    # experts stage: experts trained on no data here (left out of --tasks), kept exactly as they are
    frozen_experts: tuple[int, ...] = ()
    anchor_prior: bool = False  # router stage: keep the prior the network knows (training.anchor)
    bf16: bool = False
    ckpt_every_s: float = 120.0
    val_every: int = 500
    seed: int = 0
    extra: dict = field(default_factory=dict)


def psnr_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of 10·log10(MSE): minimising it maximises PSNR (NAFNet's loss)."""
    mse = (pred - target).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(mse + 1e-8).mean()


def psnr(pred: Tensor, target: Tensor) -> Tensor:
    mse = (pred.clamp(0, 1) - target).pow(2).mean(dim=(1, 2, 3))
    return -10.0 * torch.log10(mse + 1e-10)


def announce_stop(name: str) -> None:
    """What the trainer says on a first stop signal (see stop_signals.stop_on_signal)."""
    print(f"\n{name}: saving a checkpoint after this step (again to abort)", file=sys.stderr, flush=True)


def ddp_info() -> tuple[int, int]:
    """(rank, world size); initialises the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def tuned_base(model: LoRAIR, modules: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """The base (non-LoRA) parameters of the network modules named by ``modules`` (name prefixes)."""
    base = [(n, p) for n, p in model.net.named_parameters() if ".lora_" not in n]
    for m in modules:
        if not any(n.startswith(m + ".") for n, _ in base):
            tops = sorted({n.split(".")[0] for n, _ in base})
            raise LoraIRError(f"--tune-base: the network has no module {m!r} with base weights",
                              f"name modules by their path, e.g. {', '.join(tops[:6])} or middle.blocks.2")
    return [p for n, p in base if any(n.startswith(m + ".") for m in modules)]


def trainable_params(model: LoRAIR, sc: StageConfig) -> list[torch.nn.Parameter]:
    groups = model.parameter_groups()
    model.requires_grad_(False)
    if sc.stage == "router":
        params = [
            p
            for n, p in model.router.named_parameters()
            if not (n.startswith("tower.") and (model.cfg.router.freeze_tower or model.cfg.router.pretrained))
        ]
    elif sc.stage == "base":
        params = groups["base"]
    else:
        params = groups["experts"] + (groups["base"] if sc.full else tuned_base(model, sc.tune_base))
    for p in params:
        p.requires_grad_(True)
    return params


class StageRunner:
    def __init__(
        self,
        model: LoRAIR,
        sc: StageConfig,
        run_dir: Path,
        batches: BatchFn,
        val_batches: list[tuple[Tensor, Tensor, Tensor]] | None,
        device: torch.device,
        stop: threading.Event | None = None,
    ) -> None:
        self.model, self.sc, self.run_dir, self.batches, self.device = model, sc, run_dir, batches, device
        self.stop = stop or threading.Event()  # set (e.g. by stop_on_signal): save and return after this step
        self.val = val_batches or []
        self.rank, self.world = ddp_info()
        self.params = trainable_params(model, sc)
        self.opt = torch.optim.AdamW(self.params, lr=sc.lr, weight_decay=sc.weight_decay, betas=(0.9, 0.9))
        self._frozen = self._frozen_slices()
        self._carried: dict[str, str] | None = None  # the merged-experts record this stage keeps
        self.step = 0
        self.history: list[dict] = []
        self.wall_before = 0.0  # training seconds of earlier sessions of this stage (from the state file)
        self._t_session: float | None = None
        self.data_wait_s = 0.0  # this session's time spent waiting for batches
        self.state_path = run_dir / f"state-{sc.stage}.pt"
        self.anchor: PriorAnchor | None = None
        self._prototypes = model.prior_prototypes  # the router's as the stage finds it (for an anchor)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed training shapes: pick the fastest kernels once
        # The module whose forward trains: the router alone in its stage, else the whole model. DDP must
        # wrap exactly that module, since only a call through the wrapper synchronises gradients.
        trained: torch.nn.Module = model.router if sc.stage == "router" else model
        self.ddp_model = trained
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(trained, find_unused_parameters=True)

    def _frozen_slices(self) -> list[tuple[torch.nn.Parameter, list[int], Tensor]]:
        """(LoRA tensor, frozen experts, their slices as they are) for the experts stage.

        An expert left out of --tasks gets no data, yet the router's top-2 mix of the trained
        degradations gives it a small weight now and then, and Adam scales even a tiny gradient to
        a full step: a jpeg-only LoRA run moved the noise, rain and low-light experts by 2-6 dB
        within 900 steps. So their gradients are dropped and their slices put back after each step
        (AdamW's weight decay reaches them too). --freeze-experts names more: experts whose
        degradations are drawn, to train the others on the crops the router mixes them into."""
        idx = sorted(set(self.sc.frozen_experts))
        if self.sc.stage != "experts" or not idx:
            return []
        return [(p, idx, p.detach()[idx].clone()) for n, p in self.model.net.named_parameters()
                if ".lora_" in n and p.requires_grad]

    # -- schedule --------------------------------------------------------------------------------
    def progress(self) -> float:
        """How far through its schedule the stage is (1: done): by steps, or, with a time schedule,
        by training time over the budget when that is further (a GPU of unknown speed still ends
        its session with the learning rate annealed)."""
        done = self.step / max(1, self.sc.steps)
        if self.sc.time_schedule and self.sc.minutes:
            done = max(done, self.wall_s / (self.sc.minutes * 60))
        return done

    def lr_at(self, step: int, progress: float | None = None) -> float:
        """Linear warm-up (100 steps or 5 % of the schedule, whichever is shorter), then cosine to min_lr."""
        timed = self.sc.time_schedule and bool(self.sc.minutes)
        if progress is None:
            progress = self.progress()
        warm = min(100, self.sc.steps // 20)
        rise = (step + 1) / warm if warm else 1.0
        if timed:
            rise = max(rise, progress / 0.05)
        if rise < 1.0 or (step < warm and not timed):
            return self.sc.lr * min(rise, 1.0)
        t = progress if timed else (step - warm) / max(1, self.sc.steps - warm)
        return self.sc.min_lr + 0.5 * (self.sc.lr - self.sc.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))

    @property
    def wall_s(self) -> float:
        """Training wall time of this stage over all its sessions, up to now."""
        now = 0.0 if self._t_session is None else time.monotonic() - self._t_session
        return self.wall_before + now

    # -- checkpoints -----------------------------------------------------------------------------
    def untrained_experts(self) -> list[str]:
        """Experts whose adapters this stage leaves as they are (their merged-from record stays)."""
        experts = list(self.model.cfg.experts)
        if self.sc.stage != "experts":
            return experts
        return [experts[i] for i in sorted(set(self.sc.frozen_experts))]

    def save(self) -> None:
        if self.rank != 0:
            return
        path = self.run_dir / "model.safetensors"
        if self._carried is None:  # read once: the record cannot change while the stage runs
            self._carried = carried(path, self.untrained_experts())
        save_checkpoint(self.model, path, meta=self._carried)
        with replacing(self.state_path) as tmp:
            torch.save(
                {
                    "step": self.step,
                    "opt": self.opt.state_dict(),
                    "history": json.dumps(self.history),
                    "stage": self.sc.stage,
                    "wall_s": self.wall_s,
                },
                tmp,
            )

    def try_resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        try:
            self.opt.load_state_dict(state["opt"])
        except ValueError as exc:  # e.g. resumed without --full after a --full session
            raise LoraIRError(
                f"the {self.sc.stage} stage in {self.run_dir} was trained on another set of parameters ({exc})",
                "resume with the options it was started with (left out, they are taken from run.json): "
                "--full or --no-full as before",
            ) from exc
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        self.wall_before = float(state.get("wall_s", 0.0))
        log.info("resumed %s at step %d", self.sc.stage, self.step)
        return True

    # -- one step --------------------------------------------------------------------------------
    def _prior_and_mix(self, deg: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            r = self.model.route(deg)
            return r.prior, self.model.router_weights(r.logits)  # the mix inference will use

    def loss_on(self, deg: Tensor, clean: Tensor, labels: Tensor, crop: int | None) -> Tensor:
        st = self.sc.stage
        if st == "router":
            out = self.ddp_model(deg)
            return self.anchor.loss(out, deg, labels) if self.anchor else F.cross_entropy(out.logits, labels)
        prior, mix = self._prior_and_mix(deg)
        if crop and deg.shape[-1] > crop:
            # The router sees the whole context crop; the network trains on random sub-crops of it,
            # each with the context's prior (as tiles of a photo share the photo's prior at inference).
            g = torch.Generator().manual_seed(self.sc.seed * 1_000_003 + self.step)
            k = max(1, self.sc.crops_per_context)
            pos = torch.randint(0, deg.shape[-1] - crop + 1, (2 * k,), generator=g).view(k, 2).tolist()
            deg = torch.cat([deg[..., y : y + crop, x : x + crop] for y, x in pos])
            clean = torch.cat([clean[..., y : y + crop, x : x + crop] for y, x in pos])
            prior = prior.repeat(k, 1)  # mix stays one row per context: crop-major batches share it
        out = self.ddp_model(deg, prior, mix if st == "experts" else None)
        return psnr_loss(out, clean)

    def run(self, crop: int | None = None, log_every: int = 20) -> dict:
        sc = self.sc
        if sc.stage == "router" and sc.anchor_prior and self.anchor is None:
            self.anchor = PriorAnchor.for_run(self.run_dir, self.model, self._prototypes, save=self.rank == 0)
        self.model.train()
        if sc.stage != "router" or self.anchor:
            self.model.router.eval()  # frozen router, or anchored: BatchNorm statistics stay put
        t_start = time.monotonic()
        t_ckpt = t_start
        self._t_session = t_start
        losses: list[float] = []
        progress = self.progress()
        interrupted = False
        while self.step < sc.steps:
            progress, spent, interrupted = self._shared_clock(t_start)
            if sc.time_schedule and progress >= 1.0:
                log.info("time schedule complete at step %d", self.step)
                break
            if spent or interrupted:
                log.info("%s at step %d/%d (resumable)", "stopped" if interrupted else "time budget spent",
                         self.step, sc.steps)
                break
            for g in self.opt.param_groups:
                g["lr"] = self.lr_at(self.step, progress)
            t_wait = time.monotonic()
            try:
                batch = self.batches(self.step)
            except RuntimeError:
                # A terminal's Ctrl-C reaches the batch workers too: once stopping, their exit is expected.
                if not self.stop.is_set() or self.world > 1:  # under DDP every rank must stop at one step
                    raise
                interrupted = True
                break
            self.data_wait_s += time.monotonic() - t_wait  # the trainer idle for want of a batch
            deg, clean, labels = (t.to(self.device, non_blocking=True) for t in batch)
            deg, clean = to_float(deg), to_float(clean)  # 8-bit batches become floats on the device
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=sc.bf16):
                loss = self.loss_on(deg, clean, labels, crop)
            self.opt.zero_grad(set_to_none=True)
            loss.float().backward()
            for p, idx, _ in self._frozen:
                if p.grad is not None:
                    p.grad[idx] = 0  # before clipping: the trained experts keep the whole norm budget
            torch.nn.utils.clip_grad_norm_(self.params, sc.clip)
            self.opt.step()
            with torch.no_grad():
                for p, idx, kept in self._frozen:
                    p[idx] = kept
            self.step += 1
            losses.append(float(loss.detach()))
            if self.step % log_every == 0 or self.step == sc.steps:
                self._report(losses, t_start)
                self.history.append({"step": self.step, "loss": float(np.mean(losses[-log_every:]))})
            if self.val and (self.step % sc.val_every == 0 or self.step == sc.steps):
                self.history.append({"step": self.step, **self.validate(crop)})
                log.info("step %d validation %s", self.step, self.history[-1])
            if time.monotonic() - t_ckpt > sc.ckpt_every_s:
                self.save()
                t_ckpt = time.monotonic()
        if self.step >= sc.steps:
            progress = 1.0
        validated = any(h["step"] == self.step and ("val_psnr" in h or "val_acc" in h) for h in self.history[-2:])
        # A time schedule ends between validations: validate the final weights (not when stopped early).
        if self.val and progress >= 1.0 and not validated and not interrupted:
            self.history.append({"step": self.step, **self.validate(crop)})
            log.info("step %d validation %s", self.step, self.history[-1])
        self.wall_before, self._t_session = self.wall_s, None  # the session is over: stop the clock
        self.save()
        return {
            "stage": sc.stage,
            "step": self.step,
            "done": progress >= 1.0 and not interrupted,
            "interrupted": interrupted,
            "loss": float(np.mean(losses[-50:])) if losses else None,
            "data_wait_share": self.data_wait_s / max(1e-9, time.monotonic() - t_start),
        }

    def _shared_clock(self, t_start: float) -> tuple[float, bool, bool]:
        """(schedule progress, time budget spent, stop asked) as rank 0 sees them. Under DDP every rank
        must take the same learning rate and stop at the same step, or the replicas drift apart or wait
        forever."""
        progress = self.progress()
        spent = self.sc.minutes is not None and time.monotonic() - t_start > self.sc.minutes * 60
        stop = self.stop.is_set()
        if self.world > 1:
            shared = torch.tensor([progress, float(spent), float(stop)], dtype=torch.float64, device=self.device)
            dist.broadcast(shared, src=0)
            progress, spent, stop = float(shared[0]), bool(shared[1]), bool(shared[2])
        return progress, spent, stop

    def _report(self, losses: list[float], t_start: float) -> None:
        if self.rank != 0:
            return
        n = len(losses)
        rate = n / max(1e-9, time.monotonic() - t_start)
        eta = (self.sc.steps - self.step) / max(rate, 1e-9)
        if self.sc.time_schedule and self.sc.minutes:
            eta = min(eta, self.sc.minutes * 60 - self.wall_s)
        wait = 100 * self.data_wait_s / max(1e-9, time.monotonic() - t_start)
        total = "" if self.sc.steps >= UNBOUNDED_STEPS else f"/{self.sc.steps}"
        print(
            f"\r[{self.sc.stage}] step {self.step}{total} loss {np.mean(losses[-20:]):.4f} "
            f"{rate:.2f} it/s (waiting for data {wait:.0f} %) ETA {eta / 60:.1f} min",
            end="\n" if self.step % 200 == 0 else "",
            file=sys.stderr,
            flush=True,
        )

    @torch.no_grad()
    def validate(self, crop: int | None) -> dict:
        was = self.model.training
        self.model.eval()
        try:
            if self.sc.stage == "router":
                correct = total = 0
                for deg, _, labels in self.val:
                    pred = self.model.route(deg.to(self.device)).logits.argmax(-1).cpu()
                    correct += int((pred == labels).sum())
                    total += len(labels)
                return {"val_acc": correct / max(total, 1)}
            vals = []
            for deg, clean, _ in self.val:
                deg, clean = deg.to(self.device), clean.to(self.device)
                prior, mix = self._prior_and_mix(deg)
                out = self.model(deg, prior, mix if self.sc.stage == "experts" else None)
                vals.append(psnr(out, clean).mean().item())
            return {"val_psnr": float(np.mean(vals))}
        finally:
            self.model.train(was)
            if self.sc.stage != "router" or self.anchor:
                self.model.router.eval()


def load_or_init(run_dir: Path, cfg: ModelConfig, seed: int) -> LoRAIR:
    path = run_dir / "model.safetensors"
    if path.is_file():
        return load_checkpoint(path)
    torch.manual_seed(seed)
    return LoRAIR(cfg)


def read_run_info(run_dir: Path) -> dict:
    """The run folder's run.json ({} if none); a damaged one is an error, not a silent fresh start."""
    path = run_dir / "run.json"
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(info, dict):
            raise ValueError("not a JSON object")
        return info
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LoraIRError(f"{path} is damaged: {exc}",
                          "restore it from a backup, or train into a new --run-dir") from exc


def write_run_info(run_dir: Path, info: dict) -> None:
    """Merges `info` into run.json, atomically: a kill mid-write leaves the previous file, not half of one."""
    p = run_dir / "run.json"
    data = read_run_info(run_dir)
    data.update(info)
    write_text(p, json.dumps(data, indent=2, default=str))


def stage_config_dict(sc: StageConfig) -> dict:
    return asdict(sc)
