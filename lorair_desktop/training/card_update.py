"""Refresh a shipped model card in place: new weights or a new evaluation, the hand-kept text kept.

    python -m lorair_desktop.training.card_update CARD.md [--weights NAME] [--eval EVAL] \
        [--whole EVAL] [--history TEXT | --history-file FILE]

``export`` writes a whole card from one run; a shipped model's card then grows by hand (its
training history, notes beside its tables) and would lose all that to a fresh card. This rewrites
only the parts that measurements own:

- ``--weights NAME``: the ``- file:`` and ``- exported`` lines, from the manifest entry of NAME
  and the metadata of its weights file (export time, source checkpoint, merged experts' sources);
- ``--eval``: the Validation section from its first ``| row |`` table to the section's end (rows,
  worst crops, targets, router confusion, the footnote: ``evaluate.to_markdown``) and the Status
  section; text above the table stays;
- ``--whole``: the rows table of the ``### Whole photos`` subsection (``lorair eval --crop 0``),
  the paragraph above it and any text below it kept;
- ``--history``: one entry appended to the ``## Training history`` list (made before
  ``## Hardware`` where the card has none); an entry already there is not added twice.

EVAL is an ``eval.json`` or its folder; a ``--compare`` report's comparison part is left out of
the tables. The card is written atomically, and only after every part was found.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_text
from ..core.checkpoint import read_manifest, read_metadata, weights_dir
from ..errors import LoraIRError, report_error
from .evaluate import to_markdown
from .export import load_eval, status_lines, weights_lines

__all__ = ["update_model_card"]

ROWS_HEADER = "| row |"


def _section(lines: list[str], heading: str, card: Path) -> tuple[int, int]:
    """(first body line, end) of the section under the line ``heading``: up to the next heading of
    the same or a higher level."""
    try:
        start = lines.index(heading) + 1
    except ValueError:
        raise LoraIRError(f"{card.name} has no '{heading}' heading",
                          "refresh a card `export` wrote, or write the card anew with `export`") from None
    level = len(heading) - len(heading.lstrip("#"))
    end = start
    while end < len(lines):
        hashes = len(lines[end]) - len(lines[end].lstrip("#"))
        if 0 < hashes <= level and lines[end][hashes:hashes + 1] == " ":
            break
        end += 1
    return start, end


def _table_start(lines: list[str], start: int, end: int, card: Path, where: str) -> int:
    for i in range(start, end):
        if lines[i].startswith(ROWS_HEADER):
            return i
    raise LoraIRError(f"{card.name}: the {where} section has no rows table", "write the card anew with `export`")


def _weights_info(name: str) -> dict[str, Any]:
    entry = read_manifest().get(name)
    if entry is None:
        raise LoraIRError(f"the weights manifest has no model '{name}'", "export the model first")
    return {**read_metadata(weights_dir() / entry["file"]), **entry}


def _replace_table(lines: list[str], at: int, table: list[str]) -> None:
    end = at
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[at:end] = table


def update_model_card(
    card: Path,
    weights: str | None = None,
    crops_eval: Path | None = None,
    whole_eval: Path | None = None,
    history: str | None = None,
) -> list[str]:
    """Refresh ``card`` in place (see the module's docstring). Returns what changed, in words."""
    card = Path(card)
    try:
        lines = card.read_text(encoding="utf-8").split("\n")
    except OSError as exc:
        raise LoraIRError(f"cannot read the model card {card}: {exc}", "pass the card's path") from None
    done: list[str] = []
    if weights is not None:
        info = _weights_info(weights)
        at = next((i for i, line in enumerate(lines) if line.startswith("- file: `")), None)
        if at is None or at + 1 >= len(lines) or not lines[at + 1].startswith("- exported "):
            raise LoraIRError(f"{card.name} has no '- file:' and '- exported' lines", "write the card anew")
        lines[at:at + 2] = weights_lines(info)
        done.append(f"weights {info['file']} (sha256 {info['sha256'][:12]}…)")
    if crops_eval is not None:
        ev = load_eval(crops_eval)
        start, end = _section(lines, "## Validation", card)
        table = _table_start(lines, start, end, card, "Validation")
        # the generated block ends where the section's next subsection (or section) starts
        sub = next((i for i in range(table, end) if lines[i].startswith("### ")), end)
        lines[table:sub] = [*to_markdown(ev).rstrip().split("\n"), ""]
        s_start, s_end = _section(lines, "## Status", card)
        lines[s_start:s_end] = ["", *status_lines(ev), ""]
        done.append(f"validation tables and status from {crops_eval}")
    if whole_eval is not None:
        ev = load_eval(whole_eval)
        start, end = _section(lines, "### Whole photos", card)
        at = _table_start(lines, start, end, card, "Whole photos")
        _replace_table(lines, at, to_markdown(ev).split("\n\n")[0].split("\n"))
        done.append(f"whole-photo table from {whole_eval}")
    if history:
        entry = history.strip()
        entry = entry if entry.startswith("- ") else f"- {entry}"
        if entry not in lines:
            if "## Training history" in lines:
                start, end = _section(lines, "## Training history", card)
                last = max((i for i in range(start, end) if lines[i].strip()), default=start)
                lines.insert(last + 1, entry)
            else:
                hw = _section(lines, "## Hardware", card)[0] - 1
                lines[hw:hw] = ["## Training history", "", entry, ""]
            done.append("a training-history entry")
    text = "\n".join(lines).rstrip("\n") + "\n"
    write_text(card, text)
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lorair_desktop.training.card_update", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("card", type=Path, help="the model card (Markdown) to refresh")
    p.add_argument("--weights", metavar="NAME", help="refresh the file lines from this manifest entry")
    p.add_argument("--eval", type=Path, help="eval.json (or its folder) of the 256² crops")
    p.add_argument("--whole", type=Path, help="eval.json (or its folder) of `lorair eval --crop 0`")
    entry = p.add_mutually_exclusive_group()
    entry.add_argument("--history", metavar="TEXT", help="a training-history entry")
    entry.add_argument("--history-file", type=Path, metavar="FILE", help="a file holding the entry")
    args = p.parse_args(argv)
    history = args.history
    if args.history_file is not None:
        try:
            history = args.history_file.read_text(encoding="utf-8")
        except OSError as exc:
            p.error(f"cannot read --history-file: {exc}")
    if not any((args.weights, args.eval, args.whole, history)):
        p.error("nothing to refresh: give --weights, --eval, --whole or --history")
    try:
        done = update_model_card(args.card, args.weights, args.eval, args.whole, history)
    except LoraIRError as exc:
        return report_error(exc)
    print(f"{args.card}: " + "; ".join(done) if done else f"{args.card}: unchanged")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
