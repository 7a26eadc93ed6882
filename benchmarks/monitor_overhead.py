"""What the monitor costs a user's loop (issue 15 §8): a user-style GPT training loop (Hugging Face GPT-2, AdamW,
loss and logits in the loop) without the monitor, with ``monitor.attach(every=10)`` and with ``every=1``, in one run.

The three loops train identical copies of the model side by side, interleaved in rounds of 10 steps, so a noisy,
shared machine slows each alike; the per-step time of each is the median over rounds. It also prints where the
monitor's time goes: inside ``Monitor.step`` (the measurements: norms of every gradient and parameter, the alarms)
and in the rest (the forward hooks' attention logits, the update RMS after the optimizer step). Numbers are printed,
never asserted. Usage:

    python benchmarks/monitor_overhead.py [--rounds 20] [--threads 1] [--shapes micro,laptop,gpt2-small-ish]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = {  # name: (width, depth, heads, seq_len, batch, vocab)
    "micro": (32, 1, 2, 64, 8, 256),
    "laptop-d96": (96, 3, 6, 64, 8, 256),
    "d256-L4": (256, 4, 4, 256, 8, 256),
}


def build(shape: tuple[int, ...]) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    import transformers

    d, depth, heads, t, _, vocab = shape
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=depth, n_head=heads, n_embd=d, vocab_size=vocab, n_positions=t,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="sdpa")
    model = transformers.GPT2LMHeadModel(cfg)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)


class Timed:
    """A monitor whose ``step`` is timed (the measurements and alarms) apart from the rest of its cost."""

    def __init__(self, mon) -> None:
        self.mon, self.inside = mon, 0.0

    def step(self, loss, logits) -> bool:
        t = time.perf_counter()
        keep = self.mon.step(loss, logits)
        self.inside += time.perf_counter() - t
        return keep


def loop(model, opt, mon, x, y, steps: int) -> float:
    """``steps`` user-style steps; seconds per step."""
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model(x).logits  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        if mon is None or mon.step(loss, logits):  # before clipping: the monitor sees the raw gradient norm
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - t0) / steps


def main() -> None:
    from proxyscale import monitor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20, help="rounds of 10 steps per loop")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shapes", default=",".join(SHAPES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rounds} rounds x 10 steps, fp32, CPU")
    print(f"{'shape':<12} {'plain ms':>9} {'every 10':>16} {'every 1':>16}   every 1: in step() / rest")
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        d, depth, heads, t, b, vocab = shape
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, vocab, (b, t), generator=g)
        y = torch.randint(0, vocab, (b, t), generator=g)
        with tempfile.TemporaryDirectory() as tmp:
            plain = build(shape)
            ten = build(shape)
            one = build(shape)
            mons = {"10": Timed(monitor.attach(*ten, every=10, out=Path(tmp) / "10")),
                    "1": Timed(monitor.attach(*one, every=1, out=Path(tmp) / "1"))}
            runs = {"plain": (plain, None), "10": (ten, mons["10"]), "1": (one, mons["1"])}
            for model, mon in runs.values():  # warm-up: allocator, first-call costs
                loop(*model, mon, x, y, 10)
            for m in mons.values():
                m.inside = 0.0
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.rounds):
                for key, (model, mon) in runs.items():
                    times[key].append(loop(*model, mon, x, y, 10))
            for m in mons.values():
                m.mon.close()
        med = {k: statistics.median(v) for k, v in times.items()}
        over = {k: med[k] / med["plain"] - 1 for k in ("10", "1")}
        inside = mons["1"].inside / (args.rounds * 10)
        rest = med["1"] - med["plain"] - inside
        print(f"{name:<12} {med['plain'] * 1e3:>9.2f} {med['10'] * 1e3:>8.2f} ({over['10']:+6.1%}) "
              f"{med['1'] * 1e3:>8.2f} ({over['1']:+6.1%})   {inside * 1e3:.2f} / {rest * 1e3:.2f} ms", flush=True)
    print("targets (issue 15 §8): <= 5% at every 10, <= 25% at every step", file=sys.stderr)


if __name__ == "__main__":
    main()
