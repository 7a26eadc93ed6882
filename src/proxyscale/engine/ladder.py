"""Named size ladders: depth, width and heads grow jointly with the head dim fixed (paper §3.1)."""

from __future__ import annotations

from ..core.config import ConfigError, ModelConfig
from .model import count_params

LADDERS: dict[str, list[dict[str, int]]] = {
    # micro: CPU minutes; head dim 32 (inferred: the smallest width that still has heads to scale)
    "micro": [{"width": 32, "depth": 1, "heads": 1}, {"width": 64, "depth": 2, "heads": 2},
              {"width": 96, "depth": 3, "heads": 3}, {"width": 128, "depth": 4, "heads": 4}],
    # mini: micro's ladder and a fifth size that Fig 9 holds out of its fit; head dim 32
    "mini": [{"width": 32, "depth": 1, "heads": 1}, {"width": 64, "depth": 2, "heads": 2},
             {"width": 96, "depth": 3, "heads": 3}, {"width": 128, "depth": 4, "heads": 4},
             {"width": 160, "depth": 5, "heads": 5}],
    # small: one GPU; head dim 64 (inferred)
    "small": [{"width": 256, "depth": 3, "heads": 4}, {"width": 384, "depth": 4, "heads": 6},
              {"width": 512, "depth": 6, "heads": 8}, {"width": 768, "depth": 8, "heads": 12},
              {"width": 1024, "depth": 12, "heads": 16}],
    # paper: the consistent ladder of PAPER.md §1 (2.4M … 4.8B), head dim 64 (inferred)
    "paper": [{"width": 256, "depth": 3, "heads": 4}, {"width": 512, "depth": 3, "heads": 8},
              {"width": 512, "depth": 6, "heads": 8}, {"width": 1024, "depth": 6, "heads": 16},
              {"width": 1024, "depth": 12, "heads": 16}, {"width": 2048, "depth": 24, "heads": 32},
              {"width": 4096, "depth": 24, "heads": 64}],
}


def sizes(spec: str | list) -> list[dict[str, int]]:
    """A ladder name (optionally sliced, ``micro[:3]``) or an explicit list of {width, depth, heads}."""
    if isinstance(spec, list):
        out = []
        for i, s in enumerate(spec):
            if not isinstance(s, dict) or set(s) - {"width", "depth", "heads"} or not {"width", "depth"} <= set(s):
                raise ConfigError(f"sizes[{i}]: expected {{width, depth, heads}}, got {s!r}")
            out.append({"width": s["width"], "depth": s["depth"], "heads": s.get("heads", max(1, s["width"] // 32))})
        return out
    name, _, rest = str(spec).partition("[")
    if name not in LADDERS:
        raise ConfigError(f"sizes: unknown ladder {name!r}; valid: {', '.join(LADDERS)} or a list of {{width, depth, heads}}")
    ladder = LADDERS[name]
    if rest:
        lo, _, hi = rest.rstrip("]").partition(":")
        try:
            ladder = ladder[int(lo) if lo else None:int(hi) if hi else None]
        except ValueError:
            raise ConfigError(f"sizes: bad slice in {spec!r}; e.g. micro[:3]") from None
    return [dict(s) for s in ladder]


def size_label(s: dict[str, int]) -> str:
    n = count_params(ModelConfig(**s))
    return f"d{s['width']}-L{s['depth']} ({n / 1e6:.2g}M)" if n >= 1e5 else f"d{s['width']}-L{s['depth']} ({n / 1e3:.0f}k)"
