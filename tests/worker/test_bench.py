"""The round-trip benchmark runs end to end (timing is printed by `lorair bench`, never asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lorair_desktop.worker.bench import bench_roundtrip


@pytest.mark.slow
def test_bench_roundtrip_reports_a_ratio(small_model_path: Path) -> None:
    r = bench_roundtrip(megapixels=0.01, model=str(small_model_path), device="cpu", order="BGRA", threads=1)
    assert r["width"] == r["height"] == 100 and r["layout"] == "BGRA/u8" and r["device"] == "cpu"
    assert r["inprocess_s"] > 0 and r["worker_s"] > 0 and r["transport_s"] >= 0
    assert r["ratio"] == pytest.approx(r["worker_s"] / r["inprocess_s"], rel=1e-2)
    assert r["weights"] == "checkpoint"
