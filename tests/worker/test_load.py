"""8 concurrent clients x 10 jobs with distinct inputs: each gets its own correct result, nothing is
lost, and the worker's memory settles."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import psutil

from lorair_desktop.bridge import JobRequest, JobResult, WorkerClient

from .conftest import SMALL_H, SMALL_W, WorkerProc
from .test_roundtrip import compare, host_image, reference

CLIENTS, JOBS = 8, 10


def run_round(client: WorkerClient, round_no: int) -> dict[tuple[int, int], tuple[np.ndarray, np.ndarray, JobResult]]:
    results: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, JobResult]] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    # The left part of each image is restored; the right part is masked out and must come back
    # bit-exact: random pixels there identify the job, so a swapped result cannot go unnoticed.
    mask = np.zeros((SMALL_H, SMALL_W), np.uint8)
    mask[:, : SMALL_W // 2] = 255

    def one_client(ci: int) -> None:
        own = WorkerClient(client.host, client.port, client.token, timeout=60.0)
        try:
            for j in range(JOBS):
                img = host_image("BGRA", "u8", SMALL_H, SMALL_W, seed=100_000 * round_no + 100 * ci + j)
                res = own.restore(
                    JobRequest(img.tobytes(), SMALL_W, SMALL_H, "BGRA", "u8", mask=mask.tobytes()), poll=0.2
                )
                with lock:
                    results[(ci, j)] = (img, mask, res)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one_client, args=(ci,)) for ci in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return results


def test_concurrent_clients_get_their_own_results(client: WorkerClient, worker_proc: WorkerProc, restorer: Any) -> None:
    proc = psutil.Process(worker_proc.pid)
    kept = client.info().queue["kept"]
    rss: list[int] = []
    for round_no in range(2):
        results = run_round(client, round_no)
        assert len(results) == CLIENTS * JOBS  # nothing lost
        for img, _mask, res in results.values():
            out = np.frombuffer(res.pixels, np.uint8).reshape(img.shape)
            assert np.array_equal(out[:, SMALL_W // 2 :], img[:, SMALL_W // 2 :])
            assert (res.header.width, res.header.height, res.header.order) == (SMALL_W, SMALL_H, "BGRA")
        # A sample checked in full against the in-process core (all of them would double the runtime).
        for key in [(0, 0), (3, 7), (7, 9), (5, 2)]:
            img, mask, res = results[key]
            want, _ = reference(restorer, img, "BGRA", "u8", mask)
            compare(res.pixels, want, "u8")
        rss.append(proc.memory_info().rss)
    queue = client.info().queue
    assert queue["queued"] == 0 and queue["running"] == 0
    assert queue["kept"] == kept  # restore() deletes its job once it has the pixels
    # Memory settles: a second round of 80 jobs does not grow the worker noticeably.
    assert rss[1] - rss[0] < 64 * 2**20, [r / 2**20 for r in rss]
