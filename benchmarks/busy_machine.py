"""The thread policy on a quiet machine and on a busy one (issues 14 §5 and 25), every policy in one invocation.

For each OpenMP wait policy (``POLICIES``):
- **quiet**: one proxyscale member (K = 1) at d64-L2 and d128-L2, batch 16 x 128, byte vocab, 2 threads, in the
  precision ``auto`` picks, against the reference loop (``benchmarks/reference.py``, eager, same shapes and
  precision) run the way a user runs it (OpenMP's default: no wait policy set). Each in its own process (the policy
  is read once, when OpenMP starts), interleaved, best ms a step of ``--repeats`` processes each;
- **busy**: wall seconds of ``proxyscale train examples/lr_grid.yaml`` (7 members, ``--steps``) alone with 2 cores,
  alone with 1 thread (the core it gets beside one other job), beside one CPU-bound process and beside a second
  proxyscale run, and the ratios of the last two to the 1-thread time alone (issue 25's bound: 1.3).

Numbers are printed, never asserted. Run it on a quiet machine: the load is what it adds itself. Usage:

    python benchmarks/busy_machine.py [--steps 300] [--repeats 3] [--policies auto,passive] [--smoke]

``--smoke`` (the test suite): tens of steps, one repeat, d64 only; it checks that the script runs, not the speed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GRID = ROOT / "examples" / "lr_grid.yaml"
POLICIES = {  # name: environment the policy sets before torch starts ("" removes the variable: OpenMP's default)
    "auto": {},  # nothing set: proxyscale.engine.threads chooses from the free cores (the CLI's default)
    # the alternatives measured before "auto" was chosen (threads.py says what each gave)
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},  # issue 14's default
    "default": {"OMP_WAIT_POLICY": ""},  # libgomp: spin GOMP_SPINCOUNT (300,000) iterations, then sleep
    "spin-10k": {"OMP_WAIT_POLICY": "", "GOMP_SPINCOUNT": "10000"},  # a bounded spin before sleeping
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},  # spin without bound
}
BURN = "import time\nt = time.time()\nwhile time.time() - t < 3600: pass"
CHILD = """
import sys, time, json
sys.path.insert(0, {bench!r})
from proxyscale.engine import threads
if {policy}:
    threads.set_wait_policy(threads.free_cores())  # what the CLI does before torch starts
import argparse, torch
torch.set_num_threads(2)
import throughput
args = argparse.Namespace(steps={steps}, warmup=3, device="cpu", threads=2, compile="auto")
shape = ({width}, 2, 128, 16, 256)
dev = torch.device("cpu")
if {policy}:
    tps = throughput.proxyscale_case(shape, [1e-2], 0, args, dev)[0]
else:
    tps = throughput.reference_case(shape, False, throughput.shape_precision(shape, dev), args, dev)[0]
print(json.dumps({{"ms": 1e3 * 128 * 16 / tps}}))
"""


def env_of(policy: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    return {**env, **policy}


def step_ms(width: int, policy: dict[str, str] | None, steps: int) -> float:
    """ms a step of K = 1 proxyscale (``policy`` its environment) or, with ``policy`` None, the reference loop."""
    code = CHILD.format(bench=str(ROOT / "benchmarks"), policy=policy is not None, steps=steps, width=width)
    out = subprocess.run([sys.executable, "-c", code], env=env_of(policy or {}), check=True, capture_output=True,
                         text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])["ms"]


def train_cmd(out: Path, sets: list[str], steps: int) -> list[str]:
    return [sys.executable, "-m", "proxyscale", "train", str(GRID), "--out", str(out), "--quiet",
            "--set", f"train.steps={steps}", *sum((["--set", s] for s in sets), [])]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def beside(load: list[str], load_env: dict[str, str], settle: float, cmd: list[str], env: dict[str, str]) -> float:
    """Wall seconds of ``cmd`` while ``load`` runs (started ``settle`` seconds before, killed after)."""
    other = subprocess.Popen(load, env=load_env, stdout=subprocess.DEVNULL, cwd=ROOT)
    try:
        time.sleep(settle)
        return timed(cmd, env)
    finally:
        other.kill()
        other.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300, help="training steps of the busy-machine runs")
    ap.add_argument("--repeats", type=int, default=3, help="processes per quiet-machine case (best kept)")
    ap.add_argument("--policies", default=",".join(POLICIES), help=f"comma-separated, of: {', '.join(POLICIES)}")
    ap.add_argument("--widths", default="64,128", help="quiet-machine widths (depth 2)")
    ap.add_argument("--parts", default="quiet,busy", help="which tables: quiet, busy or both")
    ap.add_argument("--smoke", action="store_true",
                    help="the suite's check that it runs: policy auto, 2 quiet steps, 12 busy steps, one repeat, d64")
    args = ap.parse_args()
    names = [p for p in args.policies.split(",") if p]
    bad = [p for p in names if p not in POLICIES]
    if bad:
        ap.error(f"--policies: unknown {', '.join(bad)}; valid: {', '.join(POLICIES)}")
    widths = [int(w) for w in args.widths.split(",")]
    steps, quiet_steps, repeats = args.steps, 20, args.repeats
    if args.smoke:
        steps, quiet_steps, repeats, widths, names = 12, 2, 1, [64], ["auto"]
    parts = set(args.parts.split(","))
    if "quiet" in parts:
        quiet_table(names, widths, repeats, quiet_steps)
    if "busy" in parts:
        busy_table(names, steps)


def quiet_table(names: list[str], widths: list[int], repeats: int, quiet_steps: int) -> None:
    print(f"quiet machine: K = 1, batch 16 x 128, 2 threads, best of {repeats} processes of {quiet_steps} steps\n")
    quiet: dict[tuple[str, int], float] = {}
    ref: dict[int, float] = {}
    for _ in range(repeats):  # interleaved: a slow spell hits every case
        for width in widths:
            ref[width] = min(ref.get(width, 1e9), step_ms(width, None, quiet_steps))
            for name in names:
                quiet[name, width] = min(quiet.get((name, width), 1e9), step_ms(width, POLICIES[name], quiet_steps))
    head = "| policy | " + " | ".join(f"d{w}-L2: ms a step (÷ reference)" for w in widths) + " |"
    print(head + "\n|" + "---|" * (head.count("|") - 1))
    print("| reference loop (OpenMP default) | " + " | ".join(f"{ref[w]:.1f}" for w in widths) + " |")
    for name in names:
        print(f"| {name} | " + " | ".join(f"{quiet[name, w]:.1f} ({ref[w] / quiet[name, w]:.2f}x)" for w in widths)
              + " |", flush=True)


def busy_table(names: list[str], steps: int) -> None:
    print(f"\nbusy machine: `proxyscale train examples/lr_grid.yaml`, {steps} steps, wall seconds\n")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in names:
            env, n = env_of(POLICIES[name]), len(rows)
            alone = timed(train_cmd(tmp / f"a{n}", ["train.threads=0"], steps), env)
            one = timed(train_cmd(tmp / f"o{n}", ["train.threads=1"], steps), env)
            cpu = beside([sys.executable, "-c", BURN], env, 0.5, train_cmd(tmp / f"b{n}", ["train.threads=0"], steps),
                         env)
            run = beside(train_cmd(tmp / f"c{n}", ["train.threads=0"], steps * 3), env, 3,
                         train_cmd(tmp / f"d{n}", ["train.threads=0"], steps), env)
            rows.append((name, alone, one, cpu, run))
    print("| policy | alone, 2 cores | alone, 1 thread | beside one CPU-bound process | beside a second run "
          "| ÷ 1 thread alone (CPU-bound / run) |\n|---|---|---|---|---|---|")
    for name, alone, one, cpu, run in rows:
        print(f"| {name} | {alone:.1f} s | {one:.1f} s | {cpu:.1f} s | {run:.1f} s | {cpu / one:.2f} / {run / one:.2f} |")


if __name__ == "__main__":
    main()
