"""Test-only script run by GIMP 3's python-fu batch interpreter inside the Debian 13 chroot.

It builds images with known pixels, calls the installed plug-in through the PDB exactly as a script
or batch run would (non-interactive), and writes what it saw as JSON to $LORAIR_HARNESS_OUT. The
scenarios to run are named in $LORAIR_HARNESS_SCENARIOS (comma-separated). The last line printed is
a marker the test checks: GIMP's batch mode does not always turn a Python error into an exit code.
"""

import base64
import json
import os
import random
import traceback

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp  # noqa: E402

PROCEDURE = "plug-in-lorair-restore"
W, H = 128, 96
SELECT = (40, 30, 44, 32)
FEATHER = 12.0
OUT = os.environ.get("LORAIR_HARNESS_OUT", "/root/lorair-harness.json")
RGBA8 = "R'G'B'A u8"
GREYA8 = "Y'A u8"


def b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def test_pixels(seed):
    """RGBA u8: smooth ramps plus seeded noise, alpha mostly opaque with a translucent band."""
    rng = random.Random(seed)
    out = bytearray()
    for y in range(H):
        for x in range(W):
            n = rng.randint(-40, 40)
            out += bytes(((x + y + n) % 256, (y * 2 - n) % 256, (x * 2 + n) % 256, 160 if x < 8 else 255))
    return bytes(out)


def read(drawable, fmt=RGBA8):
    buf = drawable.get_buffer()
    return bytes(buf.get(Gegl.Rectangle.new(0, 0, drawable.get_width(), drawable.get_height()), 1.0, fmt,
                         Gegl.AbyssPolicy.NONE))


def new_image(kind=Gimp.ImageBaseType.RGB, layer_type=Gimp.ImageType.RGBA_IMAGE, pixels=None, fmt=RGBA8):
    img = Gimp.Image.new(W, H, kind)
    layer = Gimp.Layer.new(img, "Background", W, H, layer_type, 100.0, Gimp.LayerMode.NORMAL)
    img.insert_layer(layer, None, 0)
    if pixels is not None:
        buf = layer.get_buffer()
        buf.set(Gegl.Rectangle.new(0, 0, W, H), fmt, pixels)
        buf.flush()
    return img, layer


def layers(img):
    out = []
    for layer in img.get_layers():
        _ok, x, y = layer.get_offsets()
        out.append({"name": layer.get_name(), "x": x, "y": y, "w": layer.get_width(), "h": layer.get_height()})
    return out


def run_plugin(img, drawable, experts="auto", margin=8, passes=1):
    proc = Gimp.get_pdb().lookup_procedure(PROCEDURE)
    if proc is None:
        return {"status": "NOT_INSTALLED", "error": "procedure not found"}
    cfg = proc.create_config()
    cfg.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    cfg.set_property("image", img)
    cfg.set_core_object_array("drawables", [drawable])
    cfg.set_property("experts", experts)
    cfg.set_property("margin", margin)
    cfg.set_property("passes", passes)
    res = proc.run(cfg)
    status = res.index(0)
    error = res.index(1) if res.length() > 1 and status != Gimp.PDBStatusType.SUCCESS else ""
    return {"status": status.value_nick, "error": error}


def restore_scenario(experts, passes=1, grey=False):
    if grey:  # a grayscale image (a black-and-white scan): grey and alpha of the same test picture
        px = test_pixels(5)
        img, layer = new_image(Gimp.ImageBaseType.GRAY, Gimp.ImageType.GRAYA_IMAGE,
                               bytes(b for i in range(0, len(px), 4) for b in (px[i + 1], px[i + 3])), GREYA8)
    else:
        img, layer = new_image(pixels=test_pixels(1))
    fmt = GREYA8 if grey else RGBA8
    img.select_rectangle(Gimp.ChannelOps.REPLACE, *SELECT)
    Gimp.Selection.feather(img, FEATHER)
    original = read(layer, fmt)
    mask = read(img.get_selection(), "Y u8")
    _ok, _empty, x1, y1, x2, y2 = Gimp.Selection.bounds(img)
    out = run_plugin(img, layer, experts, passes=passes)
    new = [ly for ly in img.get_layers() if ly.get_name().startswith("LoRA-IR")]
    out.update({
        "input": b64(original), "mask": b64(mask), "selection": [x1, y1, x2 - x1, y2 - y1],
        "layers": layers(img), "original_after": b64(read(layer, fmt)),
        "new_layer": b64(read(new[0], fmt)) if new else None,
        "new_is_gray": new[0].is_gray() if new else None,
        "undo_enabled": img.undo_is_enabled(),
    })
    img.delete()
    return out


def scenarios():
    wanted = os.environ.get("LORAIR_HARNESS_SCENARIOS", "").split(",")
    results = {}
    if "auto" in wanted:
        results["auto"] = restore_scenario("auto")
    if "manual" in wanted:
        results["manual"] = restore_scenario("noise=0.8,jpeg=0.3")
    if "passes" in wanted:
        results["passes"] = restore_scenario("noise=0.8,jpeg=0.3", passes=4)
    if "grey" in wanted:
        results["grey"] = restore_scenario("auto", grey=True)
    if "bad_experts" in wanted:
        img, layer = new_image(pixels=test_pixels(2))
        out = run_plugin(img, layer, "noise=lots")
        out["layers"] = layers(img)
        img.delete()
        results["bad_experts"] = out
    if "unsupported" in wanted:
        img, layer = new_image(Gimp.ImageBaseType.INDEXED, Gimp.ImageType.INDEXEDA_IMAGE)
        out = run_plugin(img, layer)
        out["layers"] = layers(img)
        img.delete()
        results["unsupported"] = out
    if "empty_selection" in wanted:  # a selection that misses the (small, offset) layer
        img, _bg = new_image(pixels=test_pixels(3))
        small = Gimp.Layer.new(img, "small", 16, 16, Gimp.ImageType.RGBA_IMAGE, 100.0, Gimp.LayerMode.NORMAL)
        img.insert_layer(small, None, 0)
        img.select_rectangle(Gimp.ChannelOps.REPLACE, 100, 70, 10, 10)
        out = run_plugin(img, small)
        out["layers"] = layers(img)
        img.delete()
        results["empty_selection"] = out
    if "worker_missing" in wanted:
        img, layer = new_image(pixels=test_pixels(4))
        img.select_rectangle(Gimp.ChannelOps.REPLACE, *SELECT)
        before = read(layer)
        out = run_plugin(img, layer)
        out.update({"layers": layers(img), "unchanged": read(layer) == before})
        img.delete()
        results["worker_missing"] = out
    return results


try:
    data = scenarios()
except Exception:
    data = {"harness_error": traceback.format_exc()}
with open(OUT, "w") as f:
    json.dump(data, f)
print("LORAIR-HARNESS-DONE", flush=True)
