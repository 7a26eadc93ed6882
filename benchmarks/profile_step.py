"""Where a step's time goes (issue 6: "a profile, not a guess"): torch.profiler over a few steps of one proxyscale
group, and of the reference loop at the same shapes; prints the top operators by device time. Usage:

    python benchmarks/profile_step.py [--shape 512 6 256 64 8192] [--members 1] [--steps 5] [--log-every 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from throughput import LRS, SHAPES, proxyscale_case, reference_case, shape_precision  # noqa: E402,F401

from proxyscale.engine.device import resolve_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=5, default=[512, 6, 256, 64, 8192], metavar=("D", "L", "T", "B", "V"))
    ap.add_argument("--members", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args()
    device = resolve_device(args.device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    shape = tuple(args.shape)
    for name, case in (("proxyscale", lambda: proxyscale_case(shape, LRS[:args.members], args.log_every, args, device)),
                       ("reference compiled", lambda: reference_case(shape, True, shape_precision(shape, device), args,
                                                                     device))):
        case()  # compile and warm up outside the profile
        with profile(activities=activities) as prof:
            tps = case()[0]
        print(f"\n== {name}, shape {shape}, {args.members} member(s): {tps:,.0f} tokens/s (incl. profiler overhead)")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
