"""The monitor on tiny models built from configs (no downloads): transformers GPT-2 and Llama, and a plain
nanoGPT-style nn.Module. Its logits are checked against the models' own attention scores; at a high LR without
qk-layernorm it must see the logit growth and raise the alarm."""

import json

import polars as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxyscale import monitor
from tiny_models import NanoGPT  # tests/ is on sys.path (conftest.py)

transformers = pytest.importorskip("transformers", reason="LOUD SKIP: transformers not installed "
                                   "(pip install 'proxyscale[transformers]')")


def gpt2():
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    return transformers.GPT2LMHeadModel(cfg)


def llama():
    cfg = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
                                   intermediate_size=64, vocab_size=64, max_position_embeddings=64,
                                   attn_implementation="eager")
    return transformers.LlamaForCausalLM(cfg)


def logits_of(model, x):
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def reference_scores(monkeypatch, module_name):
    """Wrap the model's own eager attention: record the max causal pre-softmax score of each call."""
    mod = __import__(f"transformers.models.{module_name}.modeling_{module_name}", fromlist=["x"])
    real, seen = mod.eager_attention_forward, []

    def spy(module, query, key, value, attention_mask, **kwargs):
        k = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1) if key.shape[1] != query.shape[1] else key
        scaling = kwargs.get("scaling") or (query.shape[-1] ** -0.5 if getattr(module, "scale_attn_weights", True)
                                            else 1.0)
        t = query.shape[-2]
        s = (query.float() @ k.float().transpose(-1, -2)) * scaling
        seen.append(s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")).amax().item())
        return real(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setattr(mod, "eager_attention_forward", spy)
    return seen


def train(model, out, lr=0.1, steps=40, **kw):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    mon = monitor.attach(model, opt, every=5, out=out, **kw)
    base = torch.randint(0, 64, (65,), generator=torch.Generator().manual_seed(1))
    x = torch.stack([torch.roll(base, i) for i in range(8)])
    for _ in range(steps):
        logits = logits_of(model, x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        if mon.step(loss, logits):
            opt.step()
        opt.zero_grad()
    mon.close()
    return mon, pl.read_parquet(out / "metrics.parquet")


@pytest.mark.parametrize("build, module_name, kind", [(gpt2, "gpt2", "transformers GPT-2"),
                                                      (llama, "llama", "transformers Llama-family"),
                                                      (NanoGPT, None, "nanoGPT CausalSelfAttention")])
def test_monitor_sees_logit_growth_and_alarms(tmp_path, monkeypatch, capsys, build, module_name, kind):
    torch.manual_seed(0)
    model = build()
    seen = reference_scores(monkeypatch, module_name) if module_name else None
    mon, m = train(model, tmp_path, logit_threshold=100.0)
    assert mon.kind == kind and len(mon.probes) == 2
    rec = m.filter(pl.col("attn_logit_max/0").is_not_null()).sort("step")
    assert rec["step"].to_list() == list(range(0, 40, 5))
    # the monitor's logit is the model's own: the last forward of a recorded step, layer 0 (and 1)
    if seen is not None:
        assert rec["attn_logit_max/0"][-1] == pytest.approx(seen[-2 * 5], rel=1e-4)  # 5 steps x 2 layers back
        assert rec["attn_logit_max/1"][-1] == pytest.approx(seen[-2 * 5 + 1], rel=1e-4)
    first, last = rec["attn_logit_max/0"][0], rec["attn_logit_max/0"].max()
    assert last > 50 * first, (first, last)  # LR 0.1 without qk-layernorm: the logits explode
    causes = {a.cause for a in mon.alarms}
    assert "attention-logit growth" in causes and "qk-layernorm" in capsys.readouterr().err
    for col in ("loss", "q_norm/0", "k_norm/0", "output_logit_mean", "log_z_mean", "grad_norm", "block_rms/0",
                "block_rms/1"):
        assert col in m.columns, col
    assert any(c.startswith("grad_rms/") for c in m.columns) and any(c.startswith("update_rms/") for c in m.columns)
    assert m["member"].unique().to_list() == [0]
    assert json.loads((tmp_path / "monitor.json").read_text())["attention"] == kind


def test_nanogpt_logit_equals_the_models_own(tmp_path):
    torch.manual_seed(0)
    model = NanoGPT()
    x = torch.randint(0, 64, (4, 33))
    mon = monitor.attach(model, None, every=1, out=tmp_path)
    logits = model(x[:, :-1])
    mon.step(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()), logits)
    mon.close()
    m = pl.read_parquet(tmp_path / "metrics.parquet")
    for i, block in enumerate(model.h):
        assert m[f"attn_logit_max/{i}"][0] == pytest.approx(block.attn.max_logit, rel=1e-5)
    assert m["log_z_mean"][0] == pytest.approx(torch.logsumexp(logits.detach(), -1).mean().item(), rel=1e-6)
    # ‖μ‖, the mean row of the output layer; and the mean logit is μ·h̄ (no bias), h̄ the mean final hidden state
    mu = model.lm_head.weight.detach().mean(dim=0)
    assert m["mu_norm"][0] == pytest.approx(mu.norm().item(), rel=1e-6)
    with torch.no_grad():
        h = model.ln_f(_final_hidden(model, x[:, :-1]))
    assert m["output_logit_mean"][0] == pytest.approx(torch.dot(mu, h.mean(dim=(0, 1))).item(), rel=1e-4, abs=1e-7)


def _final_hidden(model, x):
    """NanoGPT's residual stream before ``ln_f`` (its forward, without the output layer)."""
    pos = torch.arange(x.shape[1])
    h = model.wte(x) + model.wpe(pos)
    for block in model.h:
        h = block(h)
    return h


def test_actions_stop_and_skip(tmp_path):
    with pytest.raises(monitor.TrainingStopped, match="attention logits growing"):
        train(NanoGPT(), tmp_path / "stop", logit_threshold=1.0, on_alarm="stop")
    assert (tmp_path / "stop" / "metrics.parquet").exists()  # closed on the way out
    mon, _ = train(NanoGPT(), tmp_path / "skip", logit_threshold=1.0, on_alarm="skip", steps=10)
    assert mon.alarms


def test_eps_forecast_named_and_bound(tmp_path):
    model = NanoGPT()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1.0)  # ε far above any gradient RMS
    from proxyscale.core.records import ForecastRecord

    ForecastRecord(n_target=1e9, lr=1e-3, trends={"attn_logit_max/0": {"ok": True, "high": 1e-3}},
                   verdicts=[]).write(tmp_path / "forecast.json")
    attn = model.h[0].attn
    mon = monitor.attach(model, opt, every=1, out=tmp_path / "m", forecast=tmp_path,
                         qk_weights={"0": (attn.c_attn.weight[:32], attn.c_attn.weight[32:64])})
    x = torch.randint(0, 64, (2, 17))
    logits = model(x[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
    loss.backward()
    mon.step(loss, logits)
    opt.step()
    mon.close()
    causes = {a.cause for a in mon.alarms}
    assert {"update collapse from ε", "left the forecast"} <= causes
    m = pl.read_parquet(tmp_path / "m" / "metrics.parquet")
    assert m["attn_logit_bound/0"][0] > 0 and "update_rms/lm_head.weight" in m.columns

    plain = nn.Sequential(nn.Linear(8, 8))
    q, k = nn.Linear(8, 8), nn.Linear(8, 8)
    named = monitor.attach(plain, None, every=1, out=tmp_path / "n", qk={"layer0": (q, k)}, heads=2)
    h = torch.randn(1, 5, 8)
    q(h), k(h)
    named.step(torch.tensor(1.0))
    named.close()
    assert named.kind == "named q/k projections"
    assert pl.read_parquet(tmp_path / "n" / "metrics.parquet")["attn_logit_max/0"][0] is not None


def test_report_reads_a_monitor_directory(tmp_path):
    from proxyscale.cli import main

    train(NanoGPT(), tmp_path, logit_threshold=100.0, steps=15)
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    assert "Monitor: NanoGPT" in page and "alarm at step" in page and "data:image/png;base64," in page


def test_update_rms_is_the_adam_direction_weight_decay_apart_and_collapses_under_eps(tmp_path):
    """Paper §3.4: the update RMS is that of m̂/(√v̂ + ε). On Adam's first step m̂ = g and v̂ = g², so it is ≈ 1
    whatever the LR and the weight decay (RMS(Δθ)/LR would read 1 + λ·|θ|); with ε far above the gradient RMS it
    collapses to ≈ RMS(g)/ε, as in Fig 11."""
    def first_step(eps, weight_decay, opt_cls=torch.optim.AdamW, out="m"):
        torch.manual_seed(0)
        model = NanoGPT()
        with torch.no_grad():
            model.lm_head.weight.mul_(100.0)  # large weights: the decay term λ·θ would dominate Δθ/LR
        opt = opt_cls(model.parameters(), lr=1e-3, eps=eps, weight_decay=weight_decay)
        mon = monitor.attach(model, opt, every=1, out=tmp_path / out)
        x = torch.randint(0, 64, (2, 17), generator=torch.Generator().manual_seed(0))
        logits = model(x[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
        loss.backward()
        grad = model.lm_head.weight.grad.clone()
        mon.step(loss, logits)
        opt.step()
        mon.close()
        m = pl.read_parquet(tmp_path / out / "metrics.parquet").filter(pl.col("step") == 0)
        return m["update_rms/lm_head.weight"].drop_nulls()[0], grad, json.loads((tmp_path / out / "monitor.json")
                                                                                   .read_text())["update_rms"]

    rms, grad, source = first_step(1e-12, 0.5)
    expected = (grad / (grad.abs() + 1e-12)).pow(2).mean().sqrt().item()  # |sign(g)| where g ≠ 0
    assert rms == pytest.approx(expected, rel=1e-5) and 0.5 < rms <= 1.0 and source.startswith("Adam direction")
    collapsed, grad, _ = first_step(1e3, 0.5, out="eps")
    assert collapsed == pytest.approx((grad / (grad.abs() + 1e3)).pow(2).mean().sqrt().item(), rel=1e-5)
    assert collapsed < 1e-2 * rms  # ε ≫ RMS(g): the update collapses
    sgd_rms, grad, source = first_step(1e-12, 0.0, opt_cls=lambda ps, lr, eps, weight_decay: torch.optim.SGD(ps, lr=lr),
                                       out="sgd")
    assert sgd_rms == pytest.approx(grad.pow(2).mean().sqrt().item(), rel=1e-3) and source.startswith("RMS(Δθ)/LR")


def test_an_alarm_speaks_once_per_cause_and_again_only_when_worse(tmp_path, capsys):
    """A GPT-2 at LR 0.3 without qk-layernorm: the logit alarm holds on most recorded steps, but is printed once,
    then again only when its severity has doubled."""
    torch.manual_seed(0)
    model = gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=0.3, weight_decay=0.0)
    mon = monitor.attach(model, opt, every=1, out=tmp_path, logit_threshold=100.0)
    base = torch.randint(0, 64, (65,), generator=torch.Generator().manual_seed(1))
    x = torch.stack([torch.roll(base, i) for i in range(8)])
    for _ in range(30):
        logits = logits_of(model, x[:, :-1])
        F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
        mon.step(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).detach(), logits)
        opt.step()
        opt.zero_grad()
    mon.close()
    err = capsys.readouterr().err
    cause = "attention-logit growth"
    spoken = [a for a in mon.alarms if a.cause == cause]
    assert mon.firings[cause] >= 10 and 1 <= len(spoken) < mon.firings[cause] / 2, (mon.firings, len(spoken))
    assert err.count("attention logits growing") == len(spoken)
    for before, after in zip(spoken, spoken[1:]):
        assert after.severity >= monitor.WORSENS * before.severity
    rec = json.loads((tmp_path / "monitor.json").read_text())
    assert rec["alarms"] == len(mon.alarms) and rec["firings"][cause] == mon.firings[cause]
