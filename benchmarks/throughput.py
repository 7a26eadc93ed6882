"""Throughput of proxyscale against a plain PyTorch loop (issue 6 §1, §7): numbers measured in one run, printed as
one table, never asserted.

For each shape (d, L, T, B, V): tokens/s (all members together), peak memory and, on a GPU, MFU of
- proxyscale K=1 and the K=7 group (the paper's 7-point LR grid), in the precision and compile setting ``auto``
  picks on this device;
- the reference loop (benchmarks/reference.py) eager and ``torch.compile``d, in the same precision;
and the ratios: K=1 ÷ compiled reference; the group ÷ 7 sequential K=1 runs (= group ÷ K=1 tokens/s, since seven
runs one after another have the tokens/s of one); the group ÷ 7 sequential compiled-reference runs. Then the cost
of diagnostics for the K=7 group at ``log_every`` 1 and 10 against an unlogged run.

Shapes: ``micro`` = widths 64/128/256 (depth 2/2/3), seq 128, batch 16, byte vocab; ``laptop`` = the micro ladder
(d32-L1, d64-L2, d96-L3, d128-L4) at seq 64, batch 8, the shapes the micro and laptop experiments train; ``small`` = d256-L3, d512-L6,
d1024-L12, seq 256, batch 64, vocab 8192. Random tokens. MFU = (6·(12·L·d² + d·V) + 6·L·d·T) FLOP/token ×
tokens/s ÷ the bf16 matmul rate measured at the start (``--peak-tflops`` overrides it). Usage:

    python benchmarks/throughput.py [--shapes micro small] [--device auto|cpu|cuda] [--steps N] [--threads N]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from reference import ReferenceLoop  # noqa: E402

from proxyscale.core import config  # noqa: E402
from proxyscale.engine.data import TokenData  # noqa: E402
from proxyscale.engine.device import is_out_of_memory, mfu, resolve_compile, resolve_device, resolve_precision  # noqa: E402
from proxyscale.engine.train import GroupRun  # noqa: E402

LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
SHAPES = {  # (width, depth, seq, batch, vocab)
    "micro": [(64, 2, 128, 16, 256), (128, 2, 128, 16, 256), (256, 3, 128, 16, 256)],
    # the shapes the micro and laptop experiments train: the micro ladder at batch 8 x 64 (issue 14 §6)
    "laptop": [(32, 1, 64, 8, 256), (64, 2, 64, 8, 256), (96, 3, 64, 8, 256), (128, 4, 64, 8, 256)],
    "small": [(256, 3, 256, 64, 8192), (512, 6, 256, 64, 8192), (1024, 12, 256, 64, 8192)],
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, step, warmup: int, steps: int) -> tuple[float, float]:
    """(seconds per step, peak GiB) of ``step(i)`` after ``warmup`` untimed steps (compilation happens there)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        step(i)
    sync(device)
    start = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    seconds = (time.perf_counter() - start) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return seconds, peak


SWITCHES = {  # the post-paper switches (docs/beyond.md), as config overrides of a group
    "attention soft-cap 50": {"model": {"attn_softcap": 50.0}},
    "final soft-cap 30": {"model": {"final_softcap": 30.0}},
    "QK-clip τ 100": {"optim": {"qk_clip": 100.0}},
    "Muon": {"optim": {"optimizer": "muon"}},
    "Adam-atan2": {"optim": {"optimizer": "adam_atan2"}},
    "ZClip 2.5": {"optim": {"zclip": 2.5}},
    "CompleteP (depth_alpha 1)": {"model": {"depth_alpha": 1.0}},
    "QKV-layernorm": {"model": {"qkv_layernorm": True}},
    "reordered norm": {"model": {"norm_placement": "reordered"}},
}
"""Each switch's cost is a K=7 group with it on against the same group with it off (``--switches``)."""


def proxyscale_case(shape, members: list[float], log_every: int, args, device,
                    switch: dict | None = None) -> tuple[float, float, int]:
    """(tokens/s, peak GiB, micro-batch) of a proxyscale group; ``log_every`` 0 = never logged after step 0;
    ``switch``: config sections merged over the group's (a post-paper switch on)."""
    d, depth, seq, batch, vocab = shape
    rng = np.random.default_rng(0)
    data = TokenData(rng.integers(0, vocab, 1 << 20).astype(np.int64), rng.integers(0, vocab, 1 << 16).astype(np.int64),
                     vocab, "random")
    raw = {"model": {"width": d, "depth": depth, "heads": d // 64 if d >= 256 and vocab > 256 else d // 32,
                     "vocab": f"bpe:{vocab}" if vocab > 256 else "byte"},
           "data": {"seq_len": seq, "batch_size": batch},
           "train": {"steps": 10_000, "log_every": log_every or 10_000, "device": args.device,
                     "threads": args.threads, "compile": args.compile},
           "members": {"lr": members}}
    for section, fields in (switch or {}).items():
        raw.setdefault(section, {}).update(fields)
    run = GroupRun(config.from_dict(raw), Path("/nonexistent"), data=data)
    run.start(l0=1e9)  # a stand-in ℓ0: no evaluation, no divergence check
    seconds, peak = timed(device, run.step, args.warmup, args.steps)
    return run.tokens_per_step / seconds, peak, run.micro_batch


def shape_precision(shape, device) -> str:
    """The precision ``auto`` gives a group of this shape, so the reference loop runs in the same one."""
    d, _, seq, batch, _ = shape
    return resolve_precision("auto", device, d, seq * batch)


def reference_case(shape, compiled: bool, precision: str, args, device) -> tuple[float, float]:
    d, depth, seq, batch, vocab = shape
    heads = d // 64 if d >= 256 and vocab > 256 else d // 32
    loop = ReferenceLoop(d, depth, heads, vocab, seq, device, precision, compiled)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch, seq + 1), generator=gen).to(device) for _ in range(4)]
    seconds, peak = timed(device, lambda i: loop.step(batches[i % 4][:, :-1], batches[i % 4][:, 1:]),
                          args.warmup, args.steps)
    return batch * seq / seconds, peak


def peak_tflops(device: torch.device) -> float:
    """The measured bf16 matmul rate of this device (TFLOP/s), the denominator of MFU."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def guard(fn, *a):
    try:
        return fn(*a)
    except RuntimeError as err:
        if not is_out_of_memory(err):
            raise
        return None
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", default=None, choices=list(SHAPES),
                    help="default: micro on a CPU, micro and small on a GPU")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="only the shapes of these widths")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default 20 on a GPU, 4 on a CPU)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="interleaved repeats of every case, the best kept (default 1 on a GPU, 3 on a shared CPU)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--compile", default="auto", choices=["auto", "on", "off"], help="proxyscale's train.compile")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--no-diagnostics", action="store_true", help="skip the log_every 1/10 measurement")
    ap.add_argument("--switches", action="store_true",
                    help="instead: each post-paper switch's time per step (K=7 group, on ÷ off) at the laptop "
                         "scale's d32 / d64 / d96 shapes")
    ap.add_argument("--smoke", action="store_true",
                    help="the suite's check that it runs: one step of the smallest laptop shape, no compiled "
                         "reference, no diagnostics (with --switches: every switch at d32)")
    args = ap.parse_args()
    if args.smoke:
        args.shapes, args.widths, args.steps, args.warmup, args.repeats = ["laptop"], [32], 1, 1, 1
        args.no_diagnostics, args.compile = True, "off"
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    gpu = device.type == "cuda"
    args.steps = args.steps or (20 if gpu else 4)
    args.repeats = args.repeats or (1 if gpu else 3)
    shapes = args.shapes or (["micro", "small"] if gpu else ["laptop", "micro"])
    precision = "auto (per shape: the precision a group of that shape picks)"
    compiled = resolve_compile(args.compile, device)
    peak = args.peak_tflops or (peak_tflops(device) if gpu else None)
    name = torch.cuda.get_device_name(device) if gpu else "CPU"
    print(f"device {name}, torch {torch.__version__}, threads {torch.get_num_threads()}, precision {precision}, "
          f"proxyscale compile {'on' if compiled else 'off'}, best of {args.repeats} interleaved repeats of "
          f"{args.steps} timed steps after {args.warmup}"
          + (f", measured bf16 matmul peak {peak:.0f} TFLOP/s" if peak else ""), flush=True)
    if args.switches:
        return switch_costs(args, device)
    head = ("| shape (d, L, T, B, V) | proxyscale K=1 | K=7 group | reference eager | reference compiled "
            "| K=1 ÷ ref. compiled | group ÷ 7 seq. K=1 | group ÷ 7 seq. ref. compiled | micro-batch K=7 |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    diag_rows = []

    def cell(result, shape) -> str:
        if result is None:
            return "out of memory"
        tps, mem = result[0], result[1]
        text = f"{tps:,.0f}"
        if gpu:
            text += f" ({mem:.1f} GiB"
            if peak:
                text += f", MFU {100 * mfu(tps, shape[0], shape[1], shape[2], shape[4], peak * 1e12):.1f}%"
            text += ")"
        return text

    for family in shapes:
        for shape in SHAPES[family]:
            if args.widths and shape[0] not in args.widths:
                continue
            cases = {"k1": (proxyscale_case, shape, LRS[3:4], 0), "k7": (proxyscale_case, shape, LRS, 0),
                     "ref_e": (reference_case, shape, False, shape_precision(shape, device)),
                     "ref_c": (reference_case, shape, not args.smoke, shape_precision(shape, device))}
            best: dict = {}
            for _ in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits every case
                for name, (fn, *rest) in cases.items():
                    result = guard(fn, *rest, args, device)
                    if result is not None and (best.get(name) is None or result[0] > best[name][0]):
                        best[name] = result
                    best.setdefault(name, result)
            k1, k7, ref_e, ref_c = (best[name] for name in cases)

            def ratio(a, b) -> str:
                return f"{a[0] / b[0]:.2f}x" if a and b else "–"

            rows.append(f"| {', '.join(map(str, shape))} | {cell(k1, shape)} | {cell(k7, shape)} | {cell(ref_e, shape)} "
                        f"| {cell(ref_c, shape)} | {ratio(k1, ref_c)} | {ratio(k7, k1)} | {ratio(k7, ref_c)} "
                        f"| {k7[2] if k7 else '–'} |")
            print(rows[-1], flush=True)
            if not args.no_diagnostics and k7 is not None and (family == "micro" or shape[0] == 512):
                # a multiple of 10 timed steps, so log_every 10 logs exactly a tenth of them; interleaved repeats
                diag = argparse.Namespace(**{**vars(args), "steps": 10 * max(1, round(args.steps / 10))})
                seconds: dict[int, float] = {}
                for _ in range(args.repeats):
                    for every in (0, 10, 1):
                        result = guard(proxyscale_case, shape, LRS, every, diag, device)
                        if result is not None:
                            seconds[every] = min(seconds.get(every, float("inf")), 1 / result[0])
                if len(seconds) == 3:
                    diag_rows.append(f"| {', '.join(map(str, shape))} | {100 * (seconds[10] / seconds[0] - 1):+.1f}% "
                                     f"| {100 * (seconds[1] / seconds[0] - 1):+.1f}% |")
                    print(diag_rows[-1], flush=True)
    print()
    print("\n".join(rows))
    if diag_rows:
        print("\nCost of diagnostics, K=7 group (time per step vs an unlogged run):\n")
        print("| shape (d, L, T, B, V) | log_every 10 | log_every 1 |\n|---|---|---|")
        print("\n".join(diag_rows))


def switch_costs(args, device) -> None:
    """The table of ``--switches``: per switch and shape, time per step with it on ÷ with it off, the K=7 group,
    every case interleaved with its baseline (best of ``--repeats``)."""
    shapes = [s for s in SHAPES["laptop"] if s[0] in (args.widths or (32, 64, 96))]
    head = "| switch | " + " | ".join(f"d{s[0]}-L{s[1]} (K=7)" for s in shapes) + " |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    seconds: dict[tuple[str, int], float] = {}
    for _ in range(args.repeats):
        for shape in shapes:
            for name, switch in {"off": None, **SWITCHES}.items():
                result = guard(proxyscale_case, shape, LRS, 0, args, device, switch)
                if result is not None:
                    seconds[name, shape[0]] = min(seconds.get((name, shape[0]), float("inf")), 1 / result[0])
    base = {s[0]: seconds.get(("off", s[0])) for s in shapes}
    rows.append("| off (ms a step) | " + " | ".join(
        f"{1e3 * base[s[0]] * s[2] * s[3] * len(LRS):.1f}" if base[s[0]] else "–" for s in shapes) + " |")
    for name in SWITCHES:
        rows.append(f"| {name} | " + " | ".join(
            f"{seconds[name, s[0]] / base[s[0]]:.2f}x" if (name, s[0]) in seconds and base[s[0]] else "–"
            for s in shapes) + " |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
