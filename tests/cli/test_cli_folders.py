"""`lorair restore` of several files or a folder into an output folder: the model loaded once, every
output checked before the first restore, a damaged photo reported without stopping the others,
and no original ever written over."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lorair_desktop import imageio
from lorair_desktop.cli import main


def _photo(path: Path, seed: int, size: tuple[int, int] = (48, 40)) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)).save(path)
    return path


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    rc = main(args)
    out, err = capsys.readouterr()
    return rc, out, err


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_folder_restores_into_another_in_each_photos_own_format(small_model_path, tmp_path, capsys) -> None:
    src = tmp_path / "shoot"
    src.mkdir()
    _photo(src / "a.jpg", 1)
    _photo(src / "b.heic", 2)
    _photo(src / "c.bmp", 3)  # BMP is read only: its result is a PNG
    (src / "broken.png").write_bytes(b"\x89PNG not really")
    (src / "notes.txt").write_text("not an image")
    before = _contents(src)
    out = tmp_path / "restored"  # made by the restore
    rc, stdout, err = _run(["restore", str(src), "-o", str(out), "--model", str(small_model_path), "--json"], capsys)
    assert rc == 1  # one photo failed
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.heic", "c.png"]
    assert "error: " in err and "broken.png" in err and "3 restored, 1 failed" in err and "Traceback" not in err
    reports = {Path(r["input"]).name: r for r in json.loads(stdout)}
    assert set(reports) == {"a.jpg", "b.heic", "broken.png", "c.bmp"}
    assert "error" in reports["broken.png"] and reports["a.jpg"]["output"] == str(out / "a.jpg")
    assert imageio.read_image(out / "b.heic").source_format == "HEIF"
    assert _contents(src) == before  # the originals are untouched


def test_every_output_is_checked_before_the_first_restore(small_model_path, tmp_path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    a, b = _photo(src / "a.jpg", 1), _photo(src / "b.png", 2)
    (out / "b.png").write_bytes(b"keep me")
    args = ["restore", str(a), str(b), "-o", str(out), "--model", str(small_model_path)]
    rc, _, err = _run(args, capsys)
    assert rc != 0 and "b.png already exists" in err
    assert _contents(out) == {"b.png": b"keep me"}  # nothing was written, a.jpg included

    rc, _, err = _run([*args, "--format", "png"], capsys)  # a.png would be new, b.png still exists
    assert rc != 0 and _contents(out) == {"b.png": b"keep me"}
    _photo(src / "a.png", 3)
    rc, _, err = _run(["restore", str(src), "-o", str(tmp_path / "o2"), "--format", "png",
                       "--model", str(small_model_path)], capsys)
    assert rc != 0 and "would both be written to" in err and not (tmp_path / "o2").exists()

    rc, _, _ = _run([*args, "--force", "-q"], capsys)  # --force replaces results, never inputs
    assert rc == 0 and imageio.read_image(out / "b.png").size == (48, 40)


def test_an_original_is_never_a_result(small_model_path, tmp_path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    _photo(src / "a.png", 1)
    before = _contents(src)
    for extra in ([], ["--force"]):
        rc, _, err = _run(["restore", str(src), "-o", str(src), "--model", str(small_model_path), *extra], capsys)
        assert rc != 0 and "would replace the input" in err and "originals are never written over" in err
    assert _contents(src) == before


def test_folder_mode_errors(small_model_path, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    a = _photo(tmp_path / "a.png", 1)
    cases = [
        (["restore", str(empty), "-o", str(tmp_path / "o")], "no images in"),
        (["restore", str(a), str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")], "missing.png does not exist"),
        (["restore", str(a), str(a), "-o", str(a)], "need an output folder"),
        (["restore", str(a), "-o", str(tmp_path / "o"), "--format", "gif"], "cannot write '.gif' files"),
        (["restore", str(a), "-o", str(tmp_path / "x.png"), "--format", "png"], "--format names the format"),
    ]
    for args, message in cases:
        rc, _, err = _run([*args, "--model", str(small_model_path)], capsys)
        assert rc != 0 and message in err and "Traceback" not in err, (args, err)
    assert not (tmp_path / "o").exists()


def test_one_file_into_an_existing_folder_keeps_its_name(small_model_path, tmp_path, capsys) -> None:
    a = _photo(tmp_path / "a.webp", 1)
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = _run(["restore", str(a), "-o", str(out), "--model", str(small_model_path), "--format", "tif"],
                      capsys)
    assert rc == 0 and "1 restored, 0 failed" in err
    assert imageio.read_image(out / "a.tif").source_format == "TIFF"
    rc, _, err = _run(["restore", str(a), "-o", f"{tmp_path / 'new'}/", "--model", str(small_model_path), "-q"],
                      capsys)  # a trailing slash names a folder to make
    assert rc == 0 and err == "" and imageio.read_image(tmp_path / "new" / "a.webp").size == (48, 40)
