"""How much of Fig 1's LR sensitivity at the laptop scale is seed noise, and which seed carries it (issue 22).

Reads two finished runs of this machine's making and prints, per setting (size x qk-layernorm), the LR sensitivity
of every seed and the standard deviation over the init seeds (data order fixed) and over the data orders (init
fixed):

    proxyscale reproduce fig1 --scale laptop --workers 2 --out runs/reproduce      # init seeds 0, 1, 2 (data 0)
    proxyscale sweep examples/seed_noise.yaml --out runs/seed_noise --workers 2    # data orders 1, 2 (init 0)
    python examples/seed_noise.py runs/reproduce/fig1 runs/seed_noise
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import polars as pl

from proxyscale.core.analysis import sensitivity_frame

KEYS = ["label.size", "label.model.qk_layernorm"]


def main(init_dir: str, data_dir: str) -> None:
    init = pl.read_parquet(Path(init_dir) / "results.parquet")
    data = pl.read_parquet(Path(data_dir) / "results.parquet")
    by_init = sensitivity_frame(init, KEYS)  # one row per setting and init seed (data order 0)
    order0 = by_init.filter(pl.col("member.seed") == 0).with_columns(pl.lit(0, dtype=pl.Int64).alias("label.train.seed"))
    by_data = pl.concat(how="vertical_relaxed", items=[order0.select(*KEYS, "n_params", "label.train.seed", "lr_sensitivity"),
                         sensitivity_frame(data, [*KEYS, "label.train.seed"])
                         .select(*KEYS, "n_params", "label.train.seed", "lr_sensitivity")])
    print("| size | qk-layernorm | init seeds 0 / 1 / 2 (data 0) | sd over init | data orders 0 / 1 / 2 (init 0) "
          "| sd over data |")
    print("|---|---|---|---|---|---|")
    sds = {"init": [], "data": []}
    for key, part in by_init.sort("n_params").group_by(KEYS, maintain_order=True):
        a = part.sort("member.seed")["lr_sensitivity"].to_list()
        b = by_data.filter((pl.col(KEYS[0]) == key[0]) & (pl.col(KEYS[1]) == key[1])).sort("label.train.seed")[
            "lr_sensitivity"].to_list()
        sa, sb = statistics.stdev(a), statistics.stdev(b)
        sds["init"].append(sa)
        sds["data"].append(sb)
        print(f"| {key[0]} | {key[1]} | {' / '.join(f'{x:.3f}' for x in a)} | {sa:.3f} | "
              f"{' / '.join(f'{x:.3f}' for x in b)} | {sb:.3f} |")
    rms = {k: statistics.fmean(x * x for x in v) ** 0.5 for k, v in sds.items()}
    print(f"\nroot-mean-square sd over the six settings: init seeds {rms['init']:.3f}, data orders {rms['data']:.3f}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
