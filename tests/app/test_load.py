"""The app under load, reduced: concurrent clients on loopback upload images and ask for three
methods (one of the Score-CAM family), some cancelled midway. No request fails, every answer
equals a direct camlens.explain, and what the server keeps stays within its limits."""

from __future__ import annotations

import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_clients_under_load_get_correct_answers_and_memory_stays_bounded() -> None:
    import torch
    import uvicorn

    from camlens.app.server import create_app
    from camlens.app.state import AppState, Limits
    from camlens.models import build_model
    from camlens.testing.load import check_answers, run_load, sample_images

    torch.set_num_threads(1)
    limits = Limits(max_images=8, max_jobs=8, max_cached=6)
    state = AppState(build_model("demo"), batch_size=16, limits=limits, examples=2)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(state), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            if server.started:
                break
            time.sleep(0.05)
        images = sample_images(photos=1)
        seen = {"images": 0, "jobs": 0, "cache": 0}

        def tick(_elapsed: float) -> None:  # what the server holds, sampled during the run
            seen["images"] = max(seen["images"], len(state.images))
            seen["jobs"] = max(seen["jobs"], len(state.jobs))
            seen["cache"] = max(seen["cache"], len(state._cache))

        report = run_load(
            f"http://127.0.0.1:{port}",
            images,
            clients=4,
            seconds=4,
            cancel_fraction=0.3,
            seed=1,
            on_tick=tick,
        )
    finally:
        server.should_exit = True
        thread.join(10)
        state.close()
    assert report.failures == []
    summary = report.summary()
    assert summary["upload"]["count"] >= 4 and report.jobs_done >= 1
    assert check_answers(report, images) == []
    assert seen["images"] <= 2 + limits.max_images
    assert seen["jobs"] <= limits.max_jobs and seen["cache"] <= limits.max_cached
