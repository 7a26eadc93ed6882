"""Throughput of the member axis (issue 2 §7): tokens/s measured in one run, printed, never asserted.

For each width: one member alone; a group of K=7; 7 single members one after another; each in fp32 and
bf16; and the cost of diagnostics on every step (interleaved logged and unlogged steps of one group). Ratios are taken within this one run,
since a shared machine is noisy across runs. Usage:

    python benchmarks/throughput.py [--widths 64 128] [--steps 8] [--device auto|cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch

from proxyscale import config
from proxyscale.data import load_data
from proxyscale.train import GroupRun, resolve_device, resolve_precision

LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]


def tokens_per_s(width: int, lrs: list[float], precision: str, log_every: int, steps: int, args, data) -> float:
    """Mean tokens/s (all members together) over ``steps`` timed steps after 2 warm-up steps."""
    raw = {"model": {"width": width, "depth": 2, "heads": width // 32, "vocab": "byte"},
           "data": {"corpus": "kjv", "seq_len": 128, "batch_size": 16},
           "train": {"steps": 1000, "log_every": log_every, "precision": precision, "device": args.device,
                     "threads": args.threads},
           "members": {"lr": lrs}}
    run = GroupRun(config.from_dict(raw), "/nonexistent", data=data)
    run.l0 = torch.full((len(lrs),), 1e9, device=run.device)
    for s in range(2):
        run.step(s)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for s in range(2, 2 + steps):
        run.step(s)
    if run.device.type == "cuda":
        torch.cuda.synchronize()
    return run.tokens_per_step * steps / (time.perf_counter() - start)


def diagnostics_overhead(width: int, steps: int, args, data, precision: str) -> float:
    """Overhead of a logged step over an unlogged one, in %, from the medians of interleaved steps of one group
    (log_every=2): robust to a shared machine's slow spells, unlike two separate whole runs."""
    import statistics

    raw = {"model": {"width": width, "depth": 2, "heads": width // 32, "vocab": "byte"},
           "data": {"corpus": "kjv", "seq_len": 128, "batch_size": 16},
           "train": {"steps": 1000, "log_every": 2, "precision": precision, "device": args.device, "threads": args.threads},
           "members": {"lr": LRS}}
    run = GroupRun(config.from_dict(raw), "/nonexistent", data=data)
    run.l0 = torch.full((len(LRS),), 1e9, device=run.device)
    times: dict[bool, list[float]] = {True: [], False: []}
    for s in range(2 + 2 * steps):
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        run.step(s)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        if s >= 2:
            times[s % 2 == 0].append(time.perf_counter() - start)
    return 100 * (statistics.median(times[True]) / statistics.median(times[False]) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best of each is kept")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    args = ap.parse_args()
    device = resolve_device(args.device)
    default = resolve_precision("auto", device)
    data = load_data(config.DataConfig(corpus="kjv", seq_len=128, batch_size=16), "byte")
    print(f"device {device}, torch {torch.__version__}, threads {args.threads or torch.get_num_threads()}, "
          f"default precision here: {default}; depth 2, seq 128, batch 16, byte vocab, K=7; "
          f"best of {args.repeats} interleaved repeats of {args.steps} steps")
    print(f"{'width':>5} {'precision':>9} {'alone':>9} {'group K=7':>10} {'7 in a row':>10} {'batching':>9}")
    for width in args.widths:
        best: dict[tuple[str, str], float] = {}

        def keep(key: tuple[str, str], value: float) -> None:
            best[key] = max(best.get(key, 0.0), value)

        for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every variant
            for precision in args.precisions:
                steps = args.steps if precision == "fp32" or default == "bf16" else max(2, args.steps // 4)
                keep((precision, "alone"), tokens_per_s(width, LRS[3:4], precision, 100, steps, args, data))
                keep((precision, "group"), tokens_per_s(width, LRS, precision, 100, steps, args, data))
                # 7 single runs one after another: total tokens over total time
                t = [1.0 / tokens_per_s(width, [lr], precision, 100, steps, args, data) for lr in LRS]
                keep((precision, "seq"), len(LRS) / sum(t))

        for precision in args.precisions:
            print(f"{width:>5} {precision:>9} {best[precision, 'alone']:>9,.0f} {best[precision, 'group']:>10,.0f} "
                  f"{best[precision, 'seq']:>10,.0f} {best[precision, 'group'] / best[precision, 'seq']:>8.2f}x")
        if "fp32" in args.precisions and default in args.precisions:
            print(f"      width {width}: group in default precision ({default}) vs 7 sequential fp32 runs: "
                  f"{best[default, 'group'] / best['fp32', 'seq']:.2f}x (target 2.5x); batching alone ({default}): "
                  f"{best[default, 'group'] / best[default, 'seq']:.2f}x (target 1.4x)")
        overhead = diagnostics_overhead(width, 2 * args.steps, args, data, default)
        print(f"      width {width}: diagnostics on every step cost {overhead:.1f}% per step (medians of interleaved "
              f"logged/unlogged steps; target <= 10%)")


if __name__ == "__main__":
    main()
