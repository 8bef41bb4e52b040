"""Batch restore: every image in a folder, with the current settings, into another folder.

`run_batch` is plain Python (it runs on the worker-link thread); `BatchDialog` is its window. Outputs
never replace an input, nor any existing file: a name that is taken gets a numbered suffix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PySide6.QtCore import Signal
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import imageio
from ..bridge import BridgeError, ExpertSpec, JobRequest, JobStatus, WorkerClient
from ..bridge.protocol import E_CANCELLED
from ..errors import LoraIRError
from .pixels import SAMPLE_OF_DTYPE, from_float, to_float

FORMATS = {"Same as input": ""} | {t.label: t.suffixes[0] for t in imageio.WRITE_TYPES}


@dataclass
class BatchJob:
    files: list[Path]
    output_dir: Path
    experts: ExpertSpec = field(default_factory=ExpertSpec)
    model: str | None = None
    tile: int | None = None
    ensemble: int = 1
    suffix: str = ""  # "" keeps each input's format; else e.g. ".png"
    quality: int = 95


@dataclass
class BatchProgress:
    index: int  # 0-based file being restored
    total: int
    name: str
    tile: int = 0
    tiles: int = 0


@dataclass
class BatchSummary:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (file, message, hint)
    notes: list[str] = field(default_factory=list)  # what a restored file lost, e.g. its other pages
    cancelled: bool = False
    seconds: float = 0.0

    def text(self) -> str:
        lines = [
            f"{len(self.written)} restored, {len(self.failed)} failed"
            + (", cancelled" if self.cancelled else "")
            + f" in {self.seconds:.1f} s."
        ]
        for name, message, hint in self.failed:
            lines.append(f"• {name}: {message}" + (f" — {hint}" if hint else ""))
        lines += [f"• {note}" for note in self.notes]
        return "\n".join(lines)


def output_path(src: Path, out_dir: Path, suffix: str) -> Path:
    """Never an existing file: a free name with -1, -2, ... added."""
    path = out_dir / imageio.output_name(src, suffix)
    n = 1
    while path.exists():
        path = out_dir / f"{src.stem}-{n}{path.suffix}"
        n += 1
    return path


def check_folders(input_dir: Path, output_dir: Path) -> str | None:
    """A reason the folders cannot be used, or None."""
    if not input_dir.is_dir():
        return f"the input folder {input_dir} does not exist"
    if not output_dir.is_dir():
        return f"the output folder {output_dir} does not exist"
    if input_dir.resolve() == output_dir.resolve():
        return "the output folder is the input folder: choose another one so no original is replaced"
    return None


def run_batch(
    client: WorkerClient,
    job: BatchJob,
    on_progress: Callable[[BatchProgress], None],
    should_cancel: Callable[[], bool],
) -> BatchSummary:
    summary = BatchSummary()
    t0 = time.monotonic()
    n = len(job.files)
    for i, src in enumerate(job.files):
        if should_cancel():
            summary.cancelled = True
            break
        on_progress(BatchProgress(i, n, src.name))
        try:
            img = imageio.read_image(src)
            h, w = img.rgb.shape[:2]
            px = from_float(img.rgb, img.bit_depth)
            req = JobRequest(
                px, w, h, "RGB", SAMPLE_OF_DTYPE[px.dtype], experts=job.experts, model=job.model, tile=job.tile,
                ensemble=job.ensemble, transfer=img.transfer
            )

            def report(st: JobStatus, i: int = i, name: str = src.name) -> None:
                on_progress(BatchProgress(i, n, name, st.tile, st.tiles))

            res = client.restore(req, on_progress=report, should_cancel=should_cancel)
            out = np.frombuffer(res.pixels, px.dtype).reshape(h, w, 3)
            dst = output_path(src, job.output_dir, job.suffix)
            imageio.write_image(
                dst, to_float(out), img.alpha, bit_depth=img.bit_depth, icc_profile=img.icc_profile,
                quality=job.quality, grey=img.grey, exif=img.exif, xmp=img.xmp,
            )
            summary.written.append(dst)
            if caveat := img.caveat(src.name):
                summary.notes.append(caveat)
        except BridgeError as exc:
            if exc.code == E_CANCELLED:
                summary.cancelled = True
                break
            summary.failed.append((src.name, exc.message, exc.hint))
        except LoraIRError as exc:
            summary.failed.append((src.name, exc.message, exc.hint))
        except (OSError, ValueError) as exc:
            summary.failed.append((src.name, str(exc), "check the file and the output folder"))
    on_progress(BatchProgress(len(summary.written) + len(summary.failed), n, ""))
    summary.seconds = time.monotonic() - t0
    return summary


class BatchDialog(QDialog):
    """Folder pickers, overall progress, cancel and a summary. The window runs the job through the
    worker link (`start_requested`) and feeds back progress and the summary."""

    start_requested = Signal(object)  # BatchJob without experts/model/tile (the window fills them)
    cancel_requested = Signal()

    def __init__(self, input_dir: str = "", output_dir: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Batch restore")
        self.setMinimumWidth(520)
        self.running = False
        lay = QVBoxLayout(self)
        form = QFormLayout()
        self.input_edit = QLineEdit(input_dir)
        self.output_edit = QLineEdit(output_dir)
        form.addRow("Input folder", self._with_browse(self.input_edit))
        form.addRow("Output folder", self._with_browse(self.output_edit))
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(FORMATS))
        form.addRow("Save as", self.format_combo)
        lay.addLayout(form)
        self.settings_label = QLabel("Uses the restore panel's current model and expert settings.")
        self.settings_label.setWordWrap(True)
        lay.addWidget(self.settings_label)
        self.overall = QProgressBar()
        self.overall.setFormat("Not started")
        self.current = QLabel("")
        lay.addWidget(self.overall)
        lay.addWidget(self.current)
        self.summary = QPlainTextEdit()
        self.summary.setReadOnly(True)
        self.summary.setPlaceholderText("A summary appears here when the batch ends.")
        lay.addWidget(self.summary, 1)
        self.buttons = QDialogButtonBox()
        self.start_button = self.buttons.addButton("Start", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton("Cancel", QDialogButtonBox.ButtonRole.RejectRole)
        self.close_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Close)
        self.start_button.clicked.connect(self._start)
        self.cancel_button.clicked.connect(self.cancel_requested)
        self.close_button.clicked.connect(self.close)
        self.cancel_button.setEnabled(False)
        lay.addWidget(self.buttons)

    def _with_browse(self, edit: QLineEdit) -> QWidget:
        w = QWidget()
        h = QHBoxLayout(w)
        h.setContentsMargins(0, 0, 0, 0)
        h.addWidget(edit, 1)
        b = QPushButton("Browse…")
        b.clicked.connect(lambda: self._browse(edit))
        h.addWidget(b)
        return w

    def _browse(self, edit: QLineEdit) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Choose a folder", edit.text())
        if folder:
            edit.setText(folder)

    def _start(self) -> None:
        src, dst = Path(self.input_edit.text()).expanduser(), Path(self.output_edit.text()).expanduser()
        problem = check_folders(src, dst)
        files = imageio.list_images(src) if problem is None else []
        if problem is None and not files:
            problem = f"no images in {src} (looked for {', '.join(sorted(imageio.READ_SUFFIXES))})"
        if problem:
            self.summary.setPlainText(problem)
            return
        self.summary.clear()
        self.set_running(True)
        self.overall.setRange(0, len(files))
        self.overall.setValue(0)
        self.start_requested.emit(BatchJob(files, dst, suffix=FORMATS[self.format_combo.currentText()]))

    def set_running(self, on: bool) -> None:
        self.running = on
        self.start_button.setEnabled(not on)
        self.cancel_button.setEnabled(on)
        for w in (self.input_edit, self.output_edit, self.format_combo):
            w.setEnabled(not on)

    def show_progress(self, p: BatchProgress) -> None:
        self.overall.setRange(0, max(1, p.total))
        self.overall.setValue(p.index)
        self.overall.setFormat(f"{p.index} of {p.total} images")
        tiles = f" — tile {p.tile} of {p.tiles}" if p.tiles > 1 else ""
        self.current.setText(f"Restoring {p.name}{tiles}" if p.name else "")

    def finish(self, summary: BatchSummary | None, error: str = "") -> None:
        self.set_running(False)
        self.current.setText("")
        self.summary.setPlainText(summary.text() if summary else error)
        if summary:
            self.overall.setFormat(f"{len(summary.written)} of {self.overall.maximum()} restored")

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.running:
            self.cancel_requested.emit()
        super().closeEvent(event)
