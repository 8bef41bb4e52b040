"""A small fake of `gi.repository` (Gimp, Gegl, GLib, GObject): just what the plug-in's host module
calls, recording the image-changing calls in order so tests can check undo grouping and cleanup."""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Nick:
    def __init__(self, nick: str) -> None:
        self.value_nick = nick


@dataclass
class Rectangle:
    x: int
    y: int
    width: int
    height: int

    @classmethod
    def new(cls, x: int, y: int, w: int, h: int) -> Rectangle:
        return cls(x, y, w, h)


class Buffer:
    """Pixels of one babl format, `bpp` bytes each; reads outside are transparent (abyss NONE)."""

    def __init__(self, owner: Any, w: int, h: int, fmt: str, bpp: int, fill: bytes | None = None) -> None:
        self.owner, self.w, self.h, self.fmt, self.bpp = owner, w, h, fmt, bpp
        self.data = bytearray(fill if fill is not None else bytes(w * h * bpp))
        self.fail_on_set = False

    def get(self, rect: Rectangle, scale: float, fmt: str, abyss: Any) -> bytes:
        assert fmt == self.fmt and scale == 1.0, (fmt, self.fmt)
        out = bytearray()
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                inside = 0 <= x < self.w and 0 <= y < self.h
                i = (y * self.w + x) * self.bpp
                out += self.data[i:i + self.bpp] if inside else bytes(self.bpp)
        return bytes(out)

    def set(self, rect: Rectangle, fmt: str, data: bytes) -> None:
        assert fmt == self.fmt
        if self.fail_on_set:
            raise RuntimeError("GEGL could not write the buffer")
        self.owner.image.calls.append("buffer_set")
        k = 0
        for y in range(rect.y, rect.y + rect.height):
            for x in range(rect.x, rect.x + rect.width):
                i = (y * self.w + x) * self.bpp
                self.data[i:i + self.bpp] = data[k:k + self.bpp]
                k += self.bpp

    def flush(self) -> None:
        pass


class Layer:
    fail_next_set = False  # makes the next new layer's buffer refuse writes

    def __init__(self, image: Image, name: str, w: int, h: int, kind: Any = "RGBA", fill: bytes | None = None,
                 fmt: str = "R'G'B'A u8", bpp: int = 4, rgb: bool = True, group: bool = False) -> None:
        self.image, self.name, self.w, self.h, self.kind = image, name, w, h, kind
        self.x = self.y = 0
        self.gray = fmt.startswith("Y'")
        self.rgb, self.group, self.alpha = rgb and not self.gray, group, fmt.split()[0].endswith("A")
        self.buffer = Buffer(self, w, h, fmt, bpp, fill)
        if Layer.fail_next_set:
            self.buffer.fail_on_set, Layer.fail_next_set = True, False
        self.attached = False

    @classmethod
    def new(cls, image: Image, name: str, w: int, h: int, kind: Any, opacity: float, mode: Any) -> Layer:
        fmt, bpp = image.new_layer_format
        return cls(image, name, w, h, kind, fmt=fmt, bpp=bpp)

    def is_layer(self) -> bool:
        return True

    def is_group_layer(self) -> bool:
        return self.group

    def is_rgb(self) -> bool:
        return self.rgb

    def is_gray(self) -> bool:
        return self.gray

    def has_alpha(self) -> bool:
        return self.alpha

    def get_width(self) -> int:
        return self.w

    def get_height(self) -> int:
        return self.h

    def get_offsets(self) -> tuple[bool, int, int]:
        return True, self.x, self.y

    def set_offsets(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def get_buffer(self) -> Buffer:
        return self.buffer

    def get_parent(self) -> None:
        return None

    def get_name(self) -> str:
        return self.name

    def update(self, *rect: int) -> None:
        pass

    def is_valid(self) -> bool:
        return True

    def get_image(self) -> Image | None:
        return self.image if self.attached else None

    def mask_intersect(self) -> tuple[bool, int, int, int, int]:
        """Selection bounds ∩ layer, in layer coordinates (GIMP's answer)."""
        sel = self.image.selection_rect
        x0, y0 = max(sel[0], self.x), max(sel[1], self.y)
        x1, y1 = min(sel[0] + sel[2], self.x + self.w), min(sel[1] + sel[3], self.y + self.h)
        if x1 <= x0 or y1 <= y0:
            return False, 0, 0, 0, 0
        return True, x0 - self.x, y0 - self.y, x1 - x0, y1 - y0


@dataclass
class Image:
    width: int
    height: int
    precision: str = "u8-non-linear"
    new_layer_format: tuple[str, int] = ("R'G'B'A u8", 4)
    layers: list[Layer] = field(default_factory=list)  # top first, like GIMP
    calls: list[str] = field(default_factory=list)
    selection_rect: tuple[int, int, int, int] | None = None
    selection: Any = None

    def select(self, x: int, y: int, w: int, h: int, coverage: int = 200) -> None:
        """A rectangular selection whose coverage is `coverage`, 255 in its centre pixel row."""
        self.selection_rect = (x, y, w, h)
        data = bytearray(self.width * self.height)
        for yy in range(y, y + h):
            for xx in range(x, x + w):
                data[yy * self.width + xx] = 255 if yy == y + h // 2 else coverage
        self.selection = Layer(self, "selection", self.width, self.height, fill=bytes(data), fmt="Y u8", bpp=1)

    def get_precision(self) -> Nick:
        return Nick(self.precision)

    def get_selection(self) -> Layer:
        return self.selection

    def add(self, layer: Layer) -> Layer:
        layer.attached = True
        self.layers.insert(0, layer)
        return layer

    def get_item_position(self, item: Layer) -> int:
        return self.layers.index(item)

    def insert_layer(self, layer: Layer, parent: Any, position: int) -> bool:
        self.calls.append("insert_layer")
        layer.attached = True
        self.layers.insert(position, layer)
        return True

    def remove_layer(self, layer: Layer) -> None:
        self.calls.append("remove_layer")
        layer.attached = False
        self.layers.remove(layer)

    def undo_group_start(self) -> bool:
        self.calls.append("undo_group_start")
        return True

    def undo_group_end(self) -> bool:
        self.calls.append("undo_group_end")
        return True


class PDBStatusType(Enum):
    SUCCESS = "success"
    EXECUTION_ERROR = "execution-error"
    CALLING_ERROR = "calling-error"
    CANCEL = "cancel"


class RunMode(Enum):
    INTERACTIVE = 0
    NONINTERACTIVE = 1
    WITH_LAST_VALS = 2


class GLibError(Exception):
    pass


def make_modules(progress: list[Any]) -> dict[str, types.ModuleType]:
    """{'gi': ..., 'gi.repository': ...}; `progress` collects the progress calls."""
    gi = types.ModuleType("gi")
    gi.require_version = lambda *a: None  # type: ignore[attr-defined]
    repo = types.ModuleType("gi.repository")
    gimp = types.SimpleNamespace(
        PlugIn=type("PlugIn", (), {}),
        main=lambda *a: None,
        Layer=Layer,
        ImageType=types.SimpleNamespace(RGBA_IMAGE="RGBA", RGB_IMAGE="RGB", GRAYA_IMAGE="GRAYA", GRAY_IMAGE="GRAY"),
        LayerMode=types.SimpleNamespace(NORMAL="normal"),
        Selection=types.SimpleNamespace(is_empty=lambda image: image.selection is None),
        PDBStatusType=PDBStatusType,
        RunMode=RunMode,
        progress_init=lambda text: progress.append(("init", text)),
        progress_set_text=lambda text: progress.append(("text", text)),
        progress_update=lambda f: progress.append(("update", f)),
        progress_end=lambda: progress.append(("end",)),
        displays_flush=lambda: None,
        message=lambda text: progress.append(("message", text)),
    )
    gegl = types.SimpleNamespace(Rectangle=Rectangle, AbyssPolicy=types.SimpleNamespace(NONE="none"))
    glib = types.SimpleNamespace(Error=GLibError)
    gobject = types.SimpleNamespace(ParamFlags=types.SimpleNamespace(READWRITE=3))
    repo.Gimp, repo.Gegl, repo.GLib, repo.GObject = gimp, gegl, glib, gobject  # type: ignore[attr-defined]
    gi.repository = repo  # type: ignore[attr-defined]
    return {"gi": gi, "gi.repository": repo}


class Procedure:
    """Just `new_return_values`, as the run function uses it."""

    def new_return_values(self, status: PDBStatusType, error: GLibError | None) -> tuple[Any, str]:
        return status, str(error) if error is not None else ""


class Config:
    def __init__(self, **values: Any) -> None:
        self.values = values

    def get_property(self, name: str) -> Any:
        return self.values[name]
