"""What a logit precision costs as the mean output logit drifts (issue 23 §1: "the loss damage, measured directly").

Trains one group (default: d64-L2, byte vocab, fp32, no weight decay or z-loss, LR 0.01 / 0.1 / 0.3, 300 steps of
8 × 64 on the built-in corpus), then evaluates the same weights with float32 logits and with the logits rounded to
bf16 (and fp16), first as they are and then with every logit moved ``shift`` further from 0, the way the mean-logit
drift moves them (``drift.rounding_loss``; 0 in exact arithmetic). Prints the mean cost over members per shift and
the smallest shift whose cost reaches ``drift.DAMAGE_NATS``: the measurement behind ``drift.DAMAGE_AT``. Usage:

    python examples/logit_precision.py [--steps 300] [--width 64] [--depth 2] [--vocab byte] [--out runs/logit_precision]
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

from proxyscale.science import drift
from proxyscale.core.config import from_dict
from proxyscale.engine.train import GroupRun

SHIFTS = [0.0] + [2.0**k for k in range(0, 13)]  # 1 … 4096


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--vocab", default="byte")
    ap.add_argument("--out", default=None, help="where the group trains (default: a temporary folder)")
    args = ap.parse_args()
    spec = {"model": {"width": args.width, "depth": args.depth, "heads": max(1, args.width // 32),
                      "vocab": args.vocab},
            "data": {"corpus": "kjv", "seq_len": 64, "batch_size": 8},
            "train": {"steps": args.steps, "eval_every": args.steps, "threads": 1, "precision": "fp32"},
            "optim": {"warmup": max(1, args.steps // 10), "weight_decay": 0.0, "z_loss": 0.0},
            "members": {"lr": [0.01, 0.1, 0.3]}}
    cfg = from_dict(spec)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "group"
        run = GroupRun(cfg, out)
        run.run()
        rows = drift.precision_damage(run, SHIFTS, ("bf16", "fp16"))
        mean_logit = run.last["output_logit_mean"].tolist()
    lrs = [m.lr for m in cfg.member_list()]
    print(f"d{args.width}-L{args.depth}, {args.vocab}, {args.steps} steps; LR {lrs}; mean output logit at the end "
          f"{[round(v, 2) for v in mean_logit]}; fp32 eval loss "
          f"{[round(r['loss_fp32'], 4) for r in rows if r['shift'] == 0 and r['precision'] == 'bf16']}")
    print(f"{'shift':>8} " + " ".join(f"{p + ' (max over members)':>26}" for p in ("bf16", "fp16")))
    first = {}
    for shift in SHIFTS:
        cells = []
        for p in ("bf16", "fp16"):
            d = [r["damage"] for r in rows if r["shift"] == shift and r["precision"] == p]
            worst = max(d, key=lambda v: abs(v) if math.isfinite(v) else math.inf)
            cells.append(f"{worst:>26.4g}")
            if p not in first and (not math.isfinite(worst) or abs(worst) >= drift.DAMAGE_NATS):
                first[p] = shift
        print(f"{shift:>8g} " + " ".join(cells))
    for p in ("bf16", "fp16"):
        print(f"{p}: the cost first reaches {drift.DAMAGE_NATS} nats at a shift of {first.get(p, 'none measured')}")


if __name__ == "__main__":
    main()
