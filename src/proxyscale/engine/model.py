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

from ..core.config import ModelConfig
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
    depth_lr = depth_lr_mult(cfg)

    def linear(fan_in: int, fan_out: int, std: float | None = None, zero: bool = False,
               hidden: bool = True) -> ParamSpec:
        # paper §3.1: truncated normal with effective std 1/sqrt(fan_in); μParam scales the LR (§3.4); CompleteP
        # the LR of hidden weights (``depth_lr_mult``)
        lr_mult = (cfg.mup_base_width / fan_in if mup else 1.0) * (depth_lr if hidden else 1.0)
        std = 1.0 / math.sqrt(fan_in) if std is None else std
        return ParamSpec((fan_in, fan_out), "zeros" if zero else "trunc", std, lr_mult)

    def scale(n: int, hidden: bool = True) -> ParamSpec:
        return ParamSpec((n,), "ones", lr_mult=depth_lr if hidden else 1.0, decay=False)

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
            if cfg.qkv_layernorm:  # QKV-layernorm (Rybakov et al. 2024): v gets the same norm
                specs[p + "v_norm"] = scale(n)
        specs[p + "wo"] = linear(d, d)
        specs[p + "ln2"] = scale(d)
        specs[p + "w1"] = linear(d, f)
        specs[p + "w2"] = linear(f, d)
    specs["ln_f"] = scale(d, hidden=False)
    if not cfg.tied_embeddings:
        out_std = math.sqrt(cfg.mup_base_width) / d if cfg.mup in ("intermediate", "full") else None
        specs["unembed"] = linear(d, vocab_size, std=out_std, hidden=False)
    return specs


HIDDEN_MATRICES = ("wq", "wk", "wv", "wo", "w1", "w2")
"""The hidden 2-D weights of a block (those Muon steps; ``optim.optimizer``)."""


def is_hidden_matrix(name: str) -> bool:
    """Whether the tensor ``name`` (``layers.0.wq``) is a hidden 2-D weight: not the embedding, output layer or a norm."""
    return name.startswith("layers.") and name.rsplit(".", 1)[1] in HIDDEN_MATRICES


def depth_multiplier(cfg: ModelConfig) -> float:
    """L / L_base of CompleteP (``model.depth_alpha``); 1 when it is off."""
    return cfg.depth / cfg.base_depth if cfg.depth_alpha is not None else 1.0


def residual_scale(cfg: ModelConfig) -> float:
    """CompleteP's residual-branch multiplier (L/L_base)^−α (EleutherAI/nanoGPT-mup ``residual_scaling``); 1 off."""
    return depth_multiplier(cfg) ** -cfg.depth_alpha if cfg.depth_alpha is not None else 1.0


def depth_lr_mult(cfg: ModelConfig) -> float:
    """CompleteP's LR multiplier of hidden weights and hidden norm scales, (L/L_base)^(α−1) (the reference's
    ``depth_lr_scaling``; 1 at α = 1); 1 off."""
    return depth_multiplier(cfg) ** (cfg.depth_alpha - 1) if cfg.depth_alpha is not None else 1.0


def depth_eps_mult(cfg: ModelConfig) -> float:
    """CompleteP's AdamW ε multiplier: (L/L_base)^−α, × base_width/width under μParam (the reference's
    ``adam_eps *= (1/mup_width_multiplier) * depth_multiplier ** (-depth_alpha_exp)``); 1 off."""
    if cfg.depth_alpha is None:
        return 1.0
    width = cfg.mup_base_width / cfg.width if cfg.mup != "none" else 1.0
    return width * depth_multiplier(cfg) ** -cfg.depth_alpha


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


STATS = ("attn_logit_max", "q_norm", "k_norm", "block_rms")  # extras: attn_logit_max_capped, attn_logit_max_head
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

    def _attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                   cap: torch.Tensor | None = None) -> torch.Tensor:
        """q, k, v [K·B, H, T, Dh] -> [K·B, H, T, Dh], causal. ``cap`` [K·B, 1, 1, 1]: the attention soft-cap of each
        sequence's member (0 = none), or None for the fused kernel."""
        if self.cfg.attention == "softmax" and cap is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        t = q.shape[-2]
        logits = (q @ k.transpose(-1, -2)) * self.scale  # [K·B, H, T, T]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        if self.cfg.attention == "pointwise":
            # Appendix E.11: squared ReLU in place of softmax, scaled by L^-1/2 (L = sequence length).
            logits = logits if cap is None else softcap(logits, cap)
            weights = F.relu(logits).square().masked_fill(~causal, 0.0) * t**-0.5
            return weights @ v
        # Gemma 2's soft-cap on the scaled scores, before the mask and the softmax; the softmax in float32
        weights = softcap(logits, cap).float().masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return weights.to(v.dtype) @ v

    @torch.no_grad()
    def _attention_stats(self, q: torch.Tensor, k: torch.Tensor, members: int) -> dict[str, torch.Tensor]:
        """Max pre-softmax logit of each head over causal positions and batch (``diagnostics.max_attention_logit``)
        ``[K, H]``; mean q/k norms ``[K]``. q, k [K·B, H, T, Dh]."""
        heads = max_attention_logit(q, k, self.scale, per_head=True).view(members, -1, q.shape[1]).amax(dim=1)
        return {"attn_logit_max_head": heads,
                "q_norm": torch.linalg.vector_norm(q, dim=-1, dtype=torch.float32).view(members, -1).mean(dim=1),
                "k_norm": torch.linalg.vector_norm(k, dim=-1, dtype=torch.float32).view(members, -1).mean(dim=1)}

    def forward(self, params: dict[str, torch.Tensor], tokens: torch.Tensor, record: bool = False,
                caps: Caps | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        """tokens [B, T] (shared by all members) -> logits [K, B, T, V] and, when ``record`` (or when ``caps`` asks
        for the per-head maxima of QK-clip), the per-layer diagnostics ``{name: [L, K]}`` (``STATS``; with an
        attention cap also ``attn_logit_max_capped``; with ``caps.head_max`` also ``attn_logit_max_head`` [L, K, H]).

        Activations run in the dtype of the weights (bf16 or float32, chosen by ``device.StepWeights``);
        LayerNorm keeps float32 statistics internally. The embedding is looked up in the float32 master
        table and only the looked-up rows are cast. ``caps``: the members' soft-caps (``Caps``), None = none."""
        dtype = params["ln_f"].dtype  # the compute dtype
        B, T = tokens.shape
        embed = params["embed"]  # [K, V, D]
        K, V, D = embed.shape
        # one embedding lookup for all members: member k's ids are offset by k·V into the [K·V, D] table
        ids = tokens.unsqueeze(0) + (torch.arange(K, device=tokens.device) * V).view(K, 1, 1)  # [K, B, T]
        x = F.embedding(ids, embed.reshape(K * V, D)).to(dtype)  # [K, B, T, D]
        cos, sin = self.cos[:T].to(dtype), self.sin[:T].to(dtype)
        attn_cap = None
        if caps is not None and caps.attn is not None:  # [K] -> one per sequence [K·B, 1, 1, 1]
            attn_cap = caps.attn.to(dtype).repeat_interleave(B).view(K * B, 1, 1, 1)
        head_max = caps is not None and caps.head_max
        stats: list[dict[str, torch.Tensor]] = []
        for i in range(self.cfg.depth):
            if self.checkpoint_blocks and torch.is_grad_enabled():  # device seam: trade compute for memory
                x, layer_stats = checkpoint(self.block, params, i, x, cos, sin, record, attn_cap, head_max,
                                            use_reentrant=False)
            else:
                x, layer_stats = self.block(params, i, x, cos, sin, record, attn_cap, head_max)
            stats.append(layer_stats)
        x = _norm(x, params["ln_f"], self.cfg.norm)
        # tied (no ``unembed`` tensor: param_specs decides): the output layer is the embedding, here in the compute
        # dtype like every other matmul weight
        unembed = params["unembed"] if "unembed" in params else params["embed"].to(dtype).transpose(1, 2)  # [K, D, V]
        logits = _linear(x, unembed)
        if caps is not None and caps.final is not None:  # Gemma 2's final soft-cap, before softmax and z-loss
            logits = softcap(logits, caps.final.to(logits.dtype).view(K, 1, 1, 1))
        if not stats[0]:
            return logits, None
        out = {name: torch.stack([layer[name] for layer in stats]) for name in stats[0]}
        if attn_cap is not None and "attn_logit_max" in out:  # tanh is monotone: the post-cap max is the capped max
            out["attn_logit_max_capped"] = softcap(out["attn_logit_max"], caps.attn.view(1, K))
        return logits, out

    def block(self, params: dict[str, torch.Tensor], i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              record: bool, attn_cap: torch.Tensor | None = None,
              head_max: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Transformer block i: x [K, B, T, D] -> x, and its ``STATS`` ([K] each) when ``record`` (and the per-head
        maxima [K, H] when ``head_max``). Pre-LayerNorm (paper §3.1), or OLMo 2's reordered norm
        (``model.norm_placement``); each residual branch × CompleteP's ``residual_scale`` when it is on."""
        cfg = self.cfg
        K, B, T, _ = x.shape
        H, Dh = cfg.heads, self.head_dim
        p = f"layers.{i}."
        reordered = cfg.norm_placement == "reordered"  # x + Norm(Attn(x)) (OLMo 2) instead of x + Attn(Norm(x))
        h = x if reordered else _norm(x, params[p + "ln1"], cfg.norm)
        # q, k and v from one matmul against [wq | wk | wv] (a [K, D, 3D] copy of the small weights per step)
        wqkv = torch.cat([params[p + "wq"], params[p + "wk"], params[p + "wv"]], dim=2)
        q, k, v = _linear(h, wqkv).view(K, B, T, 3, H, Dh).unbind(3)  # each [K, B, T, H, Dh]
        if p + "q_norm" in params:  # qk-layernorm: its scales exist (param_specs decides); their shape says how
            q, k = _qk_norm(q, params[p + "q_norm"]), _qk_norm(k, params[p + "k_norm"])
            if p + "v_norm" in params:  # QKV-layernorm (Rybakov et al. 2024)
                v = _qk_norm(v, params[p + "v_norm"])
        if self.kappa is not None:  # κ transplant (paper §3.1.2): RMS over the head dim pinned to sqrt(κ)
            q = math.sqrt(self.kappa) * q * torch.rsqrt(q.float().square().mean(-1, keepdim=True) + 1e-12).to(q.dtype)
            k = math.sqrt(self.kappa) * k * torch.rsqrt(k.float().square().mean(-1, keepdim=True) + 1e-12).to(k.dtype)
        q, k = _rope(q, cos, sin), _rope(k, cos, sin)
        # [K, B, T, H, Dh] -> [K·B, H, T, Dh]
        q, k, v = (z.permute(0, 1, 3, 2, 4).reshape(K * B, H, T, Dh) for z in (q, k, v))
        stats = self._attention_stats(q, k, K) if record or head_max else {}
        a = self._attention(q, k, v, attn_cap).view(K, B, H, T, Dh).permute(0, 1, 3, 2, 4).reshape(K, B, T, H * Dh)
        r = residual_scale(cfg)
        a = _linear(a, params[p + "wo"])
        x = x + _scaled(_norm(a, params[p + "ln1"], cfg.norm) if reordered else a, r)
        h = x if reordered else _norm(x, params[p + "ln2"], cfg.norm)
        mlp = _linear(F.gelu(_linear(h, params[p + "w1"])), params[p + "w2"])
        x = x + _scaled(_norm(mlp, params[p + "ln2"], cfg.norm) if reordered else mlp, r)
        if not record:
            return x, ({"attn_logit_max_head": stats["attn_logit_max_head"]} if head_max else {})
        with torch.no_grad():
            flat = x.reshape(K, -1)
            block_rms = torch.linalg.vector_norm(flat, dim=1, dtype=torch.float32) / flat.shape[1] ** 0.5
        out = {"attn_logit_max": stats["attn_logit_max_head"].amax(dim=1), "q_norm": stats["q_norm"],
               "k_norm": stats["k_norm"], "block_rms": block_rms}
        if head_max:
            out["attn_logit_max_head"] = stats["attn_logit_max_head"]
        return x, out


def _scaled(x: torch.Tensor, r: float) -> torch.Tensor:
    """A residual branch × r; r = 1 (CompleteP off) leaves it untouched (the same numbers as without the switch)."""
    return x if r == 1.0 else x * r


def _qk_norm(z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The q/k(/v) LayerNorm of qk-layernorm: z [K, B, T, H, Dh]; ``scale`` [K, Dh] per head (one scale shared by
    the heads, paper §3.1.2) or [K, D] over the whole width (Appendix E.8): the scale's shape says which."""
    K, B, T, H, Dh = z.shape
    if scale.shape[-1] == Dh:
        return _norm(z, scale, "layernorm")
    return _norm(z.reshape(K, B, T, H * Dh), scale, "layernorm").view(K, B, T, H, Dh)


@dataclass(frozen=True)
class Caps:
    """What a group's members cap and clip in the forward pass (the post-paper switches of ``model``/``optim``).

    ``attn``, ``final``: the members' attention and output soft-caps ``[K]`` (0 = none for that member; None = no
    member has one, so the fused attention kernel runs). ``head_max``: return the per-head max logits QK-clip needs."""

    attn: torch.Tensor | None = None
    final: torch.Tensor | None = None
    head_max: bool = False

    def rows(self, rows: torch.Tensor | None) -> Caps:
        """The caps of the live members ``rows`` (None = all)."""
        if rows is None:
            return self
        pick = (lambda c: None if c is None else c[rows])
        return Caps(pick(self.attn), pick(self.final), self.head_max)


def softcap(x: torch.Tensor, cap: torch.Tensor) -> torch.Tensor:
    """cap·tanh(x/cap) (Gemma 2), elementwise, where cap > 0; x unchanged where cap = 0. ``cap`` broadcasts
    against x. The division uses 1 in place of a 0 cap, so no NaN reaches the gradient of the unused branch."""
    on = cap > 0
    c = torch.where(on, cap, torch.ones_like(cap))
    return torch.where(on, c * torch.tanh(x / c), x)
