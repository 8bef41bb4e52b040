"""Undo/redo of pixel edits as before/after patches: undo writes back the exact original bytes.

Pure Python + numpy (no Qt) so it is tested on its own. A byte budget drops the oldest steps, so a
long session on a big photo cannot eat the machine's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BUDGET = 1 << 30  # 1 GiB of patches


@dataclass
class Step:
    label: str
    x: int
    y: int
    before: np.ndarray  # (h, w, C) patch as it was
    after: np.ndarray  # (h, w, C) patch as the step left it

    @property
    def nbytes(self) -> int:
        return self.before.nbytes + self.after.nbytes


class History:
    def __init__(self, budget_bytes: int = DEFAULT_BUDGET) -> None:
        self.budget = budget_bytes
        self.steps: list[Step] = []
        self.index = 0  # steps[:index] are applied
        self.clean_index: int | None = 0  # None: the saved state was dropped and cannot come back

    def push(self, step: Step) -> None:
        del self.steps[self.index :]
        if self.clean_index is not None and self.clean_index > self.index:
            self.clean_index = None  # the saved state was on the redo branch we just cut
        self.steps.append(step)
        self.index += 1
        # Keep at least the newest step even if it alone is over budget.
        while len(self.steps) > 1 and sum(s.nbytes for s in self.steps) > self.budget:
            self.steps.pop(0)
            self.index -= 1
            if self.clean_index is not None:
                self.clean_index = self.clean_index - 1 if self.clean_index > 0 else None

    def can_undo(self) -> bool:
        return self.index > 0

    def can_redo(self) -> bool:
        return self.index < len(self.steps)

    def undo(self) -> Step | None:
        if not self.can_undo():
            return None
        self.index -= 1
        return self.steps[self.index]

    def redo(self) -> Step | None:
        if not self.can_redo():
            return None
        self.index += 1
        return self.steps[self.index - 1]

    def undo_label(self) -> str:
        return self.steps[self.index - 1].label if self.can_undo() else ""

    def redo_label(self) -> str:
        return self.steps[self.index].label if self.can_redo() else ""

    @property
    def dirty(self) -> bool:
        return self.clean_index != self.index

    def mark_clean(self) -> None:
        self.clean_index = self.index
