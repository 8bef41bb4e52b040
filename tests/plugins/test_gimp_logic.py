"""The GIMP plug-in without GIMP: its plain logic, and its host module against a fake
`gi.repository` (the call order shows the single undo group and that failures leave no layer).
The real GIMP 3 is exercised in test_gimp_real.py."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from lorair_desktop.bridge import BridgeError, JobResult, ResultHeader

from . import fake_gimp as fg


class FakeClient:
    """The 'restored' pixels are the input with every byte inverted."""

    def __init__(self, fail: BaseException | None = None, wrong_size: bool = False) -> None:
        self.fail, self.wrong_size = fail, wrong_size
        self.requests: list[Any] = []

    def restore(self, request: Any, on_progress: Any = None, should_cancel: Any = None) -> JobResult:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        from lorair_desktop.bridge import JobStatus

        on_progress(JobStatus("j", "queued", 0.0, 0, 0, 0, None, 0.0, 1))
        on_progress(JobStatus("j", "running", 0.5, 1, 2, None, 1.0, 0.1, 2))
        pixels = bytes(255 - b for b in bytes(memoryview(request.pixels)))
        header = ResultHeader(request.width + int(self.wrong_size), request.height, request.order, request.sample,
                              {"rain": 0.6, "haze": 0.4}, {"rain": 0.6, "haze": 0.4}, {"total": 0.1}, 1, 256,
                              "cpu", "float32", "small")
        return JobResult(header, pixels)


# ---- plain logic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, is_float, alpha, expected", [
    (8, False, True, ("RGBA", "u8", "R'G'B'A u8")),
    (8, False, False, ("RGB", "u8", "R'G'B' u8")),
    (16, False, True, ("RGBA", "u16", "R'G'B'A u16")),
    (32, False, True, ("RGBA", "f32", "R'G'B'A float")),  # 32-bit integer travels as float
    (16, True, True, ("RGBA", "f32", "R'G'B'A float")),  # half
    (64, True, False, ("RGB", "f32", "R'G'B' float")),  # double
])
def test_pixel_format(gimp_logic: Any, bits: int, is_float: bool, alpha: bool, expected: tuple) -> None:
    fmt = gimp_logic.pixel_format(bits, is_float, alpha)
    assert (fmt.order, fmt.sample, fmt.babl) == expected
    grey = gimp_logic.pixel_format(bits, is_float, alpha, grey=True)  # a grayscale image: Y', the same sample
    assert (grey.order, grey.sample, grey.babl) == (expected[0].replace("RGB", "GRAY"), expected[1],
                                                    expected[2].replace("R'G'B'", "Y'"))


def test_error_text_names_the_gimp_way_to_drop_the_selection(gimp_logic: Any) -> None:
    with pytest.raises(gimp_logic.PluginError) as err:
        gimp_logic.PLUGIN.restore_region(gimp_logic.Rect(0, 0, 9, 9), gimp_logic.Rect(20, 20, 2, 2), 4)
    assert gimp_logic.error_text(err.value) == ("The selection does not cover any pixel of this layer. Select the "
                                                "area to restore (Select > None restores the whole layer).")


# ---- the host module with a fake GIMP ------------------------------------------------------------


@pytest.fixture
def gimp_host(gimp_logic: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[Any]]]:
    progress: list[Any] = []
    for name, module in fg.make_modules(progress).items():
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules.pop("lorair_gimp.host", None)
    host = importlib.import_module("lorair_gimp.host")
    try:
        yield host, progress
    finally:
        sys.modules.pop("lorair_gimp.host", None)


def scene(**image_kw: Any) -> tuple[fg.Image, fg.Layer]:
    image = fg.Image(50, 40, **image_kw)
    layer = image.add(fg.Layer(image, "photo", 30, 20, fill=bytes(i % 256 for i in range(30 * 20 * 4))))
    layer.set_offsets(5, 3)
    return image, layer


def use_client(monkeypatch: pytest.MonkeyPatch, gimp_logic: Any, client: FakeClient) -> FakeClient:
    monkeypatch.setattr(gimp_logic, "connect", lambda autostart=True: client)
    return client


def test_restore_reads_the_selection_and_adds_one_layer_in_one_undo_group(
        gimp_host: Any, gimp_logic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host, progress = gimp_host
    client = use_client(monkeypatch, gimp_logic, FakeClient())
    image, layer = scene()
    image.select(15, 10, 6, 4)  # image coords; the layer starts at (5, 3)
    before = bytes(layer.buffer.data)
    new = host.run_restore(image, [layer], "auto,rain=0.5", 2)

    (req,) = client.requests
    # Selection in layer coords (10, 7, 6, 4) plus 2 px margin.
    assert (req.width, req.height, req.order, req.sample) == (10, 8, "RGBA", "u8")
    assert req.experts.to_dict() == {"mode": "manual", "weights": {"rain": 0.5}, "keep_router": True}
    sent = layer.buffer.get(fg.Rectangle(8, 5, 10, 8), 1.0, "R'G'B'A u8", None)
    assert bytes(req.pixels) == sent
    mask = image.selection.buffer.get(fg.Rectangle(13, 8, 10, 8), 1.0, "Y u8", None)
    assert bytes(req.mask) == mask and 255 in mask and 0 in mask

    assert image.calls == ["undo_group_start", "insert_layer", "buffer_set", "undo_group_end"]
    assert image.layers == [new, layer] and new.name == "LoRA-IR: rain 0.60, haze 0.40"
    assert (new.x, new.y, new.w, new.h) == (13, 8, 10, 8)
    assert bytes(new.buffer.data) == bytes(255 - b for b in sent)
    assert bytes(layer.buffer.data) == before
    assert ("text", "LoRA-IR: Queued (position 1)…") in progress
    assert ("update", 0.5) in progress and ("text", "LoRA-IR: Restoring: tile 1 of 2, about 1 s left") in progress
    assert progress[-1] == ("end",)


def test_no_selection_restores_the_whole_layer_without_a_mask(gimp_host: Any, gimp_logic: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    host, _ = gimp_host
    client = use_client(monkeypatch, gimp_logic, FakeClient())
    image, layer = scene()
    new = host.run_restore(image, [layer], "auto", 32)
    assert (client.requests[0].width, client.requests[0].height, client.requests[0].mask) == (30, 20, None)
    assert (new.x, new.y, new.w, new.h) == (5, 3, 30, 20)


def test_sixteen_bit_images_are_read_and_written_as_u16(gimp_host: Any, gimp_logic: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    host, _ = gimp_host
    client = use_client(monkeypatch, gimp_logic, FakeClient())
    image = fg.Image(20, 10, precision="u16-non-linear", new_layer_format=("R'G'B'A u16", 8))
    layer = image.add(fg.Layer(image, "deep", 20, 10, fmt="R'G'B'A u16", bpp=8))
    host.run_restore(image, [layer], "auto", 0)
    assert (client.requests[0].order, client.requests[0].sample) == ("RGBA", "u16")


@pytest.mark.parametrize("client, words", [
    (FakeClient(fail=BridgeError("worker_start_failed", "cannot start the worker", "set LORAIR_WORKER_CMD")),
     "Cannot start the worker. Set LORAIR_WORKER_CMD."),
    (FakeClient(wrong_size=True), "another size"),
])
def test_worker_failures_change_nothing(gimp_host: Any, gimp_logic: Any, monkeypatch: pytest.MonkeyPatch,
                                        client: FakeClient, words: str) -> None:
    host, progress = gimp_host
    use_client(monkeypatch, gimp_logic, client)
    image, layer = scene()
    status, error = host.LoraIRPlugIn().run(fg.Procedure(), fg.RunMode.NONINTERACTIVE, image, [layer],
                                            fg.Config(experts="auto", margin=4, passes=1), None)
    assert status is fg.PDBStatusType.EXECUTION_ERROR and words in error
    assert image.calls == [] and image.layers == [layer]  # not even an undo group
    assert progress[-1] == ("end",)


def test_a_failure_while_writing_removes_the_layer_inside_the_group(gimp_host: Any, gimp_logic: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    host, _ = gimp_host
    use_client(monkeypatch, gimp_logic, FakeClient())
    image, layer = scene()
    fg.Layer.fail_next_set = True
    with pytest.raises(RuntimeError, match="GEGL"):
        host.run_restore(image, [layer], "auto", 4)
    assert image.calls == ["undo_group_start", "insert_layer", "remove_layer", "undo_group_end"]
    assert image.layers == [layer]


@pytest.mark.parametrize("setup, words", [
    ("none", "No image is open"),
    ("two", "one layer at a time"),
    ("group", "pixel layers"),
    ("indexed", "not indexed ones"),
    ("miss", "does not cover"),
])
def test_bad_input_is_an_error_before_anything_is_sent(gimp_host: Any, gimp_logic: Any,
                                                       monkeypatch: pytest.MonkeyPatch, setup: str, words: str) -> None:
    host, _ = gimp_host
    client = use_client(monkeypatch, gimp_logic, FakeClient())
    image, layer = scene()
    drawables = [layer]
    if setup == "two":
        drawables = [layer, image.add(fg.Layer(image, "b", 4, 4))]
    elif setup == "group":
        layer.group = True
    elif setup == "indexed":
        layer.rgb = layer.gray = False
    elif setup == "miss":
        image.select(40, 30, 5, 5)  # outside the layer at (5, 3)-(35, 23)
    status, error = host.LoraIRPlugIn().run(fg.Procedure(), fg.RunMode.NONINTERACTIVE,
                                            None if setup == "none" else image, drawables,
                                            fg.Config(experts="auto", margin=4, passes=1), None)
    assert status is fg.PDBStatusType.EXECUTION_ERROR and words in error
    assert client.requests == [] and image.calls == []


def test_a_grayscale_layer_travels_as_grey_and_comes_back_as_a_grey_layer(
        gimp_host: Any, gimp_logic: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    host, _ = gimp_host
    client = use_client(monkeypatch, gimp_logic, FakeClient())
    image = fg.Image(50, 40, new_layer_format=("Y'A u8", 2))
    layer = image.add(fg.Layer(image, "scan", 30, 20, kind="GRAYA", fmt="Y'A u8", bpp=2,
                               fill=bytes(i % 256 for i in range(30 * 20 * 2))))
    status, error = host.LoraIRPlugIn().run(fg.Procedure(), fg.RunMode.NONINTERACTIVE, image, [layer],
                                            fg.Config(experts="auto", margin=4, passes=1), None)
    assert (status, error) == (fg.PDBStatusType.SUCCESS, "")
    (req,) = client.requests
    assert (req.order, req.sample, len(req.pixels)) == ("GRAYA", "u8", 30 * 20 * 2)
    new = image.layers[0]
    assert new.kind == "GRAYA" and bytes(new.buffer.data) == bytes(255 - b for b in bytes(layer.buffer.data))


def test_the_procedure_succeeds_non_interactively(gimp_host: Any, gimp_logic: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    host, _ = gimp_host
    client = use_client(monkeypatch, gimp_logic, FakeClient())
    image, layer = scene()
    status, error = host.LoraIRPlugIn().run(fg.Procedure(), fg.RunMode.NONINTERACTIVE, image, [layer],
                                            fg.Config(experts="auto", margin=4, passes=4), None)
    assert (status, error) == (fg.PDBStatusType.SUCCESS, "") and len(image.layers) == 2
    assert client.requests[-1].ensemble == 4  # the "passes" argument reaches the worker
    status, error = host.LoraIRPlugIn().run(fg.Procedure(), fg.RunMode.NONINTERACTIVE, image, [layer],
                                            fg.Config(experts="auto", margin=4, passes=3), None)
    assert status == fg.PDBStatusType.EXECUTION_ERROR and "3 passes are not offered" in error, error
    assert len(image.layers) == 2  # nothing added
