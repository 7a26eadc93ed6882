"""The mitigations adopted after the paper (issue 16), each one switch: off, a group is today's bit for bit; on,
the member axis keeps its promises; and each does what its reference code does."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from proxyscale.core import config
from proxyscale.core.config import ConfigError, Member, OptimConfig
from proxyscale.engine.data import Batches
from proxyscale.engine.losses import loss_parts, total_loss
from proxyscale.engine.model import Caps, ParamSpec, ProxyGPT, softcap
from proxyscale.engine.optim import BatchedAdamW, FlatParams, lr_schedule, qk_clip
from proxyscale.engine.train import GroupRun
from tests.conftest import tiny
from tests.test_engine import assert_close, member_frame, run

GOLDEN = json.loads((Path(__file__).parent / "golden" / "switches_off.json").read_text())
GOLDEN_CASES = {  # the groups of golden/switches_off.json, trained before the switches existed
    "qk_layernorm": tiny(members={"lr": [1e-2, 1e-1]}),
    "plain_coupled": tiny(model={"qk_layernorm": False},
                          members={"lr": [3e-2, 3e-1], "independent_weight_decay": [False]}),
}
OFF = {"model": {"attn_softcap": None, "final_softcap": None, "qkv_layernorm": False, "norm_placement": "pre",
                 "depth_alpha": None, "base_depth": 1},
       "optim": {"optimizer": "adamw", "qk_clip": None, "zclip": None, "mu_centering": False, "mu_loss": 0.0}}

SWITCHES = {  # each switch on, over a group without qk-layernorm where the mechanism has something to act on
    "softcap": ({"model": {"qk_layernorm": False}}, {"attn_softcap": [5.0], "final_softcap": [3.0]}),
    "qkclip": ({"model": {"qk_layernorm": False}}, {"qk_clip": [2.0]}),
    "muon": ({"optim": {"optimizer": "muon"}}, {}),
    "muonclip": ({"optim": {"optimizer": "muon"}, "model": {"qk_layernorm": False}}, {"qk_clip": [2.0]}),
    "atan2": ({"optim": {"optimizer": "adam_atan2"}}, {}),
    "zclip": ({"optim": {"zclip_warmup": 3}}, {"zclip": [1.0]}),
    "completep": ({"model": {"depth_alpha": 1.0}}, {}),
    "qkv_layernorm": ({"model": {"qkv_layernorm": True}}, {}),
    "reordered": ({"model": {"norm_placement": "reordered"}}, {}),
    # Output Embedding Centering (issue 23), where it has a drift to act on: no weight decay, no z-loss
    "mu_centering": ({"optim": {"weight_decay": 0.0, "z_loss": 0.0}}, {"mu_centering": [True]}),
    "mu_loss": ({"optim": {"weight_decay": 0.0, "z_loss": 0.0}}, {"mu_loss": [1e-2]}),
}


# The golden's cross-CPU tolerance (measured: see the docstring of test_every_switch_off_is_todays_group_bit_for_bit)
GOLDEN_REL = 1e-4
GOLDEN_CHAOTIC = {"plain_coupled": [1]}  # members whose trajectory is chaotic after a few steps (the docstring)
GOLDEN_CHAOTIC_STEPS = 4


def _per_member(losses: list[float], k: int) -> list[list[float]]:
    """The metrics log's loss column (steps x members, member fastest) as one list per member."""
    return [losses[m::k] for m in range(k)]


@pytest.mark.parametrize("case", list(GOLDEN_CASES))
def test_every_switch_off_is_todays_group_bit_for_bit(tmp_path, case):
    """Trained with every post-paper field at its off value, a group is the group without those fields: left out or
    named off, the same weights (sha256), losses and eval losses, bit for bit in this process. And both give the
    numbers the code gave before those fields existed (golden/switches_off.json, recorded on another CPU), to a
    measured cross-CPU tolerance: every stable member at every step, the chaotic one over its first steps.

    The golden numbers were recorded on another machine (an AMX CPU), so they are compared with a tolerance, and the
    bit-for-bit half of the promise is checked in this process. The tolerance is measured (issue 21): the two cases
    trained on a 2-core AMD EPYC with AVX512-BF16 and no AMX, once with torch's native kernels (AVX512) and once each
    with its AVX2 and default kernels (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, MKL_ENABLE_INSTRUCTIONS), against the
    golden's AMX machine: four kernel sets, six pairs.

    - Every stable member (both members with qk-layernorm, LR 0.03 without): training losses within 7.3e-6
      (relative) at every step, final eval losses within 5.5e-7. Compared at GOLDEN_REL = 1e-4, 14x the widest
      measured spread. What that still catches, measured on the LR 0.01 member with qk-layernorm over its first 10
      steps: a final-logit soft-cap of 30 left on moves the loss by 2e-5 to 1e-3 (past 1e-4 at 8 of 10 steps),
      reordered norms by 2e-3 to 2e-2; an attention soft-cap of 50 barely binds at these logits (at most 3e-5) and
      would pass, which is why the bit-for-bit check in one process, not the golden, is what holds a switch off.
    - The LR 0.3 member without qk-layernorm is the instability this project studies: its loss amplifies a
      last-digit difference about tenfold a step (spread 1e-7 up to step 4, 1e-5 at step 5, 1e-3 at step 7, 4e-2 by
      step 19), so a stored trajectory says nothing about its later steps on another CPU. It is compared over its
      first GOLDEN_CHAOTIC_STEPS = 4 steps (spread at most 1.2e-7 there), and bit for bit within the process.
    """
    raw = GOLDEN_CASES[case]
    named_off = {**raw, "model": {**raw["model"], **OFF["model"]}, "optim": {**raw["optim"], **OFF["optim"]}}
    got = {}
    for name, r in (("left out", raw), ("named off", named_off)):
        run_ = GroupRun(config.from_dict(r), tmp_path / name.replace(" ", "_"))
        summary = run_.run()
        got[name] = (hashlib.sha256(run_.fp.flat.numpy().tobytes()).hexdigest(),
                     run_.log.frame()["loss"].drop_nulls().to_list(),
                     [m["final_eval_loss"] for m in summary.members])
    assert got["left out"] == got["named off"]  # bit for bit, one process
    _, loss, final = got["left out"]
    golden = GOLDEN["cases"][case]
    k = len(final)
    assert len(loss) == len(golden["loss"])
    for m, (mine, theirs) in enumerate(zip(_per_member(loss, k), _per_member(golden["loss"], k))):
        if m in GOLDEN_CHAOTIC.get(case, []):
            mine, theirs = mine[:GOLDEN_CHAOTIC_STEPS], theirs[:GOLDEN_CHAOTIC_STEPS]
        else:
            assert final[m] == pytest.approx(golden["final_eval_loss"][m], rel=GOLDEN_REL), m
        assert mine == pytest.approx(theirs, rel=GOLDEN_REL), m
    # and the run id is the one it had before the switches existed: cached results stay valid
    from proxyscale.core import table
    cfg = config.from_dict(named_off)
    assert table.identity(cfg) == table.identity(config.from_dict(raw))
    assert not any(k in json.dumps(table.identity(cfg)) for k in ("softcap", "qk_clip", "zclip", "optimizer"))


def test_the_golden_tolerance_catches_a_switch_left_on(tmp_path):
    """The tolerance above is no blanket: the same group with one post-paper switch on (a final-logit soft-cap of
    30, as Gemma 2 uses) leaves it in the first steps of a stable member."""
    raw = GOLDEN_CASES["qk_layernorm"]
    run_ = GroupRun(config.from_dict({**raw, "model": {**raw["model"], "final_softcap": 30.0}}), tmp_path / "on")
    run_.run()
    loss = _per_member(run_.log.frame()["loss"].drop_nulls().to_list(), 2)[0]
    golden = _per_member(GOLDEN["cases"]["qk_layernorm"]["loss"], 2)[0]
    assert loss != pytest.approx(golden, rel=GOLDEN_REL)


@pytest.mark.parametrize("switch", list(SWITCHES))
def test_each_switch_keeps_the_member_axis_promises(tmp_path, switch):
    """Member k of a group with the switch on equals the same member trained alone (float tolerance); a member
    whose LR makes it NaN leaves the others bit-identical."""
    over, members = SWITCHES[switch]
    train = {"precision": "fp32", "compile": "off"}

    def raw(lrs):
        return tiny(**{**over, "train": train}, members={"lr": lrs, **members})

    _, group = run(tmp_path, raw([1e-2, 1e-1, 1e30]), "group")
    _, alone = run(tmp_path, raw([1e-1]), "alone")
    _, pair = run(tmp_path, raw([1e-2, 1e-1]), "pair")
    assert_close(member_frame(group, 1), member_frame(alone, 0), 1e-4, (switch, "K=3 vs K=1"))
    assert member_frame(group, 2)["diverged"].max() == 1.0, "the LR-1e30 member did not blow up"
    for k in (0, 1):
        fa, fb = member_frame(group, k), member_frame(pair, k)
        for col in fb.columns:
            assert fa[col].to_list() == fb[col].to_list(), (switch, k, col)


# -- soft-capping -----------------------------------------------------------------------------------------------

def test_softcap_is_gemmas_formula_and_leaves_uncapped_members_alone():
    x = torch.tensor([[-500.0, -3.0, 0.0, 3.0, 500.0]] * 2)
    cap = torch.tensor([[50.0], [0.0]])
    y = softcap(x, cap)
    assert torch.allclose(y[0], 50.0 * torch.tanh(x[0] / 50.0)) and torch.equal(y[1], x[1])
    assert float(softcap(torch.tensor(1e30), torch.tensor(30.0))) == 30.0  # saturates at the cap, no overflow
    x.requires_grad_(True)
    softcap(x, cap).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.equal(x.grad[1], torch.ones(5))


def test_softcap_bounds_the_post_cap_logits_and_records_the_pre_cap_one(tmp_path):
    """No post-cap attention logit exceeds the cap, while the recorded pre-cap logit does (high LR, no qk-layernorm);
    the final cap bounds every output logit."""
    cap = 4.0
    cfg = config.from_dict(tiny(model={"qk_layernorm": False}, members={"lr": [0.3], "attn_softcap": [cap]}))
    run_ = GroupRun(cfg, tmp_path / "o")
    run_.run()
    f = run_.log.frame()
    pre, post = f["attn_logit_max/0"].drop_nulls(), f["attn_logit_max_capped/0"].drop_nulls()
    assert pre.max() > cap, "the pre-cap logit never passed the cap: nothing was tested"
    assert post.max() <= cap and (post <= pre + 1e-6).all()
    # the final cap, on the model directly
    model = ProxyGPT(cfg.model, 256, 32, torch.device("cpu"))
    params = {n: p.detach() for n, p in run_.fp.params.items()}
    tokens = torch.randint(0, 256, (2, 32))
    logits, _ = model.forward(params, tokens, caps=Caps(final=torch.tensor([1.5])))
    assert logits.abs().max() <= 1.5


# -- QK-clip ----------------------------------------------------------------------------------------------------

def _head_logits(model, params, tokens):
    """Per layer the [K, H] max logit on ``tokens`` (the model's own per-head maxima)."""
    _, stats = model.forward(params, tokens, caps=Caps(head_max=True))
    return stats["attn_logit_max_head"]  # [L, K, H]


@pytest.mark.parametrize("alpha", [0.5, 0.0, 1.0])
def test_qk_clip_brings_every_head_to_at_most_tau_on_the_same_batch(tmp_path, alpha):
    """After the clip, every head's max logit on the batch it was measured on is at most τ (float tolerance), the
    heads below τ and the member with τ off are untouched bit for bit, and the count of clipped heads is right.
    One block: in a deeper model the clips of the lower blocks also change the upper blocks' inputs, so there the
    bound holds only near τ (the next test)."""
    cfg = config.from_dict(tiny(model={"qk_layernorm": False, "width": 32, "heads": 4, "depth": 1},
                                members={"lr": [0.3], "qk_clip": [None, 1.0]}))
    run_ = GroupRun(cfg, tmp_path / "o")
    run_.run()  # trained without the clip ever seeing these weights' logits on this batch
    tokens = run_.batches.train(0)[0]
    params = {n: p.detach() for n, p in run_.fp.params.items()}
    before = _head_logits(run_.model, params, tokens)
    tau = float(before[:, 1].median())  # some heads above, some below
    flat_before = run_.fp.flat.clone()
    clipped = qk_clip(run_.fp, before, torch.tensor([0.0, tau]), alpha, heads=4)
    after = _head_logits(run_.model, {n: p.detach() for n, p in run_.fp.params.items()}, tokens)
    assert (after[:, 1] <= tau * (1 + 1e-5)).all()
    above = before[:, 1] > tau
    assert torch.allclose(after[:, 1][above], torch.full_like(after[:, 1][above], tau), rtol=1e-5)
    assert torch.equal(after[:, 1][~above], before[:, 1][~above])
    assert torch.equal(run_.fp.flat[0], flat_before[0]), "the member with QK-clip off changed"
    assert clipped.tolist() == [0.0, float(above.sum())]


def test_qk_clip_in_training_counts_heads_and_holds_the_logit_near_tau(tmp_path):
    """At a high LR without qk-layernorm the clip fires (heads counted each logged step), and the max logit of the
    clipped member stays near τ (it is clipped on the previous batch and the next update adds to it: measured
    max 8.3 = 2.8τ at LR 0.1 after step 10, ending at 1.03τ), far below the unclipped member's (226 = 75τ)."""
    tau = 3.0
    cfg = config.from_dict(tiny(model={"qk_layernorm": False}, train={"steps": 30},
                                members={"lr": [0.1], "qk_clip": [None, tau]}))
    run_ = GroupRun(cfg, tmp_path / "o")
    run_.run()
    f = run_.log.frame()
    late = f.filter(f["step"] >= 10)
    off, on = (late.filter(late["member"] == k)["attn_logit_max/0"].drop_nulls() for k in (0, 1))
    assert f.filter(f["member"] == 1)["qk_clip_heads"].sum() > 0
    assert f.filter(f["member"] == 0)["qk_clip_heads"].sum() == 0
    assert on.max() <= 3 * tau and off.max() > 10 * tau and on[-1] <= 1.5 * tau


# -- Muon -------------------------------------------------------------------------------------------------------

def _torch_newton_schulz_in(dtype):
    """torch.optim.Muon's ``_zeropower_via_newtonschulz`` (torch 2.13, ``torch/optim/_muon.py``) line for line, with
    its ``grad.bfloat16()`` cast replaced by ``dtype``."""
    def zeropower(grad, ns_coefficients, ns_steps, eps):
        a, b, c = ns_coefficients
        ortho_grad = grad.to(dtype)
        if grad.size(0) > grad.size(1):
            ortho_grad = ortho_grad.T
        ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
        for _ in range(ns_steps):
            gram_matrix = ortho_grad @ ortho_grad.T
            gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
            ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
        if grad.size(0) > grad.size(1):
            ortho_grad = ortho_grad.T
        return ortho_grad

    return zeropower


def test_batched_newton_schulz_equals_torchs_per_matrix():
    """One batched Newton–Schulz over [N, A, B] equals torch.optim.Muon's per matrix: to float tolerance in float32,
    and to bf16's resolution in bf16 (what both run)."""
    import torch.optim._muon as muon_mod

    from proxyscale.engine import optim

    torch.manual_seed(0)
    g = torch.randn(6, 16, 64)
    # the copy in float32; torch's own in bf16 (and the copy in bf16 equals torch's: the copy is faithful)
    assert torch.equal(_torch_newton_schulz_in(torch.bfloat16)(g[0], optim.NS_COEFFICIENTS, 5, optim.NS_EPS),
                       muon_mod._zeropower_via_newtonschulz(g[0], optim.NS_COEFFICIENTS, 5, optim.NS_EPS))
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
        ref = _torch_newton_schulz_in(dtype) if dtype == torch.float32 else muon_mod._zeropower_via_newtonschulz
        want = torch.stack([ref(m, optim.NS_COEFFICIENTS, optim.NS_STEPS, optim.NS_EPS) for m in g]).float()
        old, optim.NS_DTYPE = optim.NS_DTYPE, dtype
        try:
            got = optim.newton_schulz(g).float()
        finally:
            optim.NS_DTYPE = old
        assert (got - want).abs().max() <= tol, dtype


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_equals_torch_optim_muon_plus_adamw_in_a_plain_loop(tmp_path, adjust, monkeypatch):
    """K = 1: the group's Muon (hidden matrices) + AdamW (the rest) gives the weights of torch.optim.Muon +
    torch.optim.AdamW in a plain loop over the same batches, schedule and clipping, after 20 steps, to float
    tolerance. Both Newton–Schulz iterations run in float32 here: in bf16 (what both run in training) one rounding
    of 4e-3 a step compounds over 20 steps to ~1e-3 in the weights, which would hide a real difference."""
    import torch.optim._muon as muon_mod

    from proxyscale.engine import optim

    monkeypatch.setattr(optim, "NS_DTYPE", torch.float32)
    monkeypatch.setattr(muon_mod, "_zeropower_via_newtonschulz", _torch_newton_schulz_in(torch.float32))
    lr, wd = 2e-2, 0.1
    cfg = config.from_dict(tiny(optim={"optimizer": "muon", "muon_lr_adjust": adjust, "weight_decay": wd,
                                       "independent_weight_decay": False, "z_loss": 1e-4},
                                members={"lr": [lr]}))
    run_ = GroupRun(cfg, tmp_path / "o")
    init = {n: p.detach().clone() for n, p in run_.fp.params.items()}
    run_.run()
    # the plain loop: nn.Linear-style [out, in] leaves for torch.optim.Muon, the rest as they are
    hidden = [n for n in init if n.rsplit(".", 1)[-1] in ("wq", "wk", "wv", "wo", "w1", "w2")]
    leaves = {n: (init[n][0].T if n in hidden else init[n][0]).clone().requires_grad_(True) for n in init}
    norms = [n for n in init if n not in hidden and run_.specs[n].decay is False]
    muon = torch.optim.Muon([leaves[n] for n in hidden], lr=lr, weight_decay=wd, momentum=0.95, nesterov=True,
                            adjust_lr_fn=adjust)
    adamw = torch.optim.AdamW([{"params": [leaves[n] for n in init if n not in hidden and n not in norms]},
                               {"params": [leaves[n] for n in norms], "weight_decay": 0.0}],
                              lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=wd)
    model = ProxyGPT(cfg.model, run_.vocab_size, cfg.data.seq_len, torch.device("cpu"))
    batches = Batches(run_.data, cfg.data, cfg.train.seed, torch.device("cpu"))
    for s in range(cfg.train.steps):
        x, y = batches.train(s)
        params = {n: (leaves[n].T if n in hidden else leaves[n]).unsqueeze(0) for n in init}
        logits, _ = model.forward(params, x)
        loss = total_loss(loss_parts(logits, y, diagnostics=False), torch.tensor([1e-4]))
        for opt in (muon, adamw):
            opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(leaves.values()), cfg.optim.clip)
        now = lr_schedule(s, lr, cfg.optim.warmup, cfg.train.steps, cfg.optim.min_lr)
        for opt in (muon, adamw):
            for group in opt.param_groups:
                group["lr"] = now
            opt.step()
    for n in init:
        ref = leaves[n].detach().T if n in hidden else leaves[n].detach()
        got = run_.fp.params[n].detach()[0]
        assert torch.allclose(got, ref, rtol=1e-3, atol=2e-5), (n, (got - ref).abs().max())
    moved = max(float((run_.fp.params[n].detach()[0] - init[n][0]).abs().max()) for n in hidden)
    assert moved > 1e-3, "Muon did not move the hidden matrices"


def test_muon_refuses_a_model_without_hidden_matrices():
    fp = FlatParams({"embed": torch.randn(1, 8, 4), "ln_f": torch.ones(1, 4)})
    specs = {"embed": ParamSpec((8, 4), "embed", 0.5), "ln_f": ParamSpec((4,), "ones", decay=False)}
    member = Member(lr=1e-2, weight_decay=0.0, independent_weight_decay=True, eps=1e-8, beta2=0.95, z_loss=0.0,
                    warmup=0, seed=0)
    with pytest.raises(ConfigError, match="optim.optimizer: muon needs hidden 2-D weights"):
        BatchedAdamW(fp, specs, [member], OptimConfig(optimizer="muon"), 10)


# -- Adam-atan2 -------------------------------------------------------------------------------------------------

def _direction_after_steps(optimizer: str, scale: float, eps: float = 1e-8) -> torch.Tensor:
    torch.manual_seed(0)
    fp = FlatParams({"w": torch.randn(1, 64)})
    member = Member(lr=1e-2, weight_decay=0.0, independent_weight_decay=True, eps=eps, beta2=0.95, z_loss=0.0,
                    warmup=0, seed=0)
    opt = BatchedAdamW(fp, {"w": ParamSpec((64,), "trunc", 1.0)}, [member],
                       OptimConfig(optimizer=optimizer, clip=1e30), 10)  # no clipping: the scale must reach it
    grads = torch.randn(5, 1, 64) * scale
    for g in grads:
        opt.step(g.clone(), torch.ones(1, dtype=torch.bool), want_stats=False)
    return fp.flat.clone()


def test_adam_atan2_is_invariant_to_the_scale_of_the_loss_and_adamw_is_not():
    """Multiplying the loss (so the gradients) by 1e-6 leaves Adam-atan2's updates unchanged (float tolerance); AdamW
    with ε = 1e-8 changes, because √v̂ ~ 1e-6 is then within two decades of ε."""
    atan = _direction_after_steps("adam_atan2", 1.0), _direction_after_steps("adam_atan2", 1e-6)
    adam = _direction_after_steps("adamw", 1.0), _direction_after_steps("adamw", 1e-6)
    assert torch.allclose(atan[0], atan[1], rtol=1e-5, atol=1e-6)
    assert (adam[0] - adam[1]).abs().max() > 1e-3


# -- ZClip ------------------------------------------------------------------------------------------------------

class ReferenceZClip:
    """bluorion-com/ZClip ``zclip.py`` (mode zscore, adaptive_scaling), on one scalar norm a step: the oracle."""

    def __init__(self, alpha=0.97, z_thresh=2.5, max_grad_norm=1.0, eps=1e-6, warmup_steps=25):
        self.alpha, self.z, self.max, self.eps, self.warmup = alpha, z_thresh, max_grad_norm, eps, warmup_steps
        self.buffer, self.mean, self.var = [], None, None

    def step(self, norm):
        if self.mean is None:
            self.buffer.append(norm)
            if len(self.buffer) >= self.warmup:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
            return min(1.0, self.max / (norm + 1e-6)), False
        std = self.var ** 0.5
        z = (norm - self.mean) / (std + self.eps)
        clip = self.mean + (self.z * std) / (z / self.z) if z > self.z else None
        effective = min(clip if clip is not None else norm, self.max)
        x = clip if clip is not None else norm
        self.mean = self.alpha * self.mean + (1 - self.alpha) * x
        self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2
        return (effective / (norm + 1e-6) if norm > effective else 1.0), clip is not None


def test_zclip_follows_the_reference_per_member():
    """Two members with ZClip (z 2.5 and 1.0) and one without, over norms with spikes: each member's clip
    coefficient and spike flag equal the reference's on its own norms; the member without keeps the fixed clip."""
    torch.manual_seed(1)
    K, steps, warmup = 3, 60, 5
    members = [Member(lr=1e-2, weight_decay=0.0, independent_weight_decay=True, eps=1e-8, beta2=0.95, z_loss=0.0,
                      warmup=0, seed=0, zclip=z) for z in (2.5, 1.0, None)]
    fp = FlatParams({"w": torch.zeros(K, 4)})
    opt = BatchedAdamW(fp, {"w": ParamSpec((4,), "trunc", 1.0)}, members,
                       OptimConfig(clip=1.0, zclip_warmup=warmup, zclip_alpha=0.9), steps)
    refs = [ReferenceZClip(alpha=0.9, z_thresh=z, warmup_steps=warmup) for z in (2.5, 1.0)]
    norms = 0.3 + 0.05 * torch.rand(steps, K)
    norms[[20, 35, 50]] *= torch.tensor([3.0, 10.0, 2.0]).view(3, 1)  # spikes
    spikes = 0
    for s in range(steps):
        coef, spike = opt._zclip(norms[s].double().float(), torch.ones(K, dtype=torch.bool))
        for k, ref in enumerate(refs):
            want, want_spike = ref.step(float(norms[s, k]))
            assert float(coef[k]) == pytest.approx(want, rel=1e-5), (s, k)
            assert bool(spike[k]) == want_spike, (s, k)
            spikes += want_spike
        assert float(coef[2]) == pytest.approx(min(1.0, 1.0 / (float(norms[s, 2]) + 1e-6)), rel=1e-6)
        assert not bool(spike[2])
    assert spikes >= 3
    assert opt.zclip["clips"].tolist()[2] == 0.0


# -- CompleteP --------------------------------------------------------------------------------------------------

def test_completep_at_the_base_depth_is_the_standard_model_bit_for_bit(tmp_path):
    """At L = L_base every CompleteP factor is 1: the run equals the switch off, bit for bit."""
    _, sp = run(tmp_path, tiny(members={"lr": [1e-2]}), "sp")
    _, cp = run(tmp_path, tiny(model={"depth_alpha": 1.0, "base_depth": 2}, members={"lr": [1e-2]}), "cp")
    for col in sp.columns:
        if col != "tokens_per_s":
            assert sp[col].to_list() == cp[col].to_list(), col


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_completep_scales_the_residual_lr_and_eps_as_the_reference(alpha):
    from proxyscale.engine.model import depth_eps_mult, param_specs, residual_scale

    m = config.ModelConfig(width=32, depth=8, heads=2, depth_alpha=alpha, base_depth=2)
    assert residual_scale(m) == pytest.approx(4 ** -alpha)
    assert depth_eps_mult(m) == pytest.approx(4 ** -alpha)
    specs = param_specs(m, 256)
    assert specs["layers.3.w1"].lr_mult == pytest.approx(4 ** (alpha - 1))
    assert specs["layers.3.ln1"].lr_mult == pytest.approx(4 ** (alpha - 1))
    assert specs["embed"].lr_mult == 1.0 and specs["ln_f"].lr_mult == 1.0 and specs["unembed"].lr_mult == 1.0
    mup = config.ModelConfig(width=64, depth=8, heads=2, depth_alpha=alpha, base_depth=2, mup="simple",
                             mup_base_width=32)
    assert depth_eps_mult(mup) == pytest.approx(0.5 * 4 ** -alpha)
    assert param_specs(mup, 256)["layers.0.w1"].lr_mult == pytest.approx(32 / 64 * 4 ** (alpha - 1))


# -- norm placement ---------------------------------------------------------------------------------------------

def test_reordered_and_qkv_norms_follow_their_formulas():
    """One block by hand: OLMo 2's x + Norm(Attn(x)), h + Norm(MLP(h)); QKV-layernorm normalises v as q and k."""
    import torch.nn.functional as F

    from proxyscale.engine.model import init_params

    for placement, qkv in (("reordered", False), ("pre", True)):
        m = config.ModelConfig(width=16, depth=1, heads=2, qkv_layernorm=qkv, norm_placement=placement)
        params = init_params(m, 256, [0])
        params = {n: p + 0.1 * torch.randn_like(p) for n, p in params.items()}  # scales off 1
        model = ProxyGPT(m, 256, 8, torch.device("cpu"))
        x = torch.randn(1, 2, 8, 16)
        got, _ = model.block(params, 0, x, model.cos[:8], model.sin[:8], record=False)

        def ln(z, s):
            return F.layer_norm(z, (z.shape[-1],), eps=1e-6) * s

        p = {n.split(".")[-1]: t[0] for n, t in params.items() if n.startswith("layers.0.")}
        h = x if placement == "reordered" else ln(x, p["ln1"])
        q, k, v = ((h @ p[w]).view(1, 2, 8, 2, 8) for w in ("wq", "wk", "wv"))
        q, k = ln(q, p["q_norm"]), ln(k, p["k_norm"])
        if qkv:
            v = ln(v, p["v_norm"])
        from proxyscale.engine.model import _rope
        q, k = _rope(q, model.cos[:8], model.sin[:8]), _rope(k, model.cos[:8], model.sin[:8])
        a = F.scaled_dot_product_attention(*(z.permute(0, 1, 3, 2, 4).reshape(2, 2, 8, 8) for z in (q, k, v)),
                                           is_causal=True).view(1, 2, 2, 8, 8).permute(0, 1, 3, 2, 4).reshape(1, 2, 8, 16)
        a = a @ p["wo"]
        x1 = x + (ln(a, p["ln1"]) if placement == "reordered" else a)
        h = x1 if placement == "reordered" else ln(x1, p["ln2"])
        mlp = F.gelu(h @ p["w1"]) @ p["w2"]
        want = x1 + (ln(mlp, p["ln2"]) if placement == "reordered" else mlp)
        assert torch.allclose(got, want, atol=1e-5), placement



# -- what the results table, the forecast and the experiments read ---------------------------------------------

def test_the_results_table_reads_what_each_switch_did():
    """From a member's per-step log: the max logit over layers and steps (before and after a cap), QK-clip's clip
    fraction and δ after it first fired, and ZClip's fraction of steps clipped."""
    import polars as pl

    from proxyscale.core.table import mitigation_columns

    metrics = pl.DataFrame({"step": [0, 1, 2, 3, 4, 5], "loss": [3.0, 2.9, 2.8, 2.7, 2.6, None],
                            "attn_logit_max/0": [150.0, 110.0, 105.0, 90.0, 80.0, None],
                            "attn_logit_max/1": [20.0, 30.0, 104.0, 20.0, 20.0, None],
                            "attn_logit_max_capped/0": [45.0, 44.0, 43.0, 42.0, 41.0, None],
                            "qk_clip_heads": [2.0, 0.0, 1.0, 0.0, 0.0, None],
                            "zclip_clips": [0.0, 0.0, 1.0, 1.0, 2.0, None]})
    got = mitigation_columns(metrics, {"qk_clip": 100.0}, steps=5)
    assert got["attn_logit_max/all:max"] == 150.0 and got["attn_logit_max_capped/all:max"] == 45.0
    assert got["qk_clip_fraction"] == pytest.approx(2 / 5)
    assert got["qk_clip_delta"] == pytest.approx(0.10)  # 110 after the first clip at step 0
    assert got["zclip_fraction"] == pytest.approx(2 / 5)
    assert mitigation_columns(metrics.drop("qk_clip_heads", "zclip_clips", "attn_logit_max_capped/0"), {}, 5) == {
        "attn_logit_max/all:max": 150.0}


def test_the_forecast_ladder_trains_with_the_targets_mitigations_and_its_verdicts_name_them():
    import polars as pl

    from proxyscale.jobs import forecast

    target = config.from_dict(tiny(optim={"optimizer": "muon", "qk_clip": 100.0, "lr": 1e-2},
                                   model={"attn_softcap": 50.0}))
    base = forecast.ladder_spec(target, "micro")["base"]
    assert base["optim"]["optimizer"] == "muon" and base["optim"]["qk_clip"] == 100.0
    assert base["model"]["attn_softcap"] == 50.0
    rows = pl.DataFrame({"member.lr": [1e-2, 1e-2], "qk_clip_fraction": [0.2, 0.4], "qk_clip_delta": [0.05, 0.1],
                         "attn_logit_max/all:max": [300.0, 900.0], "attn_logit_max_capped/all:max": [49.0, 49.9]})
    notes = forecast.mitigation_evidence(rows, 1e-2, forecast.mitigations_of(target))
    assert any("QK-clip (τ = 100) clipped on up to 40%" in n and "keep QK-clip" in n for n in notes)
    assert any("soft-cap 50 bounds the post-cap logit (ladder max 49.9)" in n for n in notes)
    eps = forecast._eps_verdict({"ok": True, "value": 1e-9, "low": 1e-10, "high": 1e-8}, 1e-8, "adam_atan2")
    assert eps["verdict"] == "unlikely" and "no ε" in eps["detail"]
    assert forecast._eps_verdict({"ok": True, "value": 1e-9, "low": 1e-10, "high": 1e-8}, 1e-8)["verdict"] == "likely"


def test_the_beyond_experiments_are_listed_after_the_papers_and_share_its_groups():
    """``reproduce beyond`` runs the eight families; ``all`` stays the paper's. A family's baseline groups are other
    experiments' groups (the same run ids), so they train once: norms' baseline is fig1's qk-layernorm group,
    atan2's AdamW group is fig12's, muon's AdamW groups are qkclip's."""
    from proxyscale import experiments
    from proxyscale.jobs import reproduce
    from proxyscale.runs import sweep

    assert experiments.names()[-len(experiments.BEYOND):] == list(experiments.BEYOND)
    assert len(experiments.BEYOND) == 9  # the seven families of issue 16, OEC and its drift law (issue 23)
    assert not set(experiments.BEYOND) & set(experiments.SETS["all"]())
    ids = {name: {g.id for g in sweep.expand(reproduce.sweep_spec(reproduce.load(name), "micro"))}
           for name in ("fig1", "norms", "atan2", "fig12", "qkclip", "muon")}
    assert ids["fig1"] & ids["norms"] and ids["atan2"] & ids["fig12"]
    assert ids["qkclip"] <= ids["muon"]  # muon's AdamW groups are qkclip's


def _resumed_equals_uninterrupted(tmp_path, raw, at: int):
    """Train ``raw`` whole, and again interrupted after step ``at`` then resumed from its last checkpoint; returns
    the whole run's metrics after asserting both runs logged the same numbers."""
    import polars as pl

    from proxyscale.engine.callbacks import StepEnd
    from proxyscale.engine.train import train_group

    cfg = config.from_dict(raw)
    train_group(cfg, tmp_path / "full")

    def interrupt(step):
        if step == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_group(cfg, tmp_path / "resumed", callbacks=[StepEnd(interrupt)])
    _, trained = train_group(cfg, tmp_path / "resumed")
    assert trained
    a, b = (pl.read_parquet(tmp_path / d / "metrics.parquet").drop("tokens_per_s") for d in ("full", "resumed"))
    assert a.equals(b)
    return a


def test_a_group_with_every_stateful_switch_resumes_bit_for_bit(tmp_path):
    """Muon's momentum, ZClip's EMAs and warm-up buffer and QK-clip's edits live in the checkpoint: interrupted at
    step 24 and resumed from the step-20 checkpoint, the group ends where the uninterrupted one does."""
    raw = tiny(model={"qk_layernorm": False}, optim={"optimizer": "muon", "zclip_warmup": 5},
               train={"steps": 30, "checkpoint_every": 10},
               members={"lr": [0.3, 1.0], "zclip": [1.0], "qk_clip": [3.0]})
    a = _resumed_equals_uninterrupted(tmp_path, raw, 24)
    assert a["zclip_clips"].max() > 0 and a["qk_clip_heads"].max() > 0, "the switches never acted: nothing tested"


def test_train_prints_a_switch_that_is_off_as_off(tmp_path, capsys):
    """A member scalar at null (the switch off) beside one that is on: the summary table says "off", not a crash."""
    import yaml

    from proxyscale.cli import main

    raw = tiny(model={"qk_layernorm": False}, train={"steps": 4, "eval_every": 2},
               members={"lr": [1e-2], "attn_softcap": [None, 5.0], "qk_clip": [None, 3.0]})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(raw))
    assert main(["train", str(tmp_path / "g.yaml"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "attn_softcap" in out and "off" in out


# -- Output Embedding Centering (issue 23) ------------------------------------------------------------------------

def test_mu_norm_is_the_norm_of_the_mean_output_row_by_hand(tmp_path):
    """‖μ‖ per member from the master weights equals the hand computation: the mean over the vocabulary of the
    output layer (``unembed`` [K, D, V]), or of the tied embedding ([K, V, D])."""
    from proxyscale.engine.optim import mu_norm

    for tied in (False, True):
        run_ = GroupRun(config.from_dict(tiny(model={"tied_embeddings": tied}, members={"lr": [1e-2, 1e-1]})),
                        tmp_path / str(tied))
        w = run_.fp.params["embed"].detach() if tied else run_.fp.params["unembed"].detach()
        by_hand = [w[k].mean(dim=0 if tied else 1).norm().item() for k in range(2)]
        assert mu_norm(run_.fp).tolist() == pytest.approx(by_hand, rel=1e-6), tied


def test_mu_centering_pins_mu_and_the_mean_logit_at_zero_and_leaves_other_members_alone(tmp_path):
    """After every step a centred member's μ is 0 to float tolerance, so its mean output logit (μ·h̄) is 0 too;
    the member without centering drifts, and is bit-identical to the same member in a group without centering."""
    from proxyscale.engine.optim import mu_norm

    raw = tiny(optim={"weight_decay": 0.0, "z_loss": 0.0}, members={"lr": [0.1], "mu_centering": [False, True]})
    run_ = GroupRun(config.from_dict(raw), tmp_path / "g")
    run_.run()
    frame = run_.log.frame()
    w = run_.fp.params["unembed"].detach()
    scale = w[1].abs().max().item()
    assert mu_norm(run_.fp)[1].item() < 1e-6 * scale * w.shape[-1] ** 0.5
    on, off = member_frame(frame, 1), member_frame(frame, 0)
    assert on["mu_norm"].drop_nulls().max() < 1e-5 and off["mu_norm"].drop_nulls()[-1] > 1e-3
    # μ·h̄ with μ = 0, from the first step on (the step-0 forward runs on the initial weights, before any centering)
    assert on["output_logit_mean"].drop_nulls()[1:].abs().max() < 1e-6
    assert on["output_logit_mean"].drop_nulls()[0] == pytest.approx(off["output_logit_mean"].drop_nulls()[0])
    alone = GroupRun(config.from_dict(tiny(optim={"weight_decay": 0.0, "z_loss": 0.0}, members={"lr": [0.1]})),
                     tmp_path / "alone")
    alone.run()
    assert member_frame(alone.log.frame(), 0)["loss"].to_list() == off["loss"].to_list()


def test_mu_loss_adds_lambda_mu_squared_to_the_objective():
    """The objective of one batch with μ-loss λ is the one without plus λ·‖μ‖² per member (OEC's model.py)."""
    import tempfile

    raw = tiny(optim={"z_loss": 0.0}, members={"lr": [1e-2], "mu_loss": [0.0, 0.5]})
    with tempfile.TemporaryDirectory() as d:
        run_ = GroupRun(config.from_dict(raw), Path(d) / "g")
        x, y = run_.batches.train(0)
        weights = run_.weights.refresh(None)
        with_mu = run_._loss(weights, x, y, run_.z_coef, False, None, run_.mu_coef)[0]
        without = run_._loss(weights, x, y, run_.z_coef, False, None, None)[0]
        mu_sq = weights["unembed"].float().mean(-1).square().sum(-1)
        # a difference of two float32 objectives of about 2 x 6 nats: their spacing is ~1e-6
        assert (with_mu - without).item() == pytest.approx(0.5 * mu_sq[1].item(), abs=4e-6)
        assert 0.5 * mu_sq[1].item() > 1e-3  # large against that tolerance: the term is there


def test_a_group_with_oec_resumes_bit_for_bit(tmp_path):
    raw = tiny(optim={"weight_decay": 0.0, "z_loss": 0.0}, train={"steps": 30, "checkpoint_every": 10},
               members={"lr": [0.1], "mu_centering": [False, True], "mu_loss": [0.0, 1e-2]})
    _resumed_equals_uninterrupted(tmp_path, raw, 24)
