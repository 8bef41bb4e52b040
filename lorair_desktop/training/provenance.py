"""Which run each expert's adapters came from, as a checkpoint's metadata records it.

`merge_experts` puts experts of one run checkpoint into another; the result records, per expert,
the sha256 of the file its adapters came from (``experts_source_sha256``) and, for a blend, the
share W taken from it (``experts_blend``). `lorair train --init-from` carries the record into the
new run for the experts the run leaves as they are, and `export` into the shipped file and card.
Both values are JSON held in string metadata, so a file edited or written by other tools is
validated here before anything trusts it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..core.checkpoint import read_metadata
from ..errors import LoraIRError

SOURCES_KEY = "experts_source_sha256"
BLEND_KEY = "experts_blend"
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Provenance:
    sources: dict[str, str] = field(default_factory=dict)  # expert -> sha256 of the file its adapters came from
    blends: dict[str, float] = field(default_factory=dict)  # expert -> share W of that file's adapters (< 1)

    @classmethod
    def from_meta(cls, meta: dict[str, str], where: str, experts: Iterable[str] | None = None) -> Provenance:
        """The record in ``meta`` (none: empty), checked: expert names (of ``experts`` where given),
        64-hex sha256 values, blend shares in (0, 1) for experts that have a source."""
        known = None if experts is None else set(experts)

        def bad(why: str) -> LoraIRError:
            return LoraIRError(f"{where}: its merged-experts record is malformed ({why})",
                               "merge the experts again with python -m lorair_desktop.training.merge_experts")

        def parsed(key: str) -> dict:
            try:
                value = json.loads(meta.get(key) or "{}")
            except ValueError as exc:
                raise bad(f"{key} is not JSON: {exc}") from None
            if not isinstance(value, dict):
                raise bad(f"{key} is not a mapping of expert names")
            unknown = [k for k in value if known is not None and k not in known]
            if unknown:
                raise bad(f"{key} names {', '.join(map(str, unknown))}, not an expert of this model")
            return value

        sources, blends = parsed(SOURCES_KEY), parsed(BLEND_KEY)
        for expert, sha in sources.items():
            if not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
                raise bad(f"the source of {expert} is not a sha256: {sha!r}")
        for expert, w in blends.items():
            if expert not in sources:
                raise bad(f"{expert} is blended but has no source")
            if isinstance(w, bool) or not isinstance(w, int | float) or not 0.0 < w < 1.0:
                raise bad(f"the blend share of {expert} is not between 0 and 1: {w!r}")
        return cls(dict(sources), {k: float(v) for k, v in blends.items()})

    @classmethod
    def of_file(cls, path: Path, experts: Iterable[str] | None = None) -> Provenance:
        return cls.from_meta(read_metadata(path), path.name, experts)

    def only(self, experts: Iterable[str]) -> Provenance:
        """The record of ``experts`` alone (those a training run left as they were)."""
        keep = set(experts)
        return Provenance({k: v for k, v in self.sources.items() if k in keep},
                          {k: v for k, v in self.blends.items() if k in keep})

    def with_source(self, experts: Iterable[str], sha256: str, blend: float = 1.0) -> Provenance:
        """``experts`` now come from the file ``sha256`` (``blend`` < 1: that share of it)."""
        names = list(experts)
        sources = {**self.sources, **dict.fromkeys(names, sha256)}
        blends = {k: v for k, v in self.blends.items() if k not in names}
        if blend < 1.0:
            blends.update(dict.fromkeys(names, blend))
        return Provenance(sources, blends)

    def to_meta(self) -> dict[str, str]:
        meta = {SOURCES_KEY: json.dumps(self.sources, sort_keys=True)} if self.sources else {}
        if self.blends:
            meta[BLEND_KEY] = json.dumps(self.blends, sort_keys=True)
        return meta


def carried(path: Path, kept: Iterable[str]) -> dict[str, str]:
    """Metadata for a run checkpoint about to replace ``path``: the record of the experts ``kept``
    as they were (a stage that trains an expert makes its adapters this run's own)."""
    return Provenance.of_file(path).only(kept).to_meta() if path.is_file() else {}
