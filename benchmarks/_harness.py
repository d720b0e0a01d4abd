"""Timing and peak-memory helpers shared by the benchmarks (not part of the package).

Time: every contender is run round-robin (one call each per round) so that drift of the machine
hits all of them alike; the figure is the median over the rounds. Memory: the peak resident set
size during one call minus the RSS just before it, sampled by a background thread every 0.5 ms.
glibc keeps freed blocks, which would hide later peaks, so memory is measured in a child process
of the same script run with MALLOC_MMAP_THRESHOLD_ set: every large block is then mmapped and
returned on free. Timing stays in the parent, with the ordinary allocator (mmapping every block
would add page faults to every call and distort the times).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")


MEMORY_CHILD = "CAMLENS_BENCH_MEMORY_CHILD"


def memory_child_env() -> dict[str, str]:
    """The environment of the memory-measuring child: large allocations mmapped."""
    return dict(
        os.environ,
        MALLOC_MMAP_THRESHOLD_="65536",
        MALLOC_TRIM_THRESHOLD_="0",
        **{MEMORY_CHILD: "1"},
    )


def in_memory_child() -> bool:
    return os.environ.get(MEMORY_CHILD) == "1"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def peak_rss_growth(fn: Callable[[], object], device: str) -> int:
    """Bytes: peak during ``fn()`` minus before (CPU RSS, or CUDA allocator peak on a GPU)."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    before = rss_bytes()
    peak = before
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_bytes())
            time.sleep(0.0005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        fn()
    finally:
        stop.set()
        thread.join()
    peak = max(peak, rss_bytes())
    return peak - before


@dataclass
class Result:
    name: str
    times: list[float] = field(default_factory=list)
    mem: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def mem_median(self) -> float:
        return statistics.median(self.mem)


def run_round_robin(
    contenders: dict[str, Callable[[], object]], runs: int, mem_runs: int, device: str
) -> dict[str, Result]:
    """Warm each contender up once, then time ``runs`` rounds and measure memory ``mem_runs``.

    Either may be 0 (the parent times, the memory child measures).
    """
    results = {name: Result(name) for name in contenders}

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    for name, fn in contenders.items():
        try:
            fn()
        except Exception as exc:  # a peer that cannot run this case is reported, not fatal
            results[name].error = f"{type(exc).__name__}: {exc}"[:120]
    live = {n: f for n, f in contenders.items() if results[n].error is None}
    for _ in range(runs):
        for name, fn in live.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            results[name].times.append(time.perf_counter() - start)
    for _ in range(mem_runs):
        for name, fn in live.items():
            results[name].mem.append(peak_rss_growth(fn, device))
    return results


def timed(fn: Callable[[], object], runs: int, device: str) -> float:
    """Median wall time of ``runs`` calls of ``fn`` (synchronising a GPU around each)."""
    times = []
    for _ in range(runs):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    where = f"{cpu}, {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        where = f"{torch.cuda.get_device_name()} (host: {where})"
    return f"{where}; Python {platform.python_version()}, torch {torch.__version__}"


def write_section(path: str, key: str, text: str) -> None:
    """Replace the block between ``<!-- key:start -->`` and ``<!-- key:end -->`` in ``path``."""
    start, end = f"<!-- {key}:start -->", f"<!-- {key}:end -->"
    block = f"{start}\n{text.rstrip()}\n{end}"
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end) :]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(doc)
