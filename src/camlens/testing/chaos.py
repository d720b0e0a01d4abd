"""Chaos for ``camlens batch``: kill a job at random moments and at chosen points, restart it,
and check that the output equals an uninterrupted run's, row for row, with no temporary file.

A job runs in a child process (``python -m camlens.testing.chaos child POINT N -- ARGS``) that
is ``camlens batch ARGS`` with, when POINT is not ``none``, ``os.replace`` wrapped so that the
child SIGKILLs itself at the N-th rename of a kind, *before* it (the temporary file is whole
on disk, the final name absent) or *after* it (the file is in place, nothing after it ran):

- ``shard-before`` / ``shard-after``: the rename of a shard into place;
- ``manifest-before`` / ``manifest-after``: the manifest update (N=1 at the start of a run,
  N=2 at its end);
- ``errors-before``: the rewrite of ``errors.csv``;
- ``shard-term``: SIGTERM (not SIGKILL) right after the N-th shard rename, so that the clean
  stop is tested at a known moment too.

:func:`chaos` runs a reference job, then the same job into another folder killed at every
point above, at ``kills`` random moments (SIGKILL) and once with SIGTERM, restarting after
each, then once to completion, and compares. ``benchmarks/chaos.py`` is its command line.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POINTS = (
    "shard-before",
    "shard-after",
    "manifest-before",
    "manifest-after",
    "errors-before",
    "shard-term",
)
_PATTERNS = {"shard": "shard-", "manifest": "manifest.json", "errors": "errors.csv"}


def _install(point: str, nth: int) -> None:
    """Wrap os.replace so that this process SIGKILLs itself at the ``nth`` matching rename."""
    kind, when = point.split("-")
    prefix = _PATTERNS[kind]
    real = os.replace
    seen = [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        hit = Path(dst).name.startswith(prefix) and Path(dst).parent.name != "overlays"
        if hit:
            seen[0] += 1
        if hit and seen[0] == nth and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *args, **kwargs)
        if hit and seen[0] == nth and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        if hit and seen[0] == nth and when == "term":
            os.kill(os.getpid(), signal.SIGTERM)

    os.replace = replace  # type: ignore[assignment]


def _child(argv: list[str]) -> int:
    point, nth = argv[0], int(argv[1])
    if point != "none":
        _install(point, nth)
    from camlens.cli import main

    return main(["batch", *argv[3:]])


@dataclass
class Attempt:
    """One run of the job: how it was stopped and what it left."""

    how: str  # "none", "SIGKILL at 3.2 s", "SIGKILL at shard-before #2", "SIGTERM at 4.0 s"
    returncode: int
    seconds: float
    shards_after: int
    temporaries_after: int
    stderr_tail: str = ""
    shard_times: list[float] = field(default_factory=list)  # when each new shard appeared


@dataclass
class Report:
    """What :func:`chaos` did and found."""

    images: int
    reference_seconds: float
    attempts: list[Attempt] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)

    @property
    def killed(self) -> int:
        return sum(a.returncode == -signal.SIGKILL for a in self.attempts)


def _env() -> dict[str, str]:
    import camlens

    src = str(Path(camlens.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def temporaries(out: Path) -> list[Path]:
    """What a run may leave half-written (``.NAME.tmpPID``), in OUT and OUT/overlays."""
    return sorted(out.rglob(".*.tmp*")) if out.is_dir() else []


def run_job(
    args: list[str],
    out: Path,
    point: str = "none",
    nth: int = 1,
    after: float | None = None,
    sig: int = signal.SIGKILL,
    timeout: float = 3600,
    zygote: Zygote | None = None,
) -> Attempt:
    """Run ``camlens batch ARGS --out OUT`` in a child; kill it at ``point`` (the ``nth``
    matching rename) or with ``sig`` ``after`` seconds (if it is still running).

    ``zygote``: fork the job from it instead of starting a fresh interpreter (no import
    cost; what the test suite uses)."""
    start = time.monotonic()
    how = "none" if point == "none" else f"SIGKILL at {point} #{nth}"
    if point.endswith("-term"):
        how = f"SIGTERM at {point} #{nth}"
    if zygote is not None:
        proc: Any = zygote.start([*args, "--out", str(out)], point, nth)
    else:
        cmd = [sys.executable, "-m", "camlens.testing.chaos", "child", point, str(nth), "--"]
        cmd += [*args, "--out", str(out)]
        proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    shard_times: list[float] = []
    before = len(list(out.glob("shard-*.parquet"))) if out.is_dir() else 0
    try:
        deadline = start + (after if after is not None else timeout)
        while proc.poll() is None and time.monotonic() < deadline:
            now = len(list(out.glob("shard-*.parquet"))) if out.is_dir() else 0
            shard_times += [time.monotonic() - start] * (now - before - len(shard_times))
            time.sleep(0.01)
        if after is not None and proc.poll() is None:
            proc.send_signal(sig)
            how = f"{signal.Signals(sig).name} at {after:.2f} s"
        _, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shards = len(list(out.glob("shard-*.parquet"))) if out.is_dir() else 0
    return Attempt(
        how,
        proc.returncode,
        time.monotonic() - start,
        shards,
        len(temporaries(out)),
        "\n".join(err.decode(errors="replace").strip().splitlines()[-2:]),
        shard_times,
    )


class Zygote:
    """A fresh interpreter that has imported torch and camlens once and forks one child per
    job on request: restarts cost milliseconds instead of seconds of imports. It never runs
    a torch operation itself, so its forks inherit no OpenMP thread pool (a fork after torch
    ran one can hang). Use as a context manager; ``start(...)`` returns a Popen-like handle.
    """

    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "camlens.testing.chaos", "zygote"]
        self.proc = subprocess.Popen(
            cmd, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if line.strip() != "ready":
            raise RuntimeError(f"the chaos zygote did not start: {line!r}")

    def start(self, args: list[str], point: str, nth: int) -> _Forked:
        import tempfile

        err = tempfile.NamedTemporaryFile(delete=False)
        request = {"args": args, "point": point, "nth": nth, "err": err.name}
        self.proc.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        reply = json.loads(self.proc.stdout.readline())  # type: ignore[union-attr]
        return _Forked(self, int(reply["pid"]), err)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            self.proc.wait(timeout=60)

    def __enter__(self) -> Zygote:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


def _zygote() -> int:
    import torch

    torch.set_num_threads(1)
    import tempfile

    import tqdm
    import tqdm.auto

    tqdm.tqdm.monitor_interval = 0  # no monitor thread in the zygote (forks copy no threads)

    import pyarrow.parquet  # noqa: F401
    import torchvision.transforms.functional  # noqa: F401

    import camlens.batch.local
    import camlens.cli
    import camlens.demo.model
    import camlens.demo.shapes
    import camlens.io
    import camlens.models

    # Warm up (lazy imports, first-call costs) with one tiny job on one thread: no OpenMP
    # pool is started, so the forks below stay safe.
    with tempfile.TemporaryDirectory() as tmp:
        camlens.batch.run("shapes:2", tmp, "demo", workers=0, shard_size=2, progress=False)
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # tqdm's lock is a multiprocessing semaphore shared by every fork: a sibling
                # SIGKILLed while holding it would block this child forever. Each child gets a
                # lock of its own.
                lock = threading.RLock()
                for cls in {tqdm.std.tqdm, tqdm.auto.tqdm}:
                    cls.set_lock(lock)
                fd = os.open(request["err"], os.O_WRONLY | os.O_TRUNC)
                os.dup2(fd, 2)
                os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                code = _child([request["point"], str(request["nth"]), "--", *request["args"]])
            finally:
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
    return 0


class _Forked:
    """A job forked by the :class:`Zygote`, with the parts of Popen that run_job uses."""

    def __init__(self, zygote: Zygote, pid: int, err: Any):
        self.zygote, self.pid, self._err = zygote, pid, err
        self.returncode: int | None = None

    def poll(self) -> int | None:
        import select

        out = self.zygote.proc.stdout
        if self.returncode is None and select.select([out], [], [], 0)[0]:
            self.returncode = int(json.loads(out.readline())["rc"])  # type: ignore[union-attr]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired("camlens batch", timeout or 0)
            time.sleep(0.005)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[bytes, bytes]:
        self.wait(timeout)
        data = Path(self._err.name).read_bytes()
        self._err.close()
        os.unlink(self._err.name)
        return b"", data


def compare(out: Path, ref: Path) -> list[str]:
    """The differences between two batch outputs: rows (every column, in order), errors.csv,
    the job in the manifest, completeness, file names, temporaries. Empty when equal."""
    import camlens.batch

    diffs: list[str] = []
    a, b = camlens.batch.read(out), camlens.batch.read(ref)
    if not a.complete:
        diffs.append(f"{out}: incomplete ({len(a.files)}/{a.manifest.get('shards')} shards)")
    if not a.manifest.get("complete"):
        diffs.append(f"{out}: manifest.json does not say complete")
    if a.manifest.get("job") != b.manifest.get("job"):
        diffs.append("the manifests hold different jobs")
    ta, tb = a.table(), b.table()
    if ta.num_rows != tb.num_rows:
        diffs.append(f"{ta.num_rows} rows, the reference has {tb.num_rows}")
    elif not ta.equals(tb):
        for name in ta.column_names:
            if not ta[name].equals(tb[name]):
                diffs.append(f"column {name!r} differs")
    with open(out / "errors.csv", newline="") as f, open(ref / "errors.csv", newline="") as g:
        if list(csv.reader(f)) != list(csv.reader(g)):
            diffs.append("errors.csv differs")
    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    ref_names = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*"))
    if names != ref_names:
        extra = sorted(set(names) ^ set(ref_names))[:5]
        diffs.append(f"the files differ from the reference's: {extra}")
    if temporaries(out):
        diffs.append(f"temporary files left: {temporaries(out)[:3]}")
    return diffs


def chaos(
    args: list[str],
    out: Path,
    ref: Path,
    kills: int = 10,
    points: tuple[str, ...] = ("shard-before", "shard-after", "manifest-before", "errors-before"),
    sigterm: bool = True,
    seed: int = 0,
    log: Any = None,
    zygote: Zygote | None = None,
) -> Report:
    """The chaos test (see the module docstring). ``args``: ``camlens batch`` arguments
    without ``--out``; ``ref`` gets the uninterrupted run.

    Of the ``kills`` SIGKILLs, one per entry of ``points`` lands exactly there (N drawn at
    random among the first renames of its kind; a ``-term`` point sends SIGTERM instead and
    does not count); the rest, and the ``sigterm`` SIGTERM, at random moments
    drawn uniformly over a share of the work left (timed from the reference run). A random
    moment can fall after the job ended: ``Report.killed`` counts the kills that landed.
    """
    rng = random.Random(seed)
    say = log or (lambda _m: None)
    for folder in (out, ref):
        if folder.exists() and not (folder / "manifest.json").is_file():
            raise RuntimeError(f"{folder} exists and is not a batch output")
    first = run_job(args, ref, zygote=zygote)
    if first.returncode != 0:
        raise RuntimeError(f"the reference run failed: {first.stderr_tail}")
    manifest = json.loads((ref / "manifest.json").read_text())
    n_shards = int(manifest["shards"])
    report = Report(int(manifest["job"]["images"]), first.seconds)
    times = first.shard_times or [first.seconds]
    startup = times[0]  # start-up and the first shard
    per_shard = (first.seconds - startup) / max(1, n_shards - 1)
    say(
        f"reference: {report.images} images, {n_shards} shards, {first.seconds:.1f} s "
        f"(first shard after {startup:.1f} s, then {per_shard:.2f} s per shard)"
    )

    # Shard renames first (they need shards left to write), then random moments (while
    # work is left), then the renames of errors.csv and the manifest (made by every run).
    timed: list[tuple[str, int, float | None, int]] = [
        ("none", 1, -1.0, signal.SIGKILL)
        for _ in range(max(0, kills - sum(not p.endswith("-term") for p in points)))
    ]
    if sigterm:
        timed.append(("none", 1, -1.0, signal.SIGTERM))
    rng.shuffle(timed)
    shard_points = [(p, 0, None, signal.SIGKILL) for p in points[:kills] if p.startswith("shard")]
    last = [(p, 0, None, signal.SIGKILL) for p in points[:kills] if not p.startswith("shard")]
    plan = shard_points + timed + last
    for k, (point, nth, after, sig) in enumerate(plan):
        done = len(list(out.glob("shard-*.parquet"))) if out.is_dir() else 0
        if point.startswith("shard"):  # the first or second rename this run makes
            nth = rng.randint(1, max(1, min(2, n_shards - done)))
        elif point != "none":  # manifest: at the start (1) or the end (2) of the run
            nth = rng.randint(1, 2) if point.startswith("manifest") else 1
        if after is not None:  # a random moment over a share of the work left
            share = min(1.0, 2.0 / (len(shard_points) + len(timed) - k + 1))
            after = rng.uniform(0.2 * startup, startup + per_shard * (n_shards - done) * share)
        attempt = run_job(args, out, point, nth, after, sig, zygote=zygote)
        report.attempts.append(attempt)
        say(
            f"{attempt.how}: rc {attempt.returncode}, {attempt.shards_after}/{n_shards} shards, "
            f"{attempt.temporaries_after} temporaries, {attempt.seconds:.1f} s"
        )
    final = run_job(args, out, zygote=zygote)
    report.attempts.append(final)
    say(f"final run: rc {final.returncode}, {final.seconds:.1f} s")
    if final.returncode != 0:
        report.differences.append(f"the final run failed: {final.stderr_tail}")
    else:
        report.differences.extend(compare(out, ref))
    return report


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(_child(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "zygote":
        sys.exit(_zygote())
    print("usage: see benchmarks/chaos.py", file=sys.stderr)
    sys.exit(2)
