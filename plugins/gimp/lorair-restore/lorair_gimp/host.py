"""Every call into GIMP (gi.repository Gimp, GimpUi, Gegl, Gtk) lives here: the procedure, reading
the layer and the selection, the new layer in one undo group, progress, messages, and the dialog."""

from __future__ import annotations

import sys
from typing import Any

import gi

gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gegl, Gimp, GLib, GObject  # noqa: E402 - after require_version

from . import logic  # noqa: E402
from .logic import PLUGIN, PixelFormat, PluginError, Rect, hostkit  # noqa: E402

MENU_LABEL = "LoRA-IR Restore..."
MENU_PATH = "<Image>/Filters/Enhance"


def _precision(image: Any) -> tuple[int, bool]:
    """(bits, is_float) of the image's precision, from its nick such as 'u16-non-linear'."""
    kind = image.get_precision().value_nick.split("-")[0]
    bits = {"u8": 8, "u16": 16, "u32": 32, "half": 16, "float": 32, "double": 64}.get(kind, 32)
    return bits, kind in ("half", "float", "double")


def _read(image: Any, drawable: Any, margin: int) -> tuple[Rect, Rect, PixelFormat, bytes, bytes | None]:
    """(region in drawable coords, region in image coords, format, pixels, mask) of the selection."""
    if not drawable.is_layer() or drawable.is_group_layer():
        raise PluginError("LoRA-IR restores pixel layers.", "Select a single layer (not a group, mask or channel).")
    if not (drawable.is_rgb() or drawable.is_gray()):
        raise PluginError("LoRA-IR restores RGB and grayscale images, not indexed ones.",
                          "Convert the image with Image > Mode > RGB or Grayscale.")
    bounds = Rect(0, 0, drawable.get_width(), drawable.get_height())
    has_selection = not Gimp.Selection.is_empty(image)
    selected = None
    if has_selection:
        inside, x, y, w, h = drawable.mask_intersect()
        selected = Rect(x, y, w, h) if inside else Rect(0, 0, 0, 0)
    rect = PLUGIN.restore_region(bounds, selected, margin)
    _ok, ox, oy = drawable.get_offsets()
    image_rect = Rect(rect.x + ox, rect.y + oy, rect.w, rect.h)
    fmt = logic.pixel_format(*_precision(image), drawable.has_alpha(), grey=drawable.is_gray())
    pixels = drawable.get_buffer().get(Gegl.Rectangle.new(rect.x, rect.y, rect.w, rect.h), 1.0, fmt.babl,
                                       Gegl.AbyssPolicy.NONE)
    mask = None
    if has_selection:  # the selection channel is in image coordinates, 8-bit coverage
        mask = image.get_selection().get_buffer().get(
            Gegl.Rectangle.new(image_rect.x, image_rect.y, rect.w, rect.h), 1.0, "Y u8", Gegl.AbyssPolicy.NONE)
    return rect, image_rect, fmt, bytes(pixels), None if mask is None else bytes(mask)


def _add_layer(image: Any, drawable: Any, image_rect: Rect, fmt: PixelFormat, pixels: bytes, name: str) -> Any:
    """The result as a new layer right above the source, as one undo step; nothing left on failure."""
    kind = {"RGBA": Gimp.ImageType.RGBA_IMAGE, "RGB": Gimp.ImageType.RGB_IMAGE,
            "GRAYA": Gimp.ImageType.GRAYA_IMAGE, "GRAY": Gimp.ImageType.GRAY_IMAGE}[fmt.order]
    image.undo_group_start()
    layer = None
    try:
        layer = Gimp.Layer.new(image, name, image_rect.w, image_rect.h, kind, 100.0, Gimp.LayerMode.NORMAL)
        parent = drawable.get_parent()
        if not image.insert_layer(layer, parent, image.get_item_position(drawable)):
            raise PluginError("GIMP refused to add the restored layer; nothing was changed.")
        layer.set_offsets(image_rect.x, image_rect.y)
        buffer = layer.get_buffer()
        buffer.set(Gegl.Rectangle.new(0, 0, image_rect.w, image_rect.h), fmt.babl, pixels)
        buffer.flush()
        layer.update(0, 0, image_rect.w, image_rect.h)
    except Exception:
        if layer is not None and layer.is_valid() and layer.get_image() is not None:
            image.remove_layer(layer)
        raise
    finally:
        image.undo_group_end()
    return layer


def _progress(fraction: float, text: str) -> None:
    Gimp.progress_set_text(text)
    Gimp.progress_update(min(max(fraction, 0.0), 1.0))


def run_restore(image: Any, drawables: list[Any], experts_text: str, margin: int, passes: int = 1) -> Any:
    """Read, restore through the worker, then (only on success) add the layer. Returns it."""
    if image is None:
        raise PluginError("No image is open.", "Open an image and select the area to restore.")
    if len(drawables) != 1:
        raise PluginError("LoRA-IR restores one layer at a time.", "Select exactly one layer.")
    drawable = drawables[0]
    passes = hostkit.check_passes(passes)
    experts = hostkit.parse_experts(experts_text)
    rect, image_rect, fmt, pixels, mask = _read(image, drawable, margin)
    Gimp.progress_init("LoRA-IR: connecting to the worker…")
    client = logic.connect()
    result = logic.restore(client, pixels, mask, rect, fmt, experts, _progress, passes)
    layer = _add_layer(image, drawable, image_rect, fmt, result.pixels,
                       hostkit.layer_name(result.header.applied_weights))
    Gimp.progress_end()
    Gimp.displays_flush()
    return layer


# ---- the interactive dialog ----------------------------------------------------------------------


def _dialog(procedure: Any, config: Any, image: Any, drawables: list[Any]) -> bool:
    """Auto or per-expert weights and the margin; writes them into `config`. False when cancelled."""
    gi.require_version("GimpUi", "3.0")
    gi.require_version("Gtk", "3.0")
    from gi.repository import GimpUi, Gtk

    GimpUi.init(logic.PROCEDURE)
    Gimp.progress_init("LoRA-IR: connecting to the worker…")
    client = logic.connect()
    info = client.info()
    Gimp.progress_end()
    experts = list(info.model.experts)
    if not experts:
        reason = info.model.error.message if info.model.error else "it is not ready"
        raise PluginError(f"The worker's model cannot be used: {reason}.", "See `lorair models` in a terminal.")
    current = hostkit.parse_experts(config.get_property("experts"))

    dialog = GimpUi.Dialog(title="LoRA-IR Restore", role=logic.PROCEDURE)
    dialog.add_button("_Cancel", Gtk.ResponseType.CANCEL)
    dialog.add_button("_OK", Gtk.ResponseType.OK)
    box = Gtk.Box(orientation=Gtk.Orientation.VERTICAL, spacing=6, margin=12)
    dialog.get_content_area().add(box)
    box.add(Gtk.Label(label=f"Worker: {info.device_name or info.device}, model {info.model.name}", xalign=0))
    auto = Gtk.CheckButton(label="Auto: the router chooses the experts")
    auto.set_active(current.mode == "auto")
    box.add(auto)
    grid = Gtk.Grid(column_spacing=8, row_spacing=4)
    box.add(grid)
    scales: dict[str, Any] = {}
    router_labels: dict[str, Any] = {}
    for row, name in enumerate(experts):
        scale = Gtk.Scale.new_with_range(Gtk.Orientation.HORIZONTAL, 0.0, hostkit.MAX_WEIGHT, 0.01)
        scale.set_value(current.weights.get(name, 0.0))
        scale.set_hexpand(True)
        scales[name] = scale
        router_labels[name] = Gtk.Label(label="", xalign=1)
        grid.attach(Gtk.Label(label=name, xalign=0), 0, row, 1, 1)
        grid.attach(scale, 1, row, 1, 1)
        grid.attach(router_labels[name], 2, row, 1, 1)

    def sync(*_: Any) -> None:
        for scale in scales.values():
            scale.set_sensitive(not auto.get_active())

    auto.connect("toggled", sync)
    sync()
    margin = Gtk.SpinButton.new_with_range(0, hostkit.MAX_MARGIN, 1)
    margin.set_value(config.get_property("margin"))
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
    row.add(Gtk.Label(label="Context margin (px)"))
    row.add(margin)
    box.add(row)
    passes = Gtk.ComboBoxText()
    for n, label in hostkit.pass_choices():
        passes.append(str(n), label)
    passes.set_active_id(str(config.get_property("passes")))
    if passes.get_active_id() is None:
        passes.set_active_id("1")
    passes.set_tooltip_text(hostkit.PASSES_TIP)
    row = Gtk.Box(orientation=Gtk.Orientation.HORIZONTAL, spacing=6)
    row.add(Gtk.Label(label="Passes"))
    row.add(passes)
    box.add(row)
    analyze = Gtk.Button(label="Analyze (router weights)")

    def on_analyze(*_: Any) -> None:
        try:
            rect, _ir, fmt, pixels, _mask = _read(image, drawables[0], int(margin.get_value()))
            res = client.analyze(logic.JobRequest(pixels, rect.w, rect.h, fmt.order, fmt.sample))
        except Exception as exc:
            Gimp.message(logic.error_text(exc))
            return
        for name, label in router_labels.items():
            label.set_text(f"router {res.router_weights.get(name, 0.0):.2f}")

    analyze.connect("clicked", on_analyze)
    box.add(analyze)
    dialog.show_all()
    ok = dialog.run() == Gtk.ResponseType.OK
    if ok:
        weights = {name: round(scale.get_value(), 2) for name, scale in scales.items()}
        config.set_property("experts", hostkit.experts_text(auto.get_active(), weights))
        config.set_property("margin", int(margin.get_value()))
        config.set_property("passes", int(passes.get_active_id() or "1"))
    dialog.destroy()
    return ok


# ---- the procedure -------------------------------------------------------------------------------


class LoraIRPlugIn(Gimp.PlugIn):
    def do_query_procedures(self) -> list[str]:
        return [logic.PROCEDURE]

    def do_set_i18n(self, name: str) -> bool:
        return False

    def do_create_procedure(self, name: str) -> Any:
        proc = Gimp.ImageProcedure.new(self, name, Gimp.PDBProcType.PLUGIN, self.run, None)
        proc.set_image_types("RGB*")
        proc.set_sensitivity_mask(Gimp.ProcedureSensitivityMask.DRAWABLE)
        proc.set_menu_label(MENU_LABEL)
        proc.add_menu_path(MENU_PATH)
        proc.set_documentation(
            "Restore the selection with LoRA-IR (noise, blur, JPEG, rain, haze, low light)",
            "Sends the selection (plus a context margin, with its soft edges) to the local LoRA-IR worker "
            "and adds the result as a new layer above, blended through the selection, in one undo step. "
            "experts: 'auto' (the router chooses), 'noise=0.8,jpeg=0.3' (by hand; others 0) or "
            "'auto,rain=0' (the router's mix with edits). passes: 1, 2, 4 or 8 flipped/turned passes averaged "
            "(finer, that many times slower). The worker starts on demand.",
            name)
        proc.set_attribution("LoRA-IR Desktop", "LoRA-IR Desktop authors", "2025")
        proc.add_string_argument("experts", "Experts", "auto | name=weight,... | auto,name=weight,...", "auto",
                                 GObject.ParamFlags.READWRITE)
        proc.add_int_argument("margin", "Context margin", "Pixels of context around the selection",
                              0, hostkit.MAX_MARGIN, hostkit.DEFAULT_MARGIN, GObject.ParamFlags.READWRITE)
        proc.add_int_argument("passes", "Passes", "1, 2, 4 or 8 flipped/turned passes averaged (slower, finer)",
                              1, max(n for n, _ in hostkit.pass_choices()), 1, GObject.ParamFlags.READWRITE)
        return proc

    def run(self, procedure: Any, run_mode: Any, image: Any, drawables: list[Any], config: Any,
            run_data: Any) -> Any:
        try:
            if run_mode == Gimp.RunMode.INTERACTIVE and not _dialog(procedure, config, image, list(drawables)):
                return procedure.new_return_values(Gimp.PDBStatusType.CANCEL, None)
            run_restore(image, list(drawables), config.get_property("experts"), config.get_property("margin"),
                        config.get_property("passes"))
        except Exception as exc:
            Gimp.progress_end()
            # GIMP shows a returned error itself (a dialog, or the console in batch mode).
            text = logic.error_text(exc)
            return procedure.new_return_values(Gimp.PDBStatusType.EXECUTION_ERROR, GLib.Error(text))
        return procedure.new_return_values(Gimp.PDBStatusType.SUCCESS, None)


def main() -> None:
    Gimp.main(LoraIRPlugIn.__gtype__, sys.argv)
