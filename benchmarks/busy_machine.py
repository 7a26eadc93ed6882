"""A run on a busy machine (issue 14 §5): wall time of ``proxyscale train examples/lr_grid.yaml`` alone, beside one
CPU-bound process, beside a second proxyscale run, and of a slice of the test suite beside a run — before (2 torch
threads, OpenMP's default wait policy: what proxyscale did) and after (``train.threads: 0``, the thread policy of
``proxyscale.threads``, and ``OMP_WAIT_POLICY=PASSIVE`` set by the CLI). Every case runs in this one invocation, so
the ratios compare like with like on a shared machine; numbers are printed, never asserted. Usage:

    python benchmarks/busy_machine.py [--steps 300] [--tests tests/test_engine.py]

Run it on a quiet machine: the load is what it adds itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "examples" / "lr_grid.yaml"
POLICIES = {  # name: (extra --set, environment)
    "before: 2 threads, default wait policy": (["train.threads=2"], {"OMP_WAIT_POLICY": ""}),  # "": OpenMP's default
    "after: threads auto, passive wait": (["train.threads=0"], {}),
}
BURN = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass"


def train_cmd(out: Path, sets: list[str], steps: int) -> list[str]:
    return [sys.executable, "-m", "proxyscale", "train", str(GRID), "--out", str(out), "--quiet",
            "--set", f"train.steps={steps}", *sum((["--set", s] for s in sets), [])]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def beside(load: list[str], load_env: dict[str, str], settle: float, cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``cmd`` while ``load`` runs (started ``settle`` seconds before, killed after)."""
    other = subprocess.Popen(load, env={**os.environ, **load_env}, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        time.sleep(settle)
        return timed(cmd, env)
    finally:
        other.kill()
        other.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tests", default="tests/test_engine.py", help="the test-suite slice timed beside a run")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for policy, (sets, env) in POLICIES.items():
            n = len(rows)
            alone = timed(train_cmd(tmp / f"a{n}", sets, args.steps), env)
            beside_cpu = beside([sys.executable, "-c", BURN], {}, 0, train_cmd(tmp / f"b{n}", sets, args.steps), env)
            beside_run = beside(train_cmd(tmp / f"c{n}", sets, args.steps * 3), env, 3,
                                train_cmd(tmp / f"d{n}", sets, args.steps), env)
            suite = beside(train_cmd(tmp / f"e{n}", sets, args.steps * 20), env, 3,
                           [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", args.tests], env)
            rows.append((policy, alone, beside_cpu, beside_run, suite))
            print(f"{policy}: alone {alone:.1f} s, beside a CPU-bound process {beside_cpu:.1f} s, beside a second "
                  f"run {beside_run:.1f} s, {args.tests} beside a run {suite:.1f} s", flush=True)
    print(f"\n| policy | alone | beside one CPU-bound process | beside a second proxyscale run | "
          f"`{args.tests}` beside a run |\n|---|---|---|---|---|")
    for policy, *t in rows:
        print(f"| {policy} | " + " | ".join(f"{x:.1f} s" for x in t) + " |")
    before, after = rows[0][1:], rows[1][1:]
    print("| after ÷ before | " + " | ".join(f"{a / b:.2f}" for a, b in zip(after, before)) + " |")


if __name__ == "__main__":
    main()
