"""CPU threads on a shared machine: how many torch threads a group gets, and how idle OpenMP threads wait.

Facts measured on this project's 2-core machines decide the policy:

- OpenMP threads that *spin* while waiting collapse when the cores are oversubscribed (issue 14 §5): ``proxyscale
  train examples/lr_grid.yaml`` took 16.9 s alone with 2 threads, but 53.0 s beside one CPU-bound process with 2
  threads, 28.2 s with 2 threads under ``OMP_WAIT_POLICY=PASSIVE`` and 24.9 s with 1 thread.
- Threads that *sleep* cost a quiet machine dearly (issue 25): one member (K = 1) at d64-L2, batch 16 x 128, 2
  threads ran at 0.71x the reference loop under PASSIVE, 1.11x with a spin (libgomp's default 300,000 iterations
  or a bounded 10,000), 0.90x vs 1.06-1.08x at d128-L2 (``benchmarks/busy_machine.py``, commit 888bf85, 2 quiet
  AVX512-BF16 cores without AMX, best of 5 processes each; one full invocation at commit 4ddea9b: PASSIVE 0.79x /
  1.03x, the chosen policy 1.16x / 1.22x, beside a CPU-bound process / a second run 1.11 / 1.10).
- So (1) the wait policy follows the load measured before torch starts (``set_wait_policy``, called by the CLI's
  ``main`` for the commands that train; OpenMP reads it once, when it starts): on a quiet machine a bounded spin
  (``QUIET_ENV``: ``GOMP_SPINCOUNT=10000``), on a busy one, or where the load cannot be read, ``PASSIVE``
  (``WAIT_POLICY_ENV``); and (2) a run uses no more threads than the cores that are actually free (``choose``),
  measured from /proc/stat over a short window with this process's own CPU time taken out, and checked again while
  it trains (``Rebalancer``). A run that started on a quiet machine and spins is therefore safe once load arrives:
  within ``RECHECK_SECONDS`` it drops to the cores it gets, and a single thread has no team to spin for.
- Why this one won (same benchmark and commit, ``proxyscale train examples/lr_grid.yaml`` 300 steps, wall time
  beside one CPU-bound process / beside a second run ÷ alone with 1 thread): this policy 1.07 / 1.21 and K = 1
  at 1.08x / 1.11x the reference at d64 / d128; PASSIVE always 1.03 / 1.15 but 0.71x / 0.90x quiet; OpenMP's
  default always 1.04 / 1.03 and 1.11x / 1.06x quiet, but only because the Rebalancer drops to one thread: two
  runs that start together on 2 cores each see the other's load late, and with 300,000-iteration spins issue 14
  measured 14x (295.6 s vs 20.9 s); ``ACTIVE`` (an unbounded spin) 1.70x beside a second run. The bounded spin
  keeps the quiet speed and caps what a spinning thread can steal while the Rebalancer catches up.

Nothing here imports torch: it must run before torch loads.
"""
from __future__ import annotations

import os
import time

WAIT_POLICY_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""Environment set before torch starts on a busy machine (or one whose load cannot be read) unless the user set it:
idle OpenMP threads sleep instead of spinning, which is what collapses a multi-threaded run on a busy machine (see
the module doc). On a quiet machine nothing is set: OpenMP's default (libgomp spins a bounded while, then sleeps)."""

SAMPLE_SECONDS = 0.25
"""How long ``free_cores`` watches /proc/stat."""

RECHECK_SECONDS = 10.0
"""How often a training run re-measures the free cores and adjusts its threads (``Rebalancer``)."""

QUIET_ENV = {"GOMP_SPINCOUNT": "10000"}
"""Environment set before torch starts on a quiet machine unless the user set a wait policy: idle OpenMP threads spin
a bounded while (10,000 iterations, libgomp's default is 300,000) before they sleep, so the next parallel region
finds them awake (see the module doc for what was measured)."""

QUIET_MARGIN = 0.5
"""A machine is *quiet* when at most this many cores are busy with other work at start (``wait_policy``)."""


def wait_policy(free: float | None, cores: int) -> dict[str, str]:
    """The environment to set before torch starts, given ``free`` cores of the ``cores`` this process may use:
    ``QUIET_ENV`` on a quiet machine (a bounded spin, then sleep), ``WAIT_POLICY_ENV`` on a busy one or when the load cannot be
    measured (the busy-machine collapse costs 2x and more; the quiet-machine cost of sleeping threads is smaller)."""
    if free is not None and free >= cores - QUIET_MARGIN:
        return dict(QUIET_ENV)
    return dict(WAIT_POLICY_ENV)


def set_wait_policy(free: float | None = None) -> dict[str, str]:
    """Set ``wait_policy(free, usable_cores())`` in this process's environment (inherited by the workers it spawns)
    unless the user chose a value; an empty value (``OMP_WAIT_POLICY=``) means OpenMP's own default and is removed
    (OpenMP would warn about it). A no-op once OpenMP has started, so call it before importing torch. Returns what
    it set."""
    chosen = {}
    for name in (*WAIT_POLICY_ENV, *QUIET_ENV):  # the user's choice of either is kept
        if os.environ.get(name) == "":
            del os.environ[name]
            return {}
        if name in os.environ:
            return {}
    chosen = wait_policy(free, usable_cores())
    os.environ.update(chosen)
    return chosen


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: what taskset, cgroups' cpusets and Slurm give it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None where it cannot be read (not Linux)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is counted in user)
    return total - idle, total


class CoreMeter:
    """Cores used by *other* processes since the last reading: the machine's busy time less this process's own
    CPU time, over the wall time between readings."""

    def __init__(self) -> None:
        self._last = self._read()

    @staticmethod
    def _read() -> tuple[tuple[float, float] | None, float, float]:
        return _cpu_times(), time.process_time(), time.monotonic()

    def others(self) -> float | None:
        """Cores busy with other work since the last call (or construction); None where it cannot be measured."""
        (then, own0, t0), now = self._last, self._read()
        self._last = now
        (cpu1, own1, t1) = now
        if then is None or cpu1 is None or t1 <= t0 or cpu1[1] <= then[1]:
            return None
        n = os.cpu_count() or 1
        busy = (cpu1[0] - then[0]) / (cpu1[1] - then[1]) * n  # cores busy, all processes
        own = (own1 - own0) / (t1 - t0)  # cores this process used
        return max(0.0, busy - own)


def free_cores(seconds: float = SAMPLE_SECONDS) -> float | None:
    """Cores not busy with other processes, measured over ``seconds``; None where /proc/stat is unreadable."""
    meter = CoreMeter()
    time.sleep(seconds)
    others = meter.others()
    return None if others is None else max(0.0, (os.cpu_count() or 1) - others)


def choose(cap: int, free: float | None) -> int:
    """Threads for a group allowed ``cap`` cores (its share: all usable cores, or cores / workers in a sweep) when
    ``free`` cores are idle: never more than are free (rounded, so a core two-thirds free still counts), at least 1.
    ``free`` None (unmeasurable) gives ``cap``."""
    if free is None:
        return max(1, cap)
    return max(1, min(cap, int(free + 0.34)))


class Rebalancer:
    """Re-measures the free cores every ``RECHECK_SECONDS`` while a group trains and sets torch's thread count to
    ``choose(cap, free)``; ``own_threads`` of the run are not counted as other load."""

    def __init__(self, cap: int, set_threads, threads: int | None = None, every: float = RECHECK_SECONDS) -> None:
        self.cap, self.set_threads, self.every = cap, set_threads, every
        self.meter, self.next = CoreMeter(), time.monotonic() + every
        self.threads = cap if threads is None else threads  # what the run has now

    def tick(self) -> int | None:
        """Call once per step: returns the new thread count when it changed, else None (cheap between checks)."""
        now = time.monotonic()
        if now < self.next:
            return None
        self.next = now + self.every
        others = self.meter.others()
        if others is None:
            return None
        threads = choose(self.cap, (os.cpu_count() or 1) - others)
        if threads == self.threads:
            return None
        self.threads = threads
        self.set_threads(threads)
        return threads
