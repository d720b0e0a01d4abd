"""The Ray engine when a worker actor is SIGKILLed mid-shard: Ray restarts it and retries the
batch; the output equals the local engine's, row for row, with no temporary file."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import camlens.batch
from camlens.testing.chaos import compare, temporaries

ray = pytest.importorskip("ray")


@pytest.mark.slow
def test_a_worker_actor_killed_mid_shard(tmp_path, monkeypatch) -> None:
    from camlens.batch import ray_engine

    marker = str(tmp_path / "killed-once")

    class Dying(ray_engine._Explain):  # defined here, so Ray ships it by value
        calls = 0

        def __call__(self, batch):  # type: ignore[no-untyped-def]
            Dying.calls += 1
            if Dying.calls == 2 and not os.path.exists(marker):  # mid-shard, once
                Path(marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
            return super().__call__(batch)

    kw = {"shard_size": 12, "progress": False}
    ref = tmp_path / "local"
    camlens.batch.run("shapes:24", ref, "demo", workers=0, **kw)
    monkeypatch.setattr(ray_engine, "_Explain", Dying)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        out = tmp_path / "ray"
        camlens.batch.run("shapes:24", out, "demo", engine="ray", batch_size=4, **kw)
    finally:
        ray.shutdown()
    assert os.path.exists(marker)  # the actor was killed
    assert temporaries(out) == []
    assert compare(out, ref) == []
