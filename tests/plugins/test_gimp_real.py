"""The GIMP 3 plug-in end to end inside real GIMP 3.0 (Debian 13 chroot), against a real worker.

The plug-in is installed with `lorair plugins install gimp` into the chroot's
/root/.config/GIMP/3.0/plug-ins; gimp-console runs a test-only python-fu script (gimp_harness.py)
that calls it through the PDB, non-interactively, like any script or batch job. The chroot shares
the network and, with /proc mounted, the process table: the worker started here on 127.0.0.1 is
reached by copying its runtime file (port + token, mode 0600) into the chroot and pointing
$LORAIR_RUNTIME_DIR there.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lorair_desktop.bridge import ExpertSpec

from .hosts import ensure_gimp_chroot, log_tail, proc_mounted, run_group
from .support import RunningWorker, blend_reference, install_plugin, region

pytestmark = pytest.mark.gimp

W, H = 128, 96
MARGIN = 8
HARNESS = Path(__file__).with_name("gimp_harness.py")
MARKER = "LORAIR-HARNESS-DONE"
CHROOT_ENV = {"HOME": "/root", "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def run_gimp(root: Path, scenarios: str, env: dict[str, str], name: str) -> dict[str, Any]:
    """Run the harness in gimp-console inside the chroot; its JSON answer."""
    out_inside = f"/root/lorair-test/{name}.json"
    out = root / out_inside.lstrip("/")
    out.unlink(missing_ok=True)
    log = root / "root" / "lorair-test" / f"{name}.log"
    cmd = ["chroot", str(root), "env", "-i", *(f"{k}={v}" for k, v in {
        **CHROOT_ENV, **env, "LORAIR_HARNESS_OUT": out_inside, "LORAIR_HARNESS_SCENARIOS": scenarios}.items()),
        "gimp-console-3.0", "-i", "--quit", "--batch-interpreter=python-fu-eval",
        "-b", "exec(open('/root/lorair-test/harness.py').read())"]
    with proc_mounted(root):
        rc = run_group(cmd, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, timeout=300, log=log)
    text = log.read_text(errors="replace") if log.exists() else ""
    assert MARKER in text and out.is_file(), f"GIMP's harness did not finish (exit {rc}):\n{log_tail(log)}"
    data = json.loads(out.read_text())
    assert "harness_error" not in data, data["harness_error"]
    data["log"] = text
    return data


@pytest.fixture(scope="module")
def gimp_root(plugin_worker: RunningWorker) -> Path:
    root = ensure_gimp_chroot()
    plug_ins = root / "root" / ".config" / "GIMP" / "3.0" / "plug-ins"
    install_plugin("gimp", plug_ins)
    test_dir = root / "root" / "lorair-test"
    if test_dir.exists():
        shutil.rmtree(test_dir)
    test_dir.mkdir(parents=True)
    shutil.copy(HARNESS, test_dir / "harness.py")
    # The worker's runtime file, where the plug-in will look for it inside the chroot.
    (test_dir / "runtime").mkdir(mode=0o700)
    shutil.copy2(plugin_worker.runtime_dir / "worker.json", test_dir / "runtime" / "worker.json")
    (test_dir / "no-worker").mkdir(mode=0o700)
    return root


@pytest.fixture(scope="module")
def gimp_run(gimp_root: Path) -> dict[str, Any]:
    return run_gimp(gimp_root, "auto,manual,passes,grey,bad_experts,unsupported,empty_selection",
                    {"LORAIR_RUNTIME_DIR": "/root/lorair-test/runtime"}, "main")


def _arr(data: str, w: int, h: int, channels: int) -> np.ndarray:
    shape = (h, w, channels) if channels > 1 else (h, w)
    return np.frombuffer(base64.b64decode(data), np.uint8).reshape(shape)


@pytest.mark.parametrize("case, experts, passes", [
    ("auto", ExpertSpec.auto(), 1),
    ("manual", ExpertSpec.manual({"noise": 0.8, "jpeg": 0.3}), 1),
    ("passes", ExpertSpec.manual({"noise": 0.8, "jpeg": 0.3}), 4),  # the procedure's "passes" argument
])
def test_restore_adds_a_layer_blended_by_the_feathered_selection(gimp_run: dict[str, Any], case: str,
                                                                 experts: ExpertSpec, passes: int,
                                                                 plugin_worker: RunningWorker) -> None:
    res = gimp_run[case]
    assert res["status"] == "success", res["error"]
    original = _arr(res["input"], W, H, 4)
    mask = _arr(res["mask"], W, H, 1)
    assert mask.max() == 255 and len(np.unique(mask)) > 10, "the selection is not feathered"
    x, y, w, h = region(tuple(res["selection"]), MARGIN, W, H)

    # One new layer, above the source, covering exactly the region (a layer with offsets).
    new_info, bg_info = res["layers"]
    assert bg_info == {"name": "Background", "x": 0, "y": 0, "w": W, "h": H}
    assert new_info == {"name": new_info["name"], "x": x, "y": y, "w": w, "h": h}
    if case in ("manual", "passes"):
        assert new_info["name"] == "LoRA-IR: noise 0.80, jpeg 0.30"
    else:
        assert new_info["name"].startswith("LoRA-IR: ") and new_info["name"] != "LoRA-IR: base network"

    # Its pixels are what the worker returns for the same pixels, mask and experts.
    new = _arr(res["new_layer"], w, h, 4)
    crop = np.ascontiguousarray(original[y:y + h, x:x + w])
    crop_mask = np.ascontiguousarray(mask[y:y + h, x:x + w])
    expected = plugin_worker.restore(crop.tobytes(), w, h, "RGBA", crop_mask.tobytes(), experts, passes)
    np.testing.assert_array_equal(new, np.frombuffer(expected, np.uint8).reshape(h, w, 4))
    full = np.frombuffer(plugin_worker.restore(crop.tobytes(), w, h, "RGBA", None, experts, passes),
                         np.uint8).reshape(h, w, 4)
    if passes > 1:  # the passes changed the result: it is not the one-pass restore
        one = plugin_worker.restore(crop.tobytes(), w, h, "RGBA", crop_mask.tobytes(), experts)
        assert not np.array_equal(new, np.frombuffer(one, np.uint8).reshape(h, w, 4))
    assert np.abs(new.astype(int) - blend_reference(crop, full, crop_mask, slice(0, 3)).astype(int)).max() <= 1
    assert (new[crop_mask == 0] == crop[crop_mask == 0]).all()
    assert (new[crop_mask == 255] != crop[crop_mask == 255]).any(), "nothing was restored"

    # The source layer is byte-identical, and the image still records undo steps (the plug-in
    # brackets its changes in one undo group: see test_gimp_logic for the order of the calls).
    assert res["original_after"] == res["input"]
    assert res["undo_enabled"] is True


def test_a_grayscale_image_is_restored_onto_a_grey_layer(gimp_run: dict[str, Any],
                                                         plugin_worker: RunningWorker) -> None:
    """A black-and-white scan: sent as grey, restored as RGB by the worker, back as a grey layer
    holding exactly the worker's answer for the same pixels and feathered selection."""
    res = gimp_run["grey"]
    assert res["status"] == "success", res["error"]
    original, mask = _arr(res["input"], W, H, 2), _arr(res["mask"], W, H, 1)
    x, y, w, h = region(tuple(res["selection"]), MARGIN, W, H)
    assert res["new_is_gray"] is True
    crop = np.ascontiguousarray(original[y:y + h, x:x + w])
    crop_mask = np.ascontiguousarray(mask[y:y + h, x:x + w])
    expected = plugin_worker.restore(crop.tobytes(), w, h, "GRAYA", crop_mask.tobytes())
    new = _arr(res["new_layer"], w, h, 2)
    np.testing.assert_array_equal(new, np.frombuffer(expected, np.uint8).reshape(h, w, 2))
    assert (new != crop).any() and res["original_after"] == res["input"]


@pytest.mark.parametrize("case, words", [
    ("bad_experts", "Cannot read the expert weight"),
    ("unsupported", "not indexed ones"),
    ("empty_selection", "selection does not cover"),
])
def test_bad_input_is_a_gimp_error_and_leaves_no_layer(gimp_run: dict[str, Any], case: str, words: str) -> None:
    res = gimp_run[case]
    assert res["status"] == "execution-error" and words in res["error"]
    assert not any(ly["name"].startswith("LoRA-IR") for ly in res["layers"])
    # GIMP itself reported it in its error console (the batch-mode face of its message dialog).
    assert f"Calling error for procedure 'plug-in-lorair-restore':\n{res['error'].splitlines()[0]}" in gimp_run["log"]


def test_missing_worker_is_a_gimp_error_and_leaves_no_layer(gimp_root: Path) -> None:
    res = run_gimp(gimp_root, "worker_missing", {"LORAIR_RUNTIME_DIR": "/root/lorair-test/no-worker",
                                                 "LORAIR_WORKER_CMD": "/nonexistent/lorair-worker"}, "missing")
    case = res["worker_missing"]
    assert case["status"] == "execution-error"
    assert "Cannot start the worker with `/nonexistent/lorair-worker`" in case["error"]
    assert "$LORAIR_WORKER_CMD" in case["error"]  # the hint
    assert [ly["name"] for ly in case["layers"]] == ["Background"] and case["unchanged"] is True
