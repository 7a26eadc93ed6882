"""Score the forecast's backtest on micro ladders it was not built on: the README's validation table.

    python examples/forecast_validation.py [--out runs/forecast_validation] [--only seed1,qk]

Each variant is ``examples/target.yaml`` with some fields changed (and the ladder's training seed); its micro ladder
(4 sizes x 8-9 LRs) is trained into a shared pool (finished groups are reused), the largest size is held out, and the
forecast from the other three is scored against it (``forecast.backtest``). The target's ladder took 2 min 32 s on
2 CPU cores (AVX512-BF16); no two variants share a group.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import polars as pl
import yaml

from proxyscale import forecast, instability, sweep
from proxyscale.config import GroupConfig

TARGET = Path(__file__).with_name("target.yaml")
VARIANTS: dict[str, tuple[str, dict, int]] = {
    # name: (what the README calls it, fields changed in the target, the ladder's train.seed)
    "target": ("the target (the rule was built on this one)", {}, 0),
    "seed1": ("seed 1", {}, 1),
    "seed2": ("seed 2", {}, 2),
    "no_zloss_no_wd": ("z-loss 0, weight decay 0", {"optim": {"z_loss": 0.0, "weight_decay": 0.0}}, 0),
    "coupled": ("coupled weight decay 0.1", {"optim": {"weight_decay": 0.1, "independent_weight_decay": False}}, 0),
    "qk": ("qk-layernorm", {"model": {"qk_layernorm": "head"}}, 0),
    "qk_seed1": ("qk-layernorm, seed 1", {"model": {"qk_layernorm": "head"}}, 1),
    "qk_lr3e-2": ("qk-layernorm, target LR 3e-2", {"model": {"qk_layernorm": "head"}, "optim": {"lr": 0.03}}, 0),
}


def variant(name: str, folder: Path) -> tuple[dict, GroupConfig]:
    """The variant's micro-ladder sweep spec and the target it stands for (written to ``folder/<name>.yaml``)."""
    _, changes, seed = VARIANTS[name]
    raw = yaml.safe_load(TARGET.read_text())
    for section, fields in changes.items():
        raw[section] = {**copy.deepcopy(raw.get(section, {})), **fields}
    path = folder / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    target = forecast.load_target(str(path))
    return sweep.merge(forecast.ladder_spec(target, "micro"), {"base": {"train": {"seed": seed}}}), target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/forecast_validation", type=Path)
    parser.add_argument("--only", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--only: unknown variant(s) {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    print("| ladder (micro, largest size held out) | verdicts right | precision / recall | logit within 2× "
          "| held-out instability LR: forecast (80% band) | measured |")
    print("|---|---|---|---|---|---|")
    right = total = 0
    for name in names:
        spec, target = variant(name, args.out / "targets")
        results = sweep.run_sweep(spec, args.out / "ladders" / name, pool=args.out / "groups")
        o = target.optim
        bt = forecast.backtest(results, o.eps, o.z_loss, o.weight_decay, target.model.qk_layernorm)
        rows = instability.unstable(results)
        held = bt["held_out_n"]
        t = forecast.trend(forecast.instability_lrs(rows.filter(pl.col("n_params") < held)), held)
        measured = dict(forecast.instability_lrs(rows)).get(held)
        fc = f"{t['value']:.2g} ({t['low']:.2g}–{t['high']:.2g})" if t["ok"] else f"cannot forecast: {t['why']}"
        pr = " / ".join("–" if x is None else f"{x:.2f}" for x in (bt["precision"], bt["recall"]))
        print(f"| {VARIANTS[name][0]} | {bt['verdicts_right']}/{bt['verdicts']} | {pr} | "
              f"{bt['logit_within_2x']}/{bt['logits']} | {fc} | {'–' if measured is None else f'{measured:.2g}'} |",
              flush=True)
        right, total = right + bt["verdicts_right"], total + bt["verdicts"]
    print(f"\n{right} of {total} verdicts right")


if __name__ == "__main__":  # the local executor spawns workers that import this file
    main()
