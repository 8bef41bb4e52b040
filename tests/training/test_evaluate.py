"""Metrics, classical baselines and `lorair eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from lorair_desktop.cli import main
from lorair_desktop.training import baselines as B
from lorair_desktop.training import degradations as D
from lorair_desktop.training.evaluate import EVAL_ROWS, MIXED_ROWS, exposure_matched, psnr, ssim, targets

from .conftest import synthetic_photo


def photo(seed: int = 0, size: int = 96) -> np.ndarray:
    return synthetic_photo(seed, size, size).astype(np.float32) / 255.0


def ssim_reference(a: np.ndarray, b: np.ndarray) -> float:
    """Textbook SSIM (Wang et al. 2004) written independently with scipy's Gaussian filter
    (σ 1.5, truncate 3.5 → 11 taps, reflect borders), per channel, valid region."""
    c1, c2 = 0.01**2, 0.03**2
    out = []
    for ch in range(a.shape[2]):
        x, y = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)

        def g(v: np.ndarray) -> np.ndarray:
            return ndimage.gaussian_filter(v, 1.5, truncate=3.5, mode="reflect")

        mx, my = g(x), g(y)
        sxx, syy, sxy = g(x * x) - mx**2, g(y * y) - my**2, g(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        out.append(s[5:-5, 5:-5].mean())
    return float(np.mean(out))


def test_psnr_and_ssim() -> None:
    x = photo()
    assert psnr(x, x) == 100.0 and ssim(x, x) == pytest.approx(1.0)
    assert psnr(np.clip(x + 0.1, 0, 2), x) == pytest.approx(20.0, abs=0.6)  # clipping aside: MSE 0.01
    assert psnr(np.full((8, 8, 3), 0.6), np.full((8, 8, 3), 0.5)) == pytest.approx(20.0)
    y = D.add_gaussian_noise(x, 25, np.random.default_rng(0))
    assert ssim(y, x) == pytest.approx(ssim_reference(y, x), abs=1e-7)
    assert ssim(y, x) == pytest.approx(ssim(x, y))
    z = D.add_gaussian_noise(x, 50, np.random.default_rng(0))
    assert ssim(z, x) < ssim(y, x) < 0.99
    with pytest.raises(ValueError):
        ssim(x, x[:-1])


def test_exposure_matching_undoes_a_global_gain_only() -> None:
    x = photo() * 0.9
    assert psnr(exposure_matched(x * 0.6, x), x) > 60  # a pure exposure error vanishes
    assert float(exposure_matched(x * 0.6, x).mean()) == pytest.approx(float(x.mean()), rel=1e-5)
    noisy = D.add_gaussian_noise(x, 25, np.random.default_rng(0))
    assert psnr(exposure_matched(noisy * 0.6, x), x) < 25  # ... but no restoration error
    assert exposure_matched(np.zeros_like(x), x).max() == 0  # a black output stays black, no division by 0
    assert [r.name for r in EVAL_ROWS if r.exposure_matched] == ["low-light"]


def test_wiener_with_the_true_kernel_deblurs() -> None:
    x = photo(1, 128)
    y, k = D.gaussian_blur(x, 2.0, np.random.default_rng(0), noise_sigma255=1.0)
    y = D.quantize8(y)
    out, nsr = B.wiener_oracle(y, x, k)
    assert psnr(out, x) > psnr(y, x) + 1.5
    assert nsr in B.WIENER_NSR_GRID and out.shape == x.shape and out.dtype == np.float32
    # noise-free, unquantised: almost exact inversion with a tiny NSR
    y0, _ = D.gaussian_blur(x, 1.0)
    assert psnr(B.wiener_deconvolve(y0, D.gaussian_kernel(1.0), 1e-5), x) > psnr(y0, x) + 8


def test_dark_channel_prior_dehazes() -> None:
    x = photo(2, 128) * 0.8  # DCP assumes dark pixels in haze-free patches
    hazy = D.quantize8(D.haze(x, np.random.default_rng(0), beta=1.6, airlight=0.9, depth="vertical"))
    out = B.dehaze_dcp(hazy)
    assert psnr(out, x) > psnr(hazy, x) + 3
    a = B.estimate_airlight(hazy, B.dark_channel(hazy))
    assert np.all(np.abs(a - 0.9) < 0.15)


def test_rows_cover_every_expert_and_targets_read_them() -> None:
    assert {r.expert for r in EVAL_ROWS} == set(D.EXPERTS)
    assert [r.name for r in MIXED_ROWS] == ["haze+noise", "blur+jpeg"]
    rows = [{"row": "jpeg q10", "input": {"psnr": 30.0}, "model": {"psnr": 32.5}},
            {"row": "noise σ25", "input": {"psnr": 20.0}, "model": {"psnr": 31.0},
             "baseline": {"name": "CBM3D", "psnr": 31.0}}]
    t = {x["target"]: x for x in targets(rows, {"top1": 0.96})}
    assert t["jpeg q10: model − input"]["met"] is True
    assert t["noise σ25: model − CBM3D"]["met"] is False  # 0 dB < 0.3 dB
    assert t["noise σ15: model − CBM3D"]["met"] is None  # not measured
    assert t["router top-1 accuracy"]["met"] is True


def run_eval(model: Path, data: Path, out: Path, *extra: str) -> dict:
    rc = main(["eval", "--model", str(model), "--data", str(data), "--split", "all", "--crop", "64",
               "--out", str(out), "--threads", "1", "--device", "cpu", *extra])
    assert rc == 0
    return json.loads((out / "eval.json").read_text())


def test_eval_cli_quick(small_model_path: Path, photo_folder: Path, tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    report = run_eval(small_model_path, photo_folder, tmp_path / "ev", "--quick")
    printed = capsys.readouterr().out
    assert "| noise σ25 |" in printed and "router top-1" in printed.lower()
    md = (tmp_path / "ev" / "eval.md").read_text()
    assert md.startswith("## ") and "| worst crop dB |" in md
    assert "low-light: " in md and "exposure matched to the photo" in md
    assert len(report["data"]["images"]) == 3
    assert [r["row"] for r in report["rows"]] == [r.name for r in EVAL_ROWS + MIXED_ROWS]
    for r in report["rows"]:
        assert r["n"] == 3 and 0 < r["input"]["ssim"] <= 1 and np.isfinite(r["model"]["psnr"])
        assert sum(r["routed"].values()) == 3 and "baseline" not in r
        assert ("exposure_matched" in r) == (r["row"] == "low-light")
        # the worst crop's gain bounds the mean gain from below (a crop made worse cannot hide in the mean)
        assert r["worst_gain"] <= r["model"]["psnr"] - r["input"]["psnr"] + 1e-9
        # every crop's own numbers are kept, named by photo, and the worst one is named
        crops = r["crops"]
        assert [c["image"] for c in crops] == report["data"]["images"] and all(c["crop"] == 0 for c in crops)
        assert np.mean([c["model"] for c in crops]) == pytest.approx(r["model"]["psnr"])
        assert r["worst_gain"] == pytest.approx(min(c["model"] - c["input"] for c in crops))
        assert r["worst_crop"] in crops
        for c in crops:  # the mix really applied: shares of the model's experts, summing to one
            assert set(c["mix"]) <= set(report["router"]["predicted"])
            assert sum(c["mix"].values()) == pytest.approx(1, abs=2e-3)
        assert max(r["routed"], key=r["routed"].get) in {max(c["mix"], key=c["mix"].get) for c in crops}
    lost = [r for r in report["rows"] if r["worst_gain"] < 0]
    for r in lost:  # the random test model makes some crops worse: the report names them
        assert f"- {r['row']}: {r['worst_crop']['image']} crop 0, {r['worst_gain']:+.2f} dB, mixed " in md
    assert lost or "Worst crop of each row" not in md
    router = report["router"]
    assert router["n"] == 3 * 2 * 6 and np.array(router["confusion"]).sum() == router["n"]
    assert 0 <= router["top1"] <= 1
    assert report["model"]["sha256"] and report["hardware"]["cores"] >= 1


def test_eval_forced_restores_each_row_with_its_own_experts(small_model_path: Path, photo_folder: Path,
                                                           tmp_path: Path) -> None:
    report = run_eval(small_model_path, photo_folder, tmp_path / "ev", "--images", "2", "--router-crops", "1",
                      "--forced")
    assert report["data"]["forced"] is True
    by = {r["row"]: r for r in report["rows"]}
    assert by["jpeg q30"]["forced"]["mix"] == {"jpeg": 1.0}
    assert by["blur+jpeg"]["forced"]["mix"] == {"blur": 0.5, "jpeg": 0.5}
    for r in report["rows"]:
        f = r["forced"]
        assert np.isfinite(f["psnr"]) and 0 < f["ssim"] <= 1
        assert f["worst_gain"] <= f["psnr"] - r["input"]["psnr"] + 1e-9
        assert 0 <= f["overruled"] <= 1
    assert by["jpeg q30"]["forced"]["overruled"] == 1 - by["jpeg q30"]["routed"].get("jpeg", 0) / 2
    md = (tmp_path / "ev" / "eval.md").read_text()
    assert "| forced mix |" in md and "| blur+jpeg | blur 0.5, jpeg 0.5 |" in md


def test_eval_cli_baselines(small_model_path: Path, photo_folder: Path, tmp_path: Path) -> None:
    report = run_eval(small_model_path, photo_folder, tmp_path / "ev", "--images", "1", "--baselines",
                      "--router-crops", "1")
    by = {r["row"]: r for r in report["rows"]}
    assert by["noise σ15"]["baseline"]["name"] == "CBM3D"
    assert by["blur σ2"]["baseline"]["name"] == "Wiener" and by["haze"]["baseline"]["name"] == "DCP"
    assert "baseline" not in by["rain"] and "baseline" not in by["jpeg q10"]
    # the baselines really restore (the random test model need not)
    for row in ("noise σ25", "noise σ50", "blur σ2"):
        assert by[row]["baseline"]["psnr"] > by[row]["input"]["psnr"] + 1, row
    t = {x["target"]: x for x in report["targets"]}
    assert t["noise σ25: model − CBM3D"]["value"] is not None
    # 'fast': every baseline but CBM3D (minutes per whole photo), the same numbers for the others
    fast = run_eval(small_model_path, photo_folder, tmp_path / "fast", "--images", "1", "--baselines", "fast",
                    "--router-crops", "1")
    fby = {r["row"]: r for r in fast["rows"]}
    assert all("baseline" not in fby[f"noise σ{s}"] for s in (15, 25, 50))
    for row in ("blur σ2", "haze"):
        assert fby[row]["baseline"]["psnr"] == by[row]["baseline"]["psnr"], row


def test_eval_compare_reports_the_change_per_row_and_refuses_other_crops(
        small_model_path: Path, photo_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lorair_desktop.core import save_checkpoint
    from lorair_desktop.training import eval_compare as C
    from tests.conftest import make_random_model

    other = tmp_path / "other.safetensors"
    save_checkpoint(make_random_model(seed=1), other)
    opts = ("--images", "2", "--router-crops", "1")
    before = run_eval(small_model_path, photo_folder, tmp_path / "a", *opts)
    after = run_eval(other, photo_folder, tmp_path / "b", *opts, "--compare", str(tmp_path / "a" / "eval.json"))
    cmp = after["compare"]
    assert [r["row"] for r in cmp["rows"]] == [r["row"] for r in after["rows"]] and not cmp["missing"]
    for c, a, b in zip(cmp["rows"], before["rows"], after["rows"], strict=True):
        assert c["delta"] == pytest.approx(b["model"]["psnr"] - a["model"]["psnr"])
        assert (c["worst_before"], c["worst_after"]) == (a["worst_gain"], b["worst_gain"])
    assert any(abs(c["delta"]) > 1e-3 for c in cmp["rows"])  # two random models do differ
    # the crops that moved more than CROP_CHANGE_DB are named, each paired with the same crop before
    by_a, by_b = {r["row"]: r for r in before["rows"]}, {r["row"]: r for r in after["rows"]}
    expected = sorted(
        (b["model"] - a["model"], row, b["image"])
        for row in by_b for a, b in zip(by_a[row]["crops"], by_b[row]["crops"], strict=True)
        if abs(b["model"] - a["model"]) > C.CROP_CHANGE_DB)
    assert [(c["row"], c["image"]) for c in cmp["crops"]] == [(row, image) for _, row, image in expected]
    assert [c["delta"] for c in cmp["crops"]] == pytest.approx([d for d, _, _ in expected])
    assert expected, "two random models move some crop by more than half a dB"
    worst = cmp["crops"][0]
    assert f"- {worst['row']}: {worst['image']} crop 0 {worst['delta']:+.2f} dB" in C.compare_markdown(cmp)
    assert cmp["before"]["sha256"] == before["model"]["sha256"] != cmp["after"]["sha256"]
    assert "against" in (tmp_path / "b" / "eval.md").read_text()
    capsys.readouterr()
    # the two files compared alone give the same table
    assert C.main([str(tmp_path / "a" / "eval.json"), str(tmp_path / "b" / "eval.json")]) == 0
    assert C.compare_markdown(cmp) == capsys.readouterr().out
    # other crops (another seed) are refused before anything runs, naming the setting
    rc = main(["eval", "--model", str(other), "--data", str(photo_folder), "--split", "all", "--crop", "64",
               "--out", str(tmp_path / "c"), "--device", "cpu", *opts, "--seed", "3",
               "--compare", str(tmp_path / "a" / "eval.json")])
    assert rc == 2 and "seed 0 vs 3" in capsys.readouterr().err
    assert not (tmp_path / "c" / "eval.json").exists()
    (tmp_path / "bad.json").write_text('{"rows": 3}')
    assert C.main([str(tmp_path / "bad.json"), str(tmp_path / "b" / "eval.json")]) == 2
    assert "not a `lorair eval` report" in capsys.readouterr().err


def test_eval_whole_photos(small_model_path: Path, photo_folder: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    """--crop 0 restores each photo whole (one per image, the router's matrix too): on these 160²
    photos, the very rows a 160² crop gives."""
    whole = run_eval(small_model_path, photo_folder, tmp_path / "whole", "--images", "2", "--crop", "0",
                     "--crops-per-image", "3")
    crop = run_eval(small_model_path, photo_folder, tmp_path / "crop", "--images", "2", "--crop", "160",
                    "--router-crops", "1")
    assert whole["data"]["crop"] == 0 and whole["data"]["crops_per_image"] == 1
    assert whole["router"]["n"] == 2 * 6 and whole["router"]["confusion"] == crop["router"]["confusion"]
    for a, b in zip(whole["rows"], crop["rows"], strict=True):
        assert a["n"] == 2 and a["input"] == b["input"] and a["model"] == b["model"], a["row"]
    assert "2 whole photos" in (tmp_path / "whole" / "eval.md").read_text()
    capsys.readouterr()
    assert main(["eval", "--model", str(small_model_path), "--data", str(photo_folder), "--crop", "8"]) == 2
    assert "--crop 8 is not a crop side" in capsys.readouterr().err


def test_eval_compare_pairs_crops_only_when_they_are_the_same_and_reads_odd_mixes_safely() -> None:
    from lorair_desktop.training import eval_compare as C

    def report(crops: list) -> dict:
        row = {"row": "haze", "model": {"psnr": 20.0}, "input": {"psnr": 12.0}, "crops": crops}
        return {"data": {"seed": 0}, "rows": [row]}

    a = [{"image": "a.jpg", "crop": 0, "input": 12.0, "model": 20.0, "mix": {"haze": 1.0}},
         {"image": "b.jpg", "crop": 0, "input": 12.0, "model": 20.0, "mix": {"haze": 1.0}}]
    b = [{"image": "a.jpg", "crop": 0, "input": 12.0, "model": 18.0, "mix": {"haze": "x", "jpeg": 0.2}},
         {"image": "b.jpg", "crop": 0, "input": 12.0, "model": 20.3, "mix": "haze"}]
    cmp = C.compare(report(a), report(b))
    assert [(c["image"], c["delta"]) for c in cmp["crops"]] == [("a.jpg", -2.0)]  # b.jpg moved 0.3 dB only
    assert cmp["crops"][0]["mix_after"] == {"jpeg": 0.2}  # a share that is not a number is left out
    assert "- haze: a.jpg crop 0 -2.00 dB (gain +8.00 → +6.00; mixed haze 1.00 → jpeg 0.20)" in C.compare_markdown(cmp)
    # other crops in the same places (or another count) are not paired at all
    assert C.compare(report(a), report(b[::-1]))["crops"] == []
    assert C.compare(report(a), report(b[:1]))["crops"] == []
