"""The proxy GPT (paper §3.1) over a member axis: every parameter has a leading axis K.

Shapes: K members, B sequences, T positions, D width, H heads, Dh head dim, F = 4·D, V vocab.
Activations are ``[K, B, T, D]``; linear layers are batched matmuls over K; attention runs on K·B sequences.
Member k only ever touches slice k of every tensor, so members are independent (DESIGN.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import ModelConfig
from .diagnostics import max_attention_logit

NORM_EPS = 1e-6  # paper §3.1: LayerNorm epsilon 1e-6
TRUNC_STD_FACTOR = 0.8796256610342398  # std of a N(0,1) truncated at ±2; divide by it for the effective std


@dataclass(frozen=True)
class ParamSpec:
    """One tensor of the model, per member: its shape, init and μParam LR multiplier."""

    shape: tuple[int, ...]
    init: str  # "embed" | "trunc" | "ones" | "zeros"
    std: float = 0.0
    lr_mult: float = 1.0
    decay: bool = True


def param_specs(cfg: ModelConfig, vocab_size: int) -> dict[str, ParamSpec]:
    """Every tensor of one member, in a fixed order (the init order, so seeds reproduce across K)."""
    d, f = cfg.width, 4 * cfg.width
    dh = cfg.width // cfg.heads
    mup = cfg.mup != "none"

    def linear(fan_in: int, fan_out: int, std: float | None = None, zero: bool = False) -> ParamSpec:
        # paper §3.1: truncated normal with effective std 1/sqrt(fan_in); μParam scales the LR (§3.4).
        lr_mult = cfg.mup_base_width / fan_in if mup else 1.0
        std = 1.0 / math.sqrt(fan_in) if std is None else std
        return ParamSpec((fan_in, fan_out), "zeros" if zero else "trunc", std, lr_mult)

    def scale(n: int) -> ParamSpec:
        return ParamSpec((n,), "ones", decay=False)

    specs: dict[str, ParamSpec] = {"embed": ParamSpec((vocab_size, d), "embed", 1.0 / math.sqrt(d))}
    zero_q = cfg.zero_init_queries or cfg.mup == "full"
    for i in range(cfg.depth):
        p = f"layers.{i}."
        specs[p + "ln1"] = scale(d)
        specs[p + "wq"] = linear(d, d, zero=zero_q)
        specs[p + "wk"] = linear(d, d)
        specs[p + "wv"] = linear(d, d)
        if cfg.qk_layernorm != "off":
            n = dh if cfg.qk_layernorm == "head" else d
            specs[p + "q_norm"] = scale(n)
            specs[p + "k_norm"] = scale(n)
        specs[p + "wo"] = linear(d, d)
        specs[p + "ln2"] = scale(d)
        specs[p + "w1"] = linear(d, f)
        specs[p + "w2"] = linear(f, d)
    specs["ln_f"] = scale(d)
    if not cfg.tied_embeddings:
        out_std = math.sqrt(cfg.mup_base_width) / d if cfg.mup in ("intermediate", "full") else None
        specs["unembed"] = linear(d, vocab_size, std=out_std)
    return specs


def count_params(cfg: ModelConfig, vocab_size: int = 256) -> int:
    """Parameter count N as in the paper: everything but the embedding and the output layer."""
    return sum(math.prod(s.shape) for n, s in param_specs(cfg, vocab_size).items() if n not in ("embed", "unembed"))


def _init_one(spec: ParamSpec, gen: torch.Generator) -> torch.Tensor:
    t = torch.empty(spec.shape)
    if spec.init == "ones":
        return t.fill_(1.0)
    if spec.init == "zeros":
        return t.zero_()
    if spec.init == "embed":
        return t.normal_(0.0, spec.std, generator=gen)
    # Truncated normal at ±2 raw std by the inverse CDF (as torch.nn.init.trunc_normal_ does), with the raw
    # std raised so the *effective* std is spec.std (paper §3.1).
    raw = spec.std / TRUNC_STD_FACTOR
    lo, hi = math.erf(-2 / math.sqrt(2)), math.erf(2 / math.sqrt(2))
    t.uniform_(lo, hi, generator=gen).erfinv_().mul_(raw * math.sqrt(2.0))
    return t.clamp_(-2 * raw, 2 * raw)


def init_params(cfg: ModelConfig, vocab_size: int, seeds: list[int]) -> dict[str, torch.Tensor]:
    """Float32 parameters ``[K, *shape]``; member k is drawn from its own generator seeded with seeds[k]."""
    specs = param_specs(cfg, vocab_size)
    per_member = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(int(seed))
        per_member.append({name: _init_one(spec, gen) for name, spec in specs.items()})
    return {name: torch.stack([m[name] for m in per_member]) for name in specs}


def _norm(x: torch.Tensor, scale: torch.Tensor, kind: str) -> torch.Tensor:
    """LayerNorm/RMSNorm over the last dim with a per-member scale, no bias. x [K, ..., N], scale [K, N]."""
    n = x.shape[-1]
    if kind == "layernorm":
        y = F.layer_norm(x, (n,), eps=NORM_EPS)
    else:
        y = F.rms_norm(x, (n,), eps=NORM_EPS)
    return y * scale.view(scale.shape[0], *([1] * (x.dim() - 2)), n)


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [K, B, T, I] @ w [K, I, O] -> [K, B, T, O] as one batched matmul over K."""
    k, b, t, i = x.shape
    return torch.bmm(x.reshape(k, b * t, i), w).view(k, b, t, w.shape[-1])


def rope_tables(seq_len: int, head_dim: int, base: float, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [T, Dh] for rotary embeddings over the full head dim (rotate-half layout)."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    ang = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv)  # [T, Dh/2]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [K, B, T, H, Dh]; cos/sin [T, Dh]."""
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos[:, None, :] + rot * sin[:, None, :]


STATS = ("attn_logit_max", "q_norm", "k_norm", "block_rms")
"""Per-layer diagnostics the forward pass records when asked (paper §3): each a ``[L, K]`` tensor — the max
pre-softmax logit over heads, causal positions and batch; the mean query and key norms over B, T, H; the RMS of
the residual stream after the block."""


class ProxyGPT:
    """Functional model: ``forward(params, tokens)`` -> logits [K, B, T, V]. Holds only static state."""

    def __init__(self, cfg: ModelConfig, vocab_size: int, seq_len: int, device: torch.device,
                 checkpoint_blocks: bool = False) -> None:
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.head_dim = cfg.width // cfg.heads
        linear_scale = cfg.attn_scale == "linear" or cfg.mup == "full"
        self.kappa = cfg.kappa
        # κ transplant: logits = <q,k>/Dh with RMS(q) = RMS(k) = sqrt(κ), so max logit = κ (inferred).
        self.scale = 1.0 / self.head_dim if (linear_scale or cfg.kappa is not None) else 1.0 / math.sqrt(self.head_dim)
        self.cos, self.sin = rope_tables(seq_len, self.head_dim, cfg.rope_base, device)
        self.checkpoint_blocks = checkpoint_blocks  # activation checkpointing (train.activation_checkpointing)

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v [K·B, H, T, Dh] -> [K·B, H, T, Dh], causal."""
        if self.cfg.attention == "softmax":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        t = q.shape[-2]
        logits = (q @ k.transpose(-1, -2)) * self.scale  # [K·B, H, T, T]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        # Appendix E.11: squared ReLU in place of softmax, scaled by L^-1/2 (L = sequence length).
        weights = F.relu(logits).square().masked_fill(~causal, 0.0) * t**-0.5
        return weights @ v

    @torch.no_grad()
    def _attention_stats(self, q: torch.Tensor, k: torch.Tensor, members: int) -> tuple[torch.Tensor, ...]:
        """Max pre-softmax logit over heads, causal positions and batch (``diagnostics.max_attention_logit``);
        mean q/k norms; each [K]. q, k [K·B, H, T, Dh]."""
        return (max_attention_logit(q, k, self.scale).view(members, -1).amax(dim=1),
                torch.linalg.vector_norm(q, dim=-1, dtype=torch.float32).view(members, -1).mean(dim=1),
                torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32).view(members, -1).mean(dim=1))

    def forward(self, params: dict[str, torch.Tensor], tokens: torch.Tensor,
                record: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """tokens [B, T] (shared by all members) -> logits [K, B, T, V] and, when ``record``, the per-layer
        diagnostics ``{name: [L, K]}`` (``STATS``).

        Activations run in the dtype of the weights (bf16 or float32, chosen by ``device.StepWeights``);
        LayerNorm keeps float32 statistics internally. The embedding is looked up in the float32 master
        table and only the looked-up rows are cast."""
        dtype = params["ln_f"].dtype  # the compute dtype
        T = tokens.shape[1]
        embed = params["embed"]  # [K, V, D]
        K, V, D = embed.shape
        # one embedding lookup for all members: member k's ids are offset by k·V into the [K·V, D] table
        ids = tokens.unsqueeze(0) + (torch.arange(K, device=tokens.device) * V).view(K, 1, 1)  # [K, B, T]
        x = F.embedding(ids, embed.reshape(K * V, D)).to(dtype)  # [K, B, T, D]
        cos, sin = self.cos[:T].to(dtype), self.sin[:T].to(dtype)
        stats: list[tuple[torch.Tensor, ...]] = []
        for i in range(self.cfg.depth):
            if self.checkpoint_blocks and torch.is_grad_enabled():  # device seam: trade compute for memory
                x, layer_stats = checkpoint(self.block, params, i, x, cos, sin, record, use_reentrant=False)
            else:
                x, layer_stats = self.block(params, i, x, cos, sin, record)
            stats.append(layer_stats)
        x = _norm(x, params["ln_f"], self.cfg.norm)
        # tied (no ``unembed`` tensor: param_specs decides): the output layer is the embedding, here in the compute
        # dtype like every other matmul weight
        unembed = params["unembed"] if "unembed" in params else params["embed"].to(dtype).transpose(1, 2)  # [K, D, V]
        logits = _linear(x, unembed)
        if not record:
            return logits, None
        return logits, {name: torch.stack(values) for name, values in zip(STATS, zip(*stats))}

    def block(self, params: dict[str, torch.Tensor], i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              record: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Transformer block i (pre-LayerNorm): x [K, B, T, D] -> x, and its ``STATS`` ([K] each) when ``record``."""
        cfg = self.cfg
        K, B, T, _ = x.shape
        H, Dh = cfg.heads, self.head_dim
        p = f"layers.{i}."
        h = _norm(x, params[p + "ln1"], cfg.norm)
        # q, k and v from one matmul against [wq | wk | wv] (a [K, D, 3D] copy of the small weights per step)
        wqkv = torch.cat([params[p + "wq"], params[p + "wk"], params[p + "wv"]], dim=2)
        q, k, v = _linear(h, wqkv).view(K, B, T, 3, H, Dh).unbind(3)  # each [K, B, T, H, Dh]
        if p + "q_norm" in params:  # qk-layernorm: its scales exist (param_specs decides); their shape says how
            q_norm, k_norm = params[p + "q_norm"], params[p + "k_norm"]  # [K, Dh] per head, or [K, D] over the width
            if q_norm.shape[-1] == Dh:  # one scale [Dh] shared by the heads (paper §3.1.2)
                q, k = _norm(q, q_norm, "layernorm"), _norm(k, k_norm, "layernorm")
            else:  # over the whole width (Appendix E.8)
                q = _norm(q.view(K, B, T, H * Dh), q_norm, "layernorm").view(K, B, T, H, Dh)
                k = _norm(k.view(K, B, T, H * Dh), k_norm, "layernorm").view(K, B, T, H, Dh)
        if self.kappa is not None:  # κ transplant (paper §3.1.2): RMS over the head dim pinned to sqrt(κ)
            q = math.sqrt(self.kappa) * q * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + 1e-12).to(q.dtype)
            k = math.sqrt(self.kappa) * k * torch.rsqrt(k.float().square().mean(-1, keepdim=True) + 1e-12).to(k.dtype)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        # [K, B, T, H, Dh] -> [K·B, H, T, Dh]
        q, k, v = (z.permute(0, 1, 3, 2, 4).reshape(K * B, H, T, Dh) for z in (q, k, v))
        attn_stats = self._attention_stats(q, k, K) if record else ()
        a = self._attention(q, k, v).view(K, B, H, T, Dh).permute(0, 1, 3, 2, 4).reshape(K, B, T, H * Dh)
        x = x + _linear(a, params[p + "wo"])
        h = _norm(x, params[p + "ln2"], cfg.norm)
        x = x + _linear(F.gelu(_linear(h, params[p + "w1"])), params[p + "w2"])
        if not record:
            return x, ()
        with torch.no_grad():
            flat = x.reshape(K, -1)
            block_rms = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32) / flat.shape[1] ** 0.5
        return x, (*attn_stats, block_rms)
