"""The Krita plugin end to end inside real Krita 5 (Debian 12), against a real worker.

Krita's GUI runs under Xvfb (kritarunner has no windows, hence no actions and no undo). The plugin is
installed with `lorair plugins install krita` into a private XDG data folder and enabled in a private
kritarc; a test-only harness plugin (krita_harness.py) then drives it through Krita's own action and
records what Krita shows. The worker is started here and found by the plugin through
$LORAIR_RUNTIME_DIR.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lorair_desktop.bridge import ExpertSpec, JobRequest
from lorair_desktop.worker.pixels import srgb_decode

from .hosts import ensure_krita, log_tail, run_group
from .support import RunningWorker, blend_reference, install_plugin, kill_runtime_worker, region

pytestmark = pytest.mark.krita

W, H = 128, 96
MARGIN = 8
HARNESS = Path(__file__).with_name("krita_harness.py")
DESKTOP = """[Desktop Entry]
Type=Service
ServiceTypes=Krita/PythonPlugin
X-KDE-Library=lorair_test_harness
X-Python-2-Compatible=false
Name=LoRA-IR test harness
Comment=Drives the LoRA-IR plugin in the tests
"""


def _img(data: str, channels: int) -> np.ndarray:
    arr = np.frombuffer(base64.b64decode(data), np.uint8)
    return arr.reshape((H, W, channels) if channels > 1 else (H, W))


@pytest.fixture(scope="module")
def krita_run(plugin_worker: RunningWorker, small_model_path: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    ensure_krita()
    base = tmp_path_factory.mktemp("krita")
    # The recorded worker command is what the plugin runs when no worker is up (the autostart case).
    worker_cmd = f"{sys.executable} -m lorair_desktop.cli worker --model {small_model_path} --idle-exit 1"
    pykrita = install_plugin("krita", base / "data" / "krita" / "pykrita", "--worker-command", worker_cmd)
    (pykrita / "lorair_test_harness").mkdir()
    shutil.copy(HARNESS, pykrita / "lorair_test_harness" / "__init__.py")
    (pykrita / "lorair_test_harness.desktop").write_text(DESKTOP)
    (base / "config").mkdir()
    # Krita reads plugin switches and the plugin's own settings (a JSON string) from kritarc.
    (base / "config" / "kritarc").write_text(
        "[python]\nenable_lorair_krita=true\nenable_lorair_test_harness=true\n\n"
        f'[lorair]\nsettings={{"margin": {MARGIN}}}\n')
    (base / "empty-runtime").mkdir(mode=0o700)
    autostart = base / "autostart-runtime"
    out = base / "out.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QT_", "PYTHON", "VIRTUAL_ENV"))}
    env.update({"XDG_DATA_HOME": str(base / "data"), "XDG_CONFIG_HOME": str(base / "config"),
                "XDG_CACHE_HOME": str(base / "cache"), "HOME": str(base),
                "LORAIR_RUNTIME_DIR": str(plugin_worker.runtime_dir), "LORAIR_HARNESS_OUT": str(out),
                "LORAIR_HARNESS_EMPTY_RUNTIME": str(base / "empty-runtime"),
                "LORAIR_HARNESS_AUTOSTART_RUNTIME": str(autostart)})
    env.pop("LORAIR_WORKER_CMD", None)
    log = base / "krita.log"
    try:
        rc = run_group(["xvfb-run", "-a", "krita", "--nosplash"], env, timeout=600, log=log, cwd=base)
        assert out.is_file(), f"the harness wrote nothing (exit {rc}); Krita's log:\n{log_tail(log)}"
        data = json.loads(out.read_text())
        assert "error" not in data, data["error"]
        data["autostart_runtime"] = str(autostart)
        data["autostart_info"] = json.loads((autostart / "worker.json").read_text()) \
            if (autostart / "worker.json").is_file() else None
        yield data
    finally:
        kill_runtime_worker(autostart)  # the worker the plugin started lives in its own session


def scenario(krita_run: dict[str, Any], name: str) -> dict[str, Any]:
    res = krita_run[name]
    assert "harness_error" not in res, res["harness_error"]
    return res


def test_restore_adds_one_layer_blended_by_the_feathered_selection(krita_run: dict[str, Any],
                                                                    plugin_worker: RunningWorker) -> None:
    res = scenario(krita_run, "restore")
    inp = res["input"]
    assert res["errors"] == [] and not res.get("timeout"), res["errors"]
    original = _img(inp["pixels"], 4)
    mask = _img(inp["mask"], 1)
    assert mask.max() == 255 and len(np.unique(mask)) > 10, "the selection is not feathered"
    x, y, w, h = region(tuple(inp["selection"]), MARGIN, W, H)
    assert (w, h) != (W, H), "the region must be smaller than the canvas for this test to mean something"

    # Exactly one new layer, directly above the source layer, active, 8-bit RGBA like the source.
    name = next(n for n in res["layers"] if n.startswith("LoRA-IR"))
    assert res["layers"] == ["Background", name, "marker", "Selection Mask"]
    assert res["active"] == name and res["new_layer_depth"] == ["RGBA", "U8"]
    assert name.startswith("LoRA-IR: ") and name != "LoRA-IR: base network"

    # The layer holds what the worker returns for the same pixels and mask, and nothing outside.
    new = _img(res["new_layer"], 4)
    crop = np.ascontiguousarray(original[y:y + h, x:x + w])
    crop_mask = np.ascontiguousarray(mask[y:y + h, x:x + w])
    expected = plugin_worker.restore(crop.tobytes(), w, h, "BGRA", crop_mask.tobytes())
    np.testing.assert_array_equal(new[y:y + h, x:x + w], np.frombuffer(expected, np.uint8).reshape(h, w, 4))
    outside = new.copy()
    outside[y:y + h, x:x + w] = 0
    assert not outside.any(), "the new layer has pixels outside the region"

    # Independently of the worker's blending: unmasked restore, blended here through the mask.
    full = np.frombuffer(plugin_worker.restore(crop.tobytes(), w, h, "BGRA", None), np.uint8).reshape(h, w, 4)
    ref = blend_reference(crop, full, crop_mask, slice(0, 3))
    assert np.abs(new[y:y + h, x:x + w].astype(int) - ref.astype(int)).max() <= 1
    unselected = crop_mask == 0
    assert unselected.any() and (new[y:y + h, x:x + w][unselected] == crop[unselected]).all()
    assert (new[y:y + h, x:x + w][crop_mask == 255] != crop[crop_mask == 255]).any(), "nothing was restored"

    # The source layer is byte-identical.
    assert res["original_after"] == inp["pixels"]


def test_restore_is_one_undo_step(krita_run: dict[str, Any]) -> None:
    res = scenario(krita_run, "restore")
    inp = res["input"]
    # One Undo removes the whole restore, keeps the step before it (the marker layer), and the
    # source layer is as it was; Redo brings the same layer back.
    assert res["layers_after_undo"] == inp["layers"] == ["Background", "marker", "Selection Mask"]
    assert res["original_after_undo"] == inp["pixels"]
    assert res["layers_after_redo"] == res["layers"]
    assert res["new_layer_after_redo"] == res["new_layer"]


def test_no_image_open_shows_a_message(krita_run: dict[str, Any]) -> None:
    res = scenario(krita_run, "no_document")
    errors = res["errors"]
    assert len(errors) == 1 and errors[0]["text"] == "No image is open."
    assert "Open or create an image" in errors[0]["hint"]
    assert res["shortcut"] == "Ctrl+Alt+Shift+R"


def test_the_plugin_starts_the_worker_with_the_recorded_command(krita_run: dict[str, Any],
                                                                plugin_worker: RunningWorker) -> None:
    res = scenario(krita_run, "autostart")
    assert res["errors"] == [] and not res.get("timeout"), res
    info = krita_run["autostart_info"]
    assert info is not None and info["pid"] != plugin_worker.proc.pid, "no second worker was started"
    inp = res["input"]
    x, y, w, h = region(tuple(inp["selection"]), MARGIN, W, H)
    crop = np.ascontiguousarray(_img(inp["pixels"], 4)[y:y + h, x:x + w])
    crop_mask = np.ascontiguousarray(_img(inp["mask"], 1)[y:y + h, x:x + w])
    expected = plugin_worker.restore(crop.tobytes(), w, h, "BGRA", crop_mask.tobytes())  # same model
    new = _img(res["new_layer"], 4)
    np.testing.assert_array_equal(new[y:y + h, x:x + w], np.frombuffer(expected, np.uint8).reshape(h, w, 4))


@pytest.mark.parametrize("case, words", [
    ("empty_selection", "selection does not cover"),
    ("unsupported", "colour model is LABA"),
    ("worker_missing", "Cannot start the worker"),
])
def test_bad_input_shows_a_message_and_leaves_no_layer(krita_run: dict[str, Any], case: str, words: str) -> None:
    res = scenario(krita_run, case)
    assert len(res["errors"]) == 1, res
    assert words in res["errors"][0]["text"] and res["errors"][0]["hint"]
    assert res["layers"] == res["layers_before"]
    assert res.get("unchanged", True)


def test_docker_connects_analyzes_and_restores_a_manual_mix(krita_run: dict[str, Any],
                                                            plugin_worker: RunningWorker) -> None:
    dock = scenario(krita_run, "docker")
    inp = dock["input"]
    assert dock["connected"] and dock["sliders"] and dock["analyzed"], dock["labels"]
    bars = dock["bars"]
    assert len(bars) == len(plugin_worker.client().info().model.experts) and 98 <= sum(bars) <= 102
    assert dock["sliders_enabled"] and dock["restored"] and dock["errors"] == []
    assert dock["layer"] == "LoRA-IR: noise 0.80, jpeg 0.30"
    x, y, w, h = region(tuple(inp["selection"]), MARGIN, W, H)
    crop = np.ascontiguousarray(_img(inp["pixels"], 4)[y:y + h, x:x + w])
    crop_mask = np.ascontiguousarray(_img(inp["mask"], 1)[y:y + h, x:x + w])
    expected = plugin_worker.restore(crop.tobytes(), w, h, "BGRA", crop_mask.tobytes(),
                                     ExpertSpec.manual({"noise": 0.8, "jpeg": 0.3}), ensemble=2)  # Passes: 2
    new = _img(dock["pixels"], 4)
    np.testing.assert_array_equal(new[y:y + h, x:x + w], np.frombuffer(expected, np.uint8).reshape(h, w, 4))


@pytest.mark.parametrize("depth, dtype, order", [("U16", "<u2", "BGRA"), ("F16", "<f2", "RGBA"),
                                                 ("F32", "<f4", "RGBA")])
def test_deep_layers_keep_their_depth_and_channel_order(krita_run: dict[str, Any], plugin_worker: RunningWorker,
                                                        depth: str, dtype: str, order: str) -> None:
    res = scenario(krita_run, "depth_" + depth)
    assert res["errors"] == [] and res["depth"] == res["new_depth"] == ["RGBA", depth]
    inp = np.frombuffer(base64.b64decode(res["input"]), dtype).reshape(H, W, 4)
    u8 = _img(res["u8"], 4).astype(np.float64)  # BGRA
    # Where each channel sits: Krita stores integer depths BGRA and float depths RGBA.
    scaled = inp.astype(np.float64) / (65535.0 if depth == "U16" else 1.0) * 255.0
    expect = u8 if order == "BGRA" else u8[..., [2, 1, 0, 3]]
    assert np.abs(scaled - expect).max() < 0.6, res["profile"]
    # The new layer covers the canvas (no selection) with exactly the worker's answer; half floats
    # travel as f32 and are rounded back to half.
    wire, sample = (inp.astype("<f4"), "f32") if depth == "F16" else (inp, "u16" if depth == "U16" else "f32")
    answer = plugin_worker.client().restore(JobRequest(wire.tobytes(), W, H, order, sample)).pixels
    if depth == "F16":
        answer = np.clip(np.frombuffer(answer, "<f4"), -65504, 65504).astype("<f2").tobytes()
    assert base64.b64decode(res["new_layer"]) == answer and len(answer) == inp.nbytes
    assert res["original_after"] == res["input"]


def test_linear_float_layers_are_restored_as_linear_light_and_keep_hdr(krita_run: dict[str, Any],
                                                                      plugin_worker: RunningWorker) -> None:
    """Krita's default float profile is linear (g10): the plugin sends transfer "linear", so the worker
    restores the sRGB-encoded picture and returns linear light; the highlight above 1 survives."""
    res = scenario(krita_run, "linear_F32")
    assert res["errors"] == [] and res["depth"] == res["new_depth"] == ["RGBA", "F32"]
    assert "g10" in res["profile"]
    inp = np.frombuffer(base64.b64decode(res["input"]), "<f4").reshape(H, W, 4)
    x, y, w, h = 2, 2, 4, 4  # the harness's HDR_BLOCK
    srgb = _img(res["u8"], 4)[..., [2, 1, 0]].astype(np.float32) / 255  # BGRA 8-bit before the conversion
    rest = np.ones((H, W), bool)
    rest[y:y + h, x:x + w] = False
    np.testing.assert_allclose(inp[..., :3][rest], srgb_decode(srgb)[rest], atol=2e-3)  # really linear light
    answer = plugin_worker.client().restore(JobRequest(inp.tobytes(), W, H, "RGBA", "f32", transfer="linear")).pixels
    assert base64.b64decode(res["new_layer"]) == answer
    out = np.frombuffer(answer, "<f4").reshape(H, W, 4)
    assert out[y:y + h, x:x + w, 0].min() > 3.0  # 4.0 in: restored at 1, its excess added back
    srgb_answer = plugin_worker.client().restore(JobRequest(inp.tobytes(), W, H, "RGBA", "f32")).pixels
    assert srgb_answer != answer  # the transfer changed what the model saw
    assert res["original_after"] == res["input"]


@pytest.mark.parametrize("depth, sample", [("U8", "u8"), ("U16", "u16")])
def test_grayscale_layers_are_restored_grey(krita_run: dict[str, Any], plugin_worker: RunningWorker,
                                            depth: str, sample: str) -> None:
    """A Grayscale/Alpha image: restored through the worker (as RGB, returned grey) into a new
    layer of the same colour space, holding exactly the worker's answer; the original untouched."""
    res = scenario(krita_run, "grey_" + depth)
    assert res["errors"] == [] and res["depth"] == res["new_depth"] == ["GRAYA", depth]
    inp = base64.b64decode(res["input"])
    answer = plugin_worker.client().restore(JobRequest(inp, W, H, "GRAYA", sample)).pixels
    assert base64.b64decode(res["new_layer"]) == answer and answer != inp
    assert res["original_after"] == res["input"]
