"""Throughput of the member axis (issue 2 §7): tokens/s measured in one run, printed, never asserted.

For each width: one member alone; a group of K=7; 7 single members one after another; each in fp32 and
bf16; and the group with diagnostics every step vs every 100 steps. Ratios are taken within this one run,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    default = resolve_precision("auto", device)
    data = load_data(config.DataConfig(corpus="kjv", seq_len=128, batch_size=16), "byte")
    print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads() if not args.threads else args.threads}, "
          f"default precision here: {default}; depth 2, seq 128, batch 16, byte vocab, K=7")
    print(f"{'width':>5} {'precision':>9} {'alone':>9} {'group K=7':>10} {'7 in a row':>10} {'batching':>9}")
    for width in args.widths:
        res: dict[tuple[str, str], float] = {}
        for precision in ("fp32", "bf16"):
            steps = args.steps if precision == "fp32" or default == "bf16" else max(2, args.steps // 4)
            res[precision, "alone"] = tokens_per_s(width, LRS[3:4], precision, 100, steps, args, data)
            res[precision, "group"] = tokens_per_s(width, LRS, precision, 100, steps, args, data)
            # 7 single runs one after another: total tokens over total time
            t = [1.0 / tokens_per_s(width, [lr], precision, 100, steps, args, data) for lr in LRS]
            res[precision, "seq"] = len(LRS) / sum(t)
            print(f"{width:>5} {precision:>9} {res[precision, 'alone']:>9,.0f} {res[precision, 'group']:>10,.0f} "
                  f"{res[precision, 'seq']:>10,.0f} {res[precision, 'group'] / res[precision, 'seq']:>8.2f}x")
        every = tokens_per_s(width, LRS, default, 1, args.steps, args, data)
        sparse = tokens_per_s(width, LRS, default, 100, args.steps, args, data)
        print(f"      width {width}: group in default precision ({default}) vs 7 sequential fp32 runs: "
              f"{res[default, 'group'] / res['fp32', 'seq']:.2f}x (target 2.5x); batching alone ({default}): "
              f"{res[default, 'group'] / res[default, 'seq']:.2f}x (target 1.4x)")
        print(f"      width {width}: diagnostics every step {every:,.0f} tok/s vs every 100 steps {sparse:,.0f} tok/s: "
              f"overhead {100 * (1 - every / sparse):.1f}% (target <= 10%)")


if __name__ == "__main__":
    main()
