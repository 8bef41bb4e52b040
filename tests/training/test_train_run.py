"""Short real training runs of a tiny config: the loss falls, a stopped run resumes exactly,
and the router learns an easy case."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lorair_desktop.cli import main
from lorair_desktop.core.checkpoint import load_checkpoint
from lorair_desktop.stop_signals import stop_on_signal
from lorair_desktop.training import degradations as D
from lorair_desktop.training import trainer

from .conftest import synthetic_photo


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # deterministic and kind to a shared 2-core machine
    yield
    torch.set_num_threads(n)


def train(cfg: Path, data: Path, run_dir: Path, stage: str, steps: int, *extra: str) -> dict:
    rc = main(["train", "--preset", str(cfg), "--stage", stage, "--data", str(data), "--steps", str(steps),
               "--batch", "4", "--context", "64", "--crop", "32", "--run-dir", str(run_dir), "--val-every", "20",
               *extra])
    assert rc == 0
    return json.loads((run_dir / "run.json").read_text())


def test_training_lowers_the_loss(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    info = train(tiny_config, photo_folder, tmp_path / "run", "base", 80)
    hist = info["stage_base"]["history"]
    losses = [h["loss"] for h in hist if "loss" in h]
    vals = [h["val_psnr"] for h in hist if "val_psnr" in h]
    assert info["stage_base"]["done"] and info["stage_base"]["step"] == 80
    # PSNR loss = 10·log10(MSE): 1.5 dB lower means 30 % less squared error.
    assert losses[-1] < losses[0] - 1.5, losses
    assert vals[-1] > vals[0], vals
    # run.json carries what the model card needs.
    assert info["recipe"]["base"]["batch"] == 4 and info["recipe"]["base"]["crop"] == 32
    assert info["hardware"]["cores"] >= 1 and info["stage_base"]["wall_s_total"] > 0
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.parametrize("stage", ["router", "base", "experts"])
def test_stop_and_resume_is_exact(
    stage: str, tiny_config: Path, photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = 30
    train(tiny_config, photo_folder, tmp_path / "full", stage, steps)
    # A fake clock (1 s per reading, ~4 readings per step) makes the time budget stop the run
    # mid-way at a reproducible step; the resume then runs on the real clock.
    clock = iter(range(10**6))
    with monkeypatch.context() as m:
        m.setattr(trainer, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
        first = train(tiny_config, photo_folder, tmp_path / "split", stage, steps, "--minutes", "0.7")
    stopped = first[f"stage_{stage}"]
    assert not stopped["done"] and 5 <= stopped["step"] <= 25, stopped
    resumed = train(tiny_config, photo_folder, tmp_path / "split", stage, steps, "--resume")
    assert resumed[f"stage_{stage}"]["step"] == steps
    # wall time adds up over sessions (the first one ran on the fake clock: whole seconds)
    assert resumed[f"stage_{stage}"]["wall_s_total"] > stopped["wall_s_total"] >= 10
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"
    # and training really changed the weights
    init = trainer.load_or_init(tmp_path / "nothing", load_checkpoint(tmp_path / "full" / "model.safetensors").cfg, 0)
    changed = [k for k, v in init.state_dict().items() if k in a and not torch.equal(v, a[k])]
    assert changed


def test_resume_refuses_without_flag(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    train(tiny_config, photo_folder, tmp_path / "run", "router", 2)
    rc = main(["train", "--preset", str(tiny_config), "--stage", "router", "--data", str(photo_folder),
               "--steps", "4", "--run-dir", str(tmp_path / "run")])
    assert rc == 2


def test_router_learns_noise_vs_haze(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    train(tiny_config, photo_folder, tmp_path / "run", "router", 150)
    model = load_checkpoint(tmp_path / "run" / "model.safetensors")
    assert model.experts == ("noise", "haze")
    correct = total = 0
    with torch.no_grad():
        for seed in range(100, 112):  # images never seen in training
            clean = synthetic_photo(seed, 96, 96).astype(np.float32) / 255.0
            rng = np.random.default_rng(seed)
            cases = [(D.add_gaussian_noise(clean, 25, rng), 0), (D.haze(clean, rng, beta=1.5, depth="vertical"), 1)]
            for img, label in cases:
                x = torch.from_numpy(D.quantize8(img).transpose(2, 0, 1).copy())[None]
                correct += int(model.route(x).logits.argmax(-1).item() == label)
                total += 1
    assert correct / total >= 0.9, f"{correct}/{total}"
    # the router stage ends by measuring its prototype priors: one per expert, told apart
    protos = model.prior_prototypes
    assert protos is not None and protos.shape == (2, model.cfg.net.prior_dim)
    assert (protos[0] - protos[1]).abs().max() > 1e-3


def test_router_from_seeds_a_new_run(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    train(tiny_config, photo_folder, tmp_path / "all", "router", 10)
    src = load_file(str(tmp_path / "all" / "model.safetensors"))
    info = train(tiny_config, photo_folder, tmp_path / "single", "all", 6, "--tasks", "noise",
                 "--router-from", str(tmp_path / "all" / "model.safetensors"))
    got = load_file(str(tmp_path / "single" / "model.safetensors"))
    router = [k for k in src if k.startswith("router.")]
    assert router and all(torch.equal(src[k], got[k]) for k in router)
    assert torch.equal(src["prior_prototypes"], got["prior_prototypes"])  # the same router: its prototypes
    assert not (tmp_path / "single" / "state-router.pt").exists()
    assert info["stage_base"]["done"] and info["stage_experts"]["done"]
    assert info["recipe"]["base"]["tasks"] == "noise" and "stage_router" not in info
    # a resumed run keeps its router (it is not seeded again) ...
    again = train(tiny_config, photo_folder, tmp_path / "single", "base", 8, "--resume", "--tasks", "noise",
                  "--router-from", str(tmp_path / "all" / "model.safetensors"))
    assert again["stage_base"]["step"] == 8
    # ... and a fresh run into a folder that holds one is refused rather than overwritten
    rc = main(["train", "--preset", str(tiny_config), "--stage", "base", "--data", str(photo_folder),
               "--router-from", str(tmp_path / "all" / "model.safetensors"), "--run-dir", str(tmp_path / "all")])
    assert rc == 2


def test_tasks_parse_and_select_validation(tiny_config: Path, photo_folder: Path) -> None:
    from lorair_desktop.errors import LoraIRError
    from lorair_desktop.training.dataset import ImageBank
    from lorair_desktop.training.train_cli import _val_batches, parse_tasks

    experts = ("noise", "haze")
    assert parse_tasks(None, experts) is None
    assert parse_tasks("noise", experts) == [1.0, 0.0]
    assert parse_tasks("haze=2.5, noise", experts) == [1.0, 2.5]
    for bad in ("rain", "noise=x", "noise=0", ",", "haze=-1"):
        with pytest.raises(LoraIRError):
            parse_tasks(bad, experts)
    bank = ImageBank.from_folder(photo_folder, "val")
    every = [lab for b in _val_batches(bank, experts, 64) for lab in b[2].tolist()]
    only_haze = _val_batches(bank, experts, 64, [0.0, 1.0])
    haze = [lab for b in only_haze for lab in b[2].tolist()]
    assert sorted(set(every)) == [0, 1] and haze == [1] * every.count(1)
    # the kept items are the very items of the full set
    full_haze = [x for b in _val_batches(bank, experts, 64, batch=1) for x in [b] if int(b[2]) == 1]
    assert torch.equal(torch.cat([b[0] for b in full_haze]), torch.cat([b[0] for b in only_haze]))


def test_batch_stream_workers_make_the_serial_batches(photo_folder: Path) -> None:
    from lorair_desktop.training.dataset import BatchStream, ImageBank, RestorationDataset, StepBatches, to_float

    bank = ImageBank.from_folder(photo_folder, "train")
    ds = RestorationDataset(bank, ("noise", "haze"), crop_size=48, length=1000, seed=3)
    serial = BatchStream(StepBatches(ds, 3, 20))
    # the workers send 8-bit batches (a quarter of the bytes); to_float gives back the very floats
    ahead = BatchStream(StepBatches(ds, 3, 20, as_uint8=True), workers=2)
    try:
        # in order, then a jump (a resumed run) and a step asked twice: the stream restarts there
        for step in (0, 1, 2, 7, 8, 8, 3):
            want, got = serial(step), ahead(step)
            assert got[0].dtype == got[1].dtype == torch.uint8
            got = (to_float(got[0]), to_float(got[1]), got[2])
            assert all(torch.equal(a, b) for a, b in zip(want, got, strict=True)), step
        assert got[0].shape == (3, 3, 48, 48) and got[2].dtype == torch.int64
    finally:
        ahead.close()
    with pytest.raises(ValueError, match="quantise"):
        StepBatches(RestorationDataset(bank, ("noise",), crop_size=48, quantize=False), 3, 20, as_uint8=True)


def test_time_schedule_ends_the_stage_annealed(
    tiny_config: Path, photo_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fake clock: 1 s per reading, so a 0.5 min budget ends after a reproducible number of steps.
    clock = iter(range(10**6))
    seen: list[float] = []
    lr_at = trainer.StageRunner.lr_at
    monkeypatch.setattr(trainer, "time", types.SimpleNamespace(monotonic=lambda: float(next(clock))))
    monkeypatch.setattr(trainer.StageRunner, "lr_at", lambda self, *a: seen.append(lr_at(self, *a)) or seen[-1])
    from lorair_desktop.training import dataset, train_cli

    datasets: list[dataset.RestorationDataset] = []

    class Recorded(dataset.RestorationDataset):  # the real dataset, remembered: what the stage trained on
        def __init__(self, *a: object, **kw: object) -> None:
            super().__init__(*a, **kw)  # type: ignore[arg-type]
            datasets.append(self)

    monkeypatch.setattr(train_cli, "RestorationDataset", Recorded)
    info = train(tiny_config, photo_folder, tmp_path / "run", "base", 100000, "--minutes", "0.5", "--time-schedule",
                 "--crops-per-context", "2", "--flat-crops", "0.5", "--val-every", "100000")
    st = info["stage_base"]
    assert st["done"] and 3 <= st["step"] < 100, st
    # warm-up rises, then the cosine falls to the floor by the end of the time budget, not of the steps
    assert max(seen) > seen[-1] and seen[-1] < 0.1 * max(seen)
    # a stage ended by its schedule is validated at its last step (the model card shows it)
    assert st["history"][-1]["step"] == st["step"] and "val_psnr" in st["history"][-1]
    assert info["recipe"]["base"]["crops_per_context"] == 2 and info["recipe"]["base"]["time_schedule"]
    assert info["recipe"]["base"]["flat_crops"] == 0.5
    assert [d.flat_keep_prob for d in datasets] == [0.5]  # --flat-crops reached the crops, not only the record
    rc = main(["train", "--preset", str(tiny_config), "--stage", "base", "--data", str(photo_folder),
               "--time-schedule", "--run-dir", str(tmp_path / "other")])
    assert rc == 2  # a time schedule needs --minutes


def test_crops_per_context_train_each_crop_with_the_context_prior(tiny_config: Path) -> None:
    from lorair_desktop.core.config import load_config

    model = trainer.load_or_init(Path("/nonexistent"), load_config(tiny_config), 0)
    sc = trainer.StageConfig(stage="base", steps=10, batch=2, crops_per_context=3)
    runner = trainer.StageRunner(model, sc, Path("/nonexistent"), lambda s: None, None, torch.device("cpu"))
    calls = []
    real_forward = model.forward
    def forward(image, prior, mix=None):
        calls.append((image.shape, prior.shape))
        return real_forward(image, prior, mix)

    model.forward = forward
    deg, clean = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    runner.loss_on(deg, clean, torch.zeros(2, dtype=torch.int64), crop=32)
    (shape, prior_shape), = calls
    assert shape == (6, 3, 32, 32) and prior_shape[0] == 6


def test_init_from_seeds_every_weight(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    train(tiny_config, photo_folder, tmp_path / "src", "base", 6)
    src = load_file(str(tmp_path / "src" / "model.safetensors"))
    got_dir = tmp_path / "fine"
    info = train(tiny_config, photo_folder, got_dir, "experts", 1, "--init-from",
                 str(tmp_path / "src" / "model.safetensors"), "--lr", "1e-12")
    got = load_file(str(got_dir / "model.safetensors"))
    # an lr of 1e-12 leaves the weights as seeded: every tensor equals the source's (LoRA experts too)
    assert src.keys() == got.keys()
    assert all(torch.allclose(src[k], got[k], atol=1e-6) for k in src)
    assert info["init_from"].endswith("model.safetensors") and info["stage_experts"]["step"] == 1
    # both seeds at once, or a seed of another preset, are refused with a clear message
    src_model = str(tmp_path / "src" / "model.safetensors")
    both = ["--preset", str(tiny_config), "--init-from", src_model, "--router-from", src_model]
    other_preset = ["--preset", "compact", "--init-from", src_model]
    for args in (both, other_preset):
        rc = main(["train", *args, "--stage", "base", "--data", str(photo_folder), "--run-dir", str(tmp_path / "bad")])
        assert rc == 2 and not (tmp_path / "bad").exists()


def test_init_from_a_lower_rank_grows_the_experts(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    """A preset of higher LoRA rank seeded from a trained model restores exactly as that model did;
    a lower rank is refused, since it would throw trained experts away."""
    from lorair_desktop.core.inference import Restorer

    train(tiny_config, photo_folder, tmp_path / "src", "experts", 4, "--lr", "1e-2")
    src_path = tmp_path / "src" / "model.safetensors"
    cfg = json.loads(tiny_config.read_text())
    grown_cfg = tmp_path / "grown.json"
    grown_cfg.write_text(json.dumps({**cfg, "lora": {**cfg["lora"], "rank": 6, "alpha": 3}}))
    rc = main(["train", "--preset", str(grown_cfg), "--stage", "experts", "--data", str(photo_folder), "--steps", "1",
               "--lr", "1e-12", "--run-dir", str(tmp_path / "grown"), "--init-from", str(src_path)])
    assert rc == 0
    src, grown = load_checkpoint(src_path), load_checkpoint(tmp_path / "grown" / "model.safetensors")
    assert grown.cfg.lora.rank == 6 and src.cfg.lora.rank == 2
    assert float(src.net.state_dict()[next(k for k in src.net.state_dict() if "lora_B" in k)].abs().sum()) > 0
    img = np.random.default_rng(3).random((40, 56, 3)).astype(np.float32)
    manual = {"noise": 0.6, "haze": 0.4}  # both experts' deltas count, not just the routed one
    a = Restorer(src, device="cpu", precision="fp32").restore(img, overrides=manual).image
    b = Restorer(grown, device="cpu", precision="fp32").restore(img, overrides=manual).image
    assert np.abs(a - b).max() < 1e-5
    shrunk_cfg = tmp_path / "shrunk.json"
    shrunk_cfg.write_text(json.dumps({**cfg, "lora": {**cfg["lora"], "rank": 1, "alpha": 2}}))
    rc = main(["train", "--preset", str(shrunk_cfg), "--stage", "experts", "--data", str(photo_folder),
               "--run-dir", str(tmp_path / "bad"), "--init-from", str(tmp_path / "grown" / "model.safetensors")])
    assert rc == 2 and not (tmp_path / "bad").exists()


def test_init_from_a_network_with_other_block_counts(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    """A faster network (full-resolution blocks left out) starts from every weight the trained one
    shares with it; a deeper one (blocks added) restores exactly as its source until trained; a
    network of another width is refused."""
    from lorair_desktop.core.inference import Restorer

    train(tiny_config, photo_folder, tmp_path / "src", "experts", 2, "--lr", "1e-2", "--full")
    src_path = tmp_path / "src" / "model.safetensors"
    cfg = json.loads(tiny_config.read_text())

    def seeded(name: str, net: dict, source: Path) -> int:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({**cfg, "net": {**cfg["net"], **net}}))
        return main(["train", "--preset", str(path), "--stage", "experts", "--data", str(photo_folder), "--steps",
                     "1", "--lr", "1e-12", "--full", "--run-dir", str(tmp_path / name), "--init-from", str(source)])

    assert seeded("lite", {"enc_blocks": [0, 1], "dec_blocks": [1, 0]}, src_path) == 0
    src, lite = load_file(str(src_path)), load_file(str(tmp_path / "lite" / "model.safetensors"))
    dropped = set(src) - set(lite)
    assert not set(lite) - set(src) and dropped
    assert all(k.startswith(("net.encoders.0.blocks.", "net.decoders.1.blocks.")) for k in dropped), dropped
    assert all(torch.allclose(src[k], lite[k], atol=1e-6) for k in lite)

    assert seeded("deep", {"middle_blocks": 3}, src_path) == 0
    deep = load_file(str(tmp_path / "deep" / "model.safetensors"))
    added = set(deep) - set(src)
    assert added and all(k.startswith(("net.middle.blocks.1.", "net.middle.blocks.2.")) for k in added), added
    img = np.random.default_rng(5).random((48, 40, 3)).astype(np.float32)
    a = Restorer(load_checkpoint(src_path), device="cpu", precision="fp32").restore(img).image
    b = Restorer(load_checkpoint(tmp_path / "deep" / "model.safetensors"), device="cpu", precision="fp32")
    assert np.abs(a - b.restore(img).image).max() < 1e-5

    assert seeded("wide", {"width": 12}, src_path) == 2 and not (tmp_path / "wide").exists()


def test_tune_base_trains_the_named_blocks_only(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    """`--tune-base` trains the experts and the base weights of the named modules (the blocks a deeper
    network added); every other base weight stays bit for bit. An unknown module, or one with --full,
    is refused before a run folder is made."""
    train(tiny_config, photo_folder, tmp_path / "src", "base", 2)
    cfg = json.loads(tiny_config.read_text())
    deep_cfg = tmp_path / "deep.json"
    deep_cfg.write_text(json.dumps({**cfg, "net": {**cfg["net"], "middle_blocks": 2}}))
    info = train(deep_cfg, photo_folder, tmp_path / "run", "experts", 6, "--lr", "3e-3", "--tune-base",
                 "middle.blocks.1", "--init-from", str(tmp_path / "src" / "model.safetensors"))
    assert info["recipe"]["experts"]["tune_base"] == ["middle.blocks.1"]
    a = load_file(str(tmp_path / "src" / "model.safetensors"))
    b = load_file(str(tmp_path / "run" / "model.safetensors"))
    scales = [k for k in b if k.startswith("net.middle.blocks.1.") and k.endswith((".beta", ".gamma"))]
    assert len(scales) == 2 and all(b[k].abs().sum() > 0 for k in scales)  # the added block learnt (from 0)
    for k in a:
        if k.startswith("net.") and ".lora_" not in k:
            assert torch.equal(a[k], b[k]), k  # the source's base: untouched
    assert any(not torch.equal(a[k], b[k]) for k in a if ".lora_" in k)  # the experts learnt
    for bad in (["--tune-base", "middle.blocks.7"], ["--tune-base", "middle", "--full"],
                ["--tune-base", "middle", "--stage", "base"]):
        rc = main(["train", "--preset", str(deep_cfg), "--stage", "experts", "--data", str(photo_folder),
                   "--run-dir", str(tmp_path / "bad"), *bad])
        assert rc == 2 and not (tmp_path / "bad").exists(), bad


def test_one_trainer_per_run_folder(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    """A second `lorair train` on a folder another live process trains in is refused, leaving the
    folder as it was; once that process is gone (however it ended), training proceeds."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    train(tiny_config, photo_folder, run_dir, "base", 2)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from lorair_desktop.single_instance import single_instance\n"
         "with single_instance(Path(sys.argv[1])) as mine:\n print(mine, flush=True); time.sleep(120)",
         str(run_dir / "train.lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "True"
        before = (run_dir / "model.safetensors").read_bytes()
        rc = main(["train", "--preset", str(tiny_config), "--stage", "base", "--data", str(photo_folder),
                   "--steps", "4", "--batch", "4", "--context", "64", "--crop", "32", "--run-dir", str(run_dir),
                   "--resume"])
        assert rc == 2
        assert (run_dir / "model.safetensors").read_bytes() == before
    finally:
        holder.kill()  # killed, not closed: the OS drops its lock all the same
        holder.wait()
    info = train(tiny_config, photo_folder, run_dir, "base", 4, "--resume")
    assert info["stage_base"]["step"] == 4


def _signal_at_step(monkeypatch: pytest.MonkeyPatch, at: int, times: int, sig: int) -> None:
    """Sends this process `sig` `times` times while the trainer prepares its `at`-th step of this session
    (counted from 0), as a user's Ctrl-C or a `kill` would."""
    real, calls = trainer.to_float, iter(range(10**6))

    def to_float(t: torch.Tensor) -> torch.Tensor:
        if next(calls) == 2 * at:  # two calls per step: degraded, clean
            for _ in range(times):
                os.kill(os.getpid(), sig)
        return real(t)

    monkeypatch.setattr(trainer, "to_float", to_float)


def test_ctrl_c_saves_and_resumes_exactly(
    tiny_config: Path,
    photo_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The first SIGTERM (or Ctrl-C) finishes the step, saves and exits 130 with the resume command.
    That command, which names none of the run's options, continues with the recorded ones (data,
    --full, tasks, lr, crops...) to the weights of a run never stopped. A second signal aborts at once."""
    opts = ["--full", "--tasks", "noise=2,haze", "--lr", "3e-4", "--crops-per-context", "2", "--seed", "5"]
    train(tiny_config, photo_folder, tmp_path / "full", "experts", 12, *opts)
    args = ["train", "--preset", str(tiny_config), "--stage", "experts", "--data", str(photo_folder),
            "--steps", "12", "--batch", "4", "--context", "64", "--crop", "32", "--val-every", "20", *opts]
    with monkeypatch.context() as m:
        _signal_at_step(m, 5, 1, signal.SIGTERM)
        assert main([*args, "--run-dir", str(tmp_path / "split")]) == 130
    stopped = json.loads((tmp_path / "split" / "run.json").read_text())["stage_experts"]
    assert stopped["interrupted"] and not stopped["done"] and stopped["step"] == 6, stopped
    assert torch.load(tmp_path / "split" / "state-experts.pt", weights_only=True)["step"] == 6
    hint = capsys.readouterr().out.strip().splitlines()[-1]
    assert hint.endswith(f"--stage experts --resume --run-dir {tmp_path / 'split'}"), hint
    shutil.copytree(tmp_path / "split", tmp_path / "abort")
    resume = hint[hint.index("lorair train ") + len("lorair train "):].split()
    assert main(["train", *resume]) == 0
    restored = capsys.readouterr().err
    assert f"--data {photo_folder}" in restored and "--full" in restored and "--tasks noise=2,haze" in restored
    resumed = json.loads((tmp_path / "split" / "run.json").read_text())["stage_experts"]
    assert resumed["step"] == 12 and resumed["done"] and not resumed["interrupted"]
    a = load_file(str(tmp_path / "full" / "model.safetensors"))
    b = load_file(str(tmp_path / "split" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # An option given again wins over the recorded one; one the saved state cannot take is refused.
    assert main(["train", *resume, "--no-full"]) == 2
    assert "another set of parameters" in capsys.readouterr().err
    # Twice: abort now (the KeyboardInterrupt is main's 130); the folder keeps its last checkpoint.
    with monkeypatch.context() as m:
        _signal_at_step(m, 2, 2, signal.SIGINT)
        assert main([*args, "--run-dir", str(tmp_path / "abort"), "--resume"]) == 130
    assert torch.load(tmp_path / "abort" / "state-experts.pt", weights_only=True)["step"] == 6
    # and the process's own handlers are back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no hang-up signal on this platform")
def test_a_hang_up_saves_like_ctrl_c_unless_started_under_nohup() -> None:
    """A closed terminal (SIGHUP) stops the run cleanly; `nohup lorair train` keeps ignoring it."""
    before = signal.getsignal(signal.SIGHUP)
    with stop_on_signal() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.wait(2.0)
    assert signal.getsignal(signal.SIGHUP) == before
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_on_signal() as stop:
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)
            assert not stop.wait(0.2)
    finally:
        signal.signal(signal.SIGHUP, before)


def test_resume_options_come_from_the_recipe(tmp_path: Path) -> None:
    """Given options win; left out, a resumed stage takes its recorded ones, a new stage the defaults;
    a resumed time schedule keeps its length; a damaged run.json is refused."""
    from lorair_desktop.errors import LoraIRError
    from lorair_desktop.training.dataset import FLAT_KEEP_PROB
    from lorair_desktop.training.train_cli import add_arguments, stage_options

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    recipe = {"steps": 900, "lr": 2e-4, "full": True, "bf16": True, "tasks": "all", "time_schedule": True,
              "minutes": 45.5, "mixed": 0.2, "crops_per_context": 2, "seed": 3, "batch": 8, "flat_crops": 0.4}
    o = stage_options(parser.parse_args(["--lr", "1e-4", "--no-bf16"]), "experts", recipe, 1.0)
    assert (o.lr, o.bf16, o.full, o.steps, o.tasks, o.mixed, o.crops_per_context, o.seed, o.flat_crops) == (
        1e-4, False, True, 900, None, 0.2, 2, 3, 0.4)
    assert "--flat-crops 0.4" in o.restored
    assert o.time_schedule and o.minutes == 45.5 and "--minutes 45.5" in o.restored and "--full" in o.restored
    fresh = stage_options(parser.parse_args([]), "experts", None, 1.0)
    assert (fresh.full, fresh.bf16, fresh.seed, fresh.mixed, fresh.crops_per_context, fresh.restored) == (
        False, False, 0, 0.0, 1, [])
    assert fresh.flat_crops == FLAT_KEEP_PROB
    tuned = {**recipe, "full": False, "tune_base": ["middle.blocks.2"]}
    grown = stage_options(parser.parse_args([]), "experts", tuned, 1.0)
    assert grown.tune_base == ("middle.blocks.2",) and "--tune-base middle.blocks.2" in grown.restored
    with pytest.raises(LoraIRError, match="--flat-crops"):
        stage_options(parser.parse_args(["--flat-crops", "1.5"]), "experts", None, 1.0)
    assert stage_options(parser.parse_args(["--minutes", "10"]), "base", recipe, 0.5).minutes == 5.0
    with pytest.raises(LoraIRError, match="--minutes"):
        stage_options(parser.parse_args(["--time-schedule"]), "base", None, 1.0)
    # a time budget without --steps is the whole budget, not the stage's default step count
    timed = ["--minutes", "30", "--time-schedule"]
    assert stage_options(parser.parse_args(timed), "experts", None, 1.0).steps == trainer.UNBOUNDED_STEPS
    assert stage_options(parser.parse_args([*timed, "--steps", "500"]), "experts", None, 1.0).steps == 500
    assert stage_options(parser.parse_args(["--minutes", "30"]), "experts", None, 1.0).steps == 1000
    (tmp_path / "run.json").write_text("{truncated")
    with pytest.raises(LoraIRError, match="damaged"):
        trainer.read_run_info(tmp_path)


def test_training_with_workers_equals_training_without(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    train(tiny_config, photo_folder, tmp_path / "serial", "experts", 5, "--workers", "0", "--crops-per-context", "2")
    train(tiny_config, photo_folder, tmp_path / "ahead", "experts", 5, "--workers", "2", "--crops-per-context", "2")
    a = load_file(str(tmp_path / "serial" / "model.safetensors"))
    b = load_file(str(tmp_path / "ahead" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_ddp_ranks_train_on_their_own_batches(photo_folder: Path) -> None:
    from lorair_desktop.training.dataset import ImageBank, RestorationDataset, StepBatches

    ds = RestorationDataset(ImageBank.from_folder(photo_folder, "train"), ("noise", "haze"), crop_size=32, seed=5)
    single = StepBatches(ds, 2, 10)
    ranks = [StepBatches(ds, 2, 10, rank=r, world=2) for r in range(2)]
    # rank r at step s takes the batch a single process would draw at step 2s + r: none shared, none lost
    for step in range(3):
        for r in range(2):
            assert all(torch.equal(a, b) for a, b in zip(ranks[r][step], single[2 * step + r], strict=True))
    assert not torch.equal(ranks[0][0][0], ranks[1][0][0])
    with pytest.raises(ValueError):
        StepBatches(ds, 2, 10, rank=2, world=2)


@pytest.mark.slow
def test_torchrun_two_processes(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    import shutil
    import subprocess
    import sys

    # the child processes learn the tiny test tower from a resources folder (LORAIR_RESOURCES)
    towers = tmp_path / "res" / "model_configs" / "clip"
    shutil.copytree(tiny_config.parent / "clip", towers)
    run_dir = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lorair_desktop.cli", "train", "--preset", str(tiny_config), "--stage", "experts", "--data",
           str(photo_folder), "--steps", "4", "--batch", "2", "--context", "64", "--crop", "32", "--run-dir",
           str(run_dir), "--val-every", "100", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LORAIR_RESOURCES": str(tmp_path / "res")}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads((run_dir / "run.json").read_text())  # one writer: a whole, valid file
    assert info["stage_experts"]["done"] and info["stage_experts"]["step"] == 4
    assert proc.stdout.count("run folder:") == 1  # rank 0 alone reports
    # a stage on a time budget: every rank stops at rank 0's step (a rank left behind would wait forever)
    timed = [*cmd[:8], "train", "--preset", str(tiny_config), "--stage", "base", "--data", str(photo_folder),
             "--steps", "100000", "--minutes", "0.1", "--time-schedule", "--batch", "2", "--context", "64",
             "--crop", "32", "--run-dir", str(run_dir), "--resume", "--val-every", "100000", "--threads", "1"]
    proc = subprocess.run(timed, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    base = json.loads((run_dir / "run.json").read_text())["stage_base"]
    assert base["done"] and 0 < base["step"] < 100000 and "val_psnr" in base["history"][-1]


def test_default_workers_share_the_spare_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from lorair_desktop.training import train_cli

    monkeypatch.setattr(train_cli.os, "cpu_count", lambda: 16)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert train_cli.default_workers(cpu) == 0  # on a CPU the cores train
    assert train_cli.default_workers(cuda) == 15  # one GPU: every core but the trainer's
    assert train_cli.default_workers(cuda, 4) == 3  # four trainer processes share the other 12
    monkeypatch.setattr(train_cli.os, "cpu_count", lambda: 2)
    assert train_cli.default_workers(cuda, 8) == 1


def test_router_trained_with_mixed_pairs_shares_a_pair_between_both(
    tiny_config: Path, photo_folder: Path, tmp_path: Path
) -> None:
    info = train(tiny_config, photo_folder, tmp_path / "run", "router", 150, "--mixed", "0.4")
    assert info["recipe"]["router"]["mixed"] == 0.4
    model = load_checkpoint(tmp_path / "run" / "model.safetensors")
    single_ok = shares = 0
    with torch.no_grad():
        for seed in range(100, 112):  # images never seen in training
            clean = synthetic_photo(seed, 96, 96).astype(np.float32) / 255.0
            rng = np.random.default_rng(seed)
            hazy = D.haze(clean, rng, beta=1.5, depth="vertical")
            cases = [(D.add_gaussian_noise(clean, 25, rng), 0), (hazy, 1), (D.add_gaussian_noise(hazy, 25, rng), None)]
            for img, label in cases:
                x = torch.from_numpy(D.quantize8(img).transpose(2, 0, 1).copy())[None]
                p = model.route(x).logits.softmax(-1)[0]
                if label is None:
                    shares += int(p.min() >= 0.2)  # both experts take part
                else:
                    single_ok += int(p.argmax() == label)
    assert single_ok >= 20, f"{single_ok}/24 single degradations"
    assert shares >= 8, f"{shares}/12 hazy and noisy images use both experts"


def test_mixed_is_checked(tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    base = ["train", "--preset", str(tiny_config), "--stage", "router", "--data", str(photo_folder), "--steps", "2"]
    assert main([*base, "--run-dir", str(tmp_path / "a"), "--mixed", "1.5"]) == 2
    assert main([*base, "--run-dir", str(tmp_path / "b"), "--mixed", "0.3", "--tasks", "noise"]) == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_experts_left_out_of_tasks_stay_exactly_as_they_were(tiny_config: Path, photo_folder: Path,
                                                             tmp_path: Path) -> None:
    """`--tasks noise` on the experts stage trains the noise expert only: the router's top-2 mix gives
    others a small weight now and then, and Adam would turn that into full steps (measured: a
    jpeg-only run cost the other experts 2-6 dB). Their LoRA slices stay bit for bit."""
    train(tiny_config, photo_folder, tmp_path / "start", "base", 2)
    start = tmp_path / "start" / "model.safetensors"
    info = train(tiny_config, photo_folder, tmp_path / "run", "experts", 6, "--init-from", str(start),
                 "--tasks", "noise", "--lr", "3e-3")
    a, b = load_file(str(start)), load_file(str(tmp_path / "run" / "model.safetensors"))
    lora = [k for k in a if ".lora_" in k]
    assert info["recipe"]["experts"]["frozen_experts"] == [1]  # the tiny preset's experts: noise, haze
    assert any(not torch.equal(a[k][0], b[k][0]) for k in lora)  # the noise expert learnt
    for k in lora:
        assert torch.equal(a[k][1], b[k][1]), k  # haze: untouched


def test_freeze_experts_keeps_an_expert_whose_crops_still_train_the_others(
        tiny_config: Path, photo_folder: Path, tmp_path: Path) -> None:
    """`--tasks noise,haze --freeze-experts haze`: hazy crops are drawn and train the noise expert
    wherever the router mixes it in, while the haze expert stays bit for bit."""
    train(tiny_config, photo_folder, tmp_path / "start", "base", 2)
    start = tmp_path / "start" / "model.safetensors"
    common = ("--init-from", str(start), "--lr", "3e-3", "--seed", "5")
    info = train(tiny_config, photo_folder, tmp_path / "frozen", "experts", 6, *common,
                 "--tasks", "noise,haze", "--freeze-experts", "haze")
    alone = tmp_path / "alone"
    train(tiny_config, photo_folder, alone, "experts", 6, *common, "--tasks", "noise")
    a, b = load_file(str(start)), load_file(str(tmp_path / "frozen" / "model.safetensors"))
    c = load_file(str(alone / "model.safetensors"))
    lora = [k for k in a if ".lora_" in k]
    recipe = info["recipe"]["experts"]
    assert recipe["frozen_experts"] == [1] and recipe["freeze_experts"] == ["haze"]
    for k in lora:
        assert torch.equal(a[k][1], b[k][1]), k  # haze: untouched though its crops were drawn
    assert any(not torch.equal(a[k][0], b[k][0]) for k in lora)  # the noise expert learnt
    assert any(not torch.equal(b[k][0], c[k][0]) for k in lora)  # and on other data than noise alone


def test_freeze_experts_is_checked(tiny_config: Path, photo_folder: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    base = ["train", "--preset", str(tiny_config), "--data", str(photo_folder), "--steps", "2"]
    cases = [
        (["--stage", "experts", "--freeze-experts", "jpeg"], "unknown expert 'jpeg'"),
        (["--stage", "experts", "--freeze-experts", "noise,haze"], "nothing is left to train"),
        (["--stage", "experts", "--tasks", "noise", "--freeze-experts", "noise"], "nothing is left to train"),
        (["--stage", "base", "--freeze-experts", "haze"], "--freeze-experts is for the experts stage"),
    ]
    for i, (extra, message) in enumerate(cases):
        assert main([*base, "--run-dir", str(tmp_path / str(i)), *extra]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / str(i)).exists()
