"""Watch any PyTorch training loop for the paper's instabilities, live.

    mon = monitor.attach(model, optimizer, every=10, out="runs/monitor")
    for batch in data:
        logits = model(x)                      # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        if not mon.step(loss, logits):         # False only with on_alarm="skip" and an alarm this step
            optimizer.zero_grad(); continue
        optimizer.step(); optimizer.zero_grad()
    mon.close()                                # DIR/metrics.parquet, DIR/alarms.json, DIR/monitor.json

Every ``every`` steps it records, in the schema of proxyscale's own ``metrics.parquet`` (member 0): the max
pre-softmax attention logit and mean q/k norms per layer (paper §3.1.1), the output-logit mean, log Z (§3.1.2), ‖μ‖
and the integrated LR ``lr_integral`` (the drift law's clock: Σ of the optimizer's LR over every step seen),
the gradient norm, per-tensor gradient / update / parameter RMS (§3.4), and the RMS of each block's output
(Appendix C.1). The update RMS is that of the Adam direction m̂/(√v̂ + ε), read from the optimizer's state after the
step, the quantity proxyscale's own runs record and the one that collapses when the gradient RMS nears ε (Fig 11);
for an optimizer without Adam moments it is RMS(Δθ)/LR, weight decay included (``monitor.json`` says which).

The attention is found without help in Hugging Face ``transformers`` GPT-2 (``GPT2Attention``) and Llama-family
models (``*Attention`` with ``q_proj``/``k_proj``, rotary embeddings and grouped keys applied as the model does),
and in nanoGPT-style ``CausalSelfAttention`` (a fused ``c_attn``); for other models name the q/k projections
(``qk={"layer0": (q_module, k_module)}``) or give their weights (``qk_weights``), from which only the bound
‖W_q‖₂·‖W_k‖₂·‖x‖² / √d_head is known: it is recorded as ``attn_logit_bound/<layer>``, never as a logit.

Alarms, each with its cause and what the paper suggests: attention logits growing toward ``logit_threshold``
(§3.1.1: qk-layernorm, or a lower LR), log Z drifting by ``log_z_drift`` nats (§3.1.2: z-loss 1e-4), the mean output
logit at or projected to reach the |logit| where the logits' precision costs the loss, with the projected step
(``drift``; μ-centering, z-loss or fp32 logits), the gradient
RMS within 10× of AdamW's ε (§3.4: a smaller ε), a loss spike (a lower LR, a longer warm-up), and, given a
forecast (``proxyscale forecast``), the logit leaving the forecast's 80% band. ``on_alarm``: ``warn``, ``stop``
(raise ``TrainingStopped``) or ``skip`` (``step`` returns False so the caller skips the update). The rules live in
``Alarms``, which speaks once per cause and again only when the cause has worsened ``WORSENS``-fold; ``RunAlarms``
runs them on a proxyscale group as a training callback, and ``trainer_callback`` / ``lightning_callback``
(``proxyscale.monitor.integrations``) attach the monitor inside Hugging Face ``Trainer`` and Lightning.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..science import drift
from ..core import store
from ..engine.callbacks import Callback
from ..core.instability import EPS_FACTOR, LOGIT_WATCH_FRACTION, PAPER_LOGIT_THRESHOLD, collapses
from ..engine.diagnostics import MetricsLog, max_attention_logit


class TrainingStopped(RuntimeError):
    """Raised by ``Monitor.step`` with ``on_alarm="stop"``; carries the alarm."""

    def __init__(self, alarm: Alarm) -> None:
        super().__init__(alarm.message)
        self.alarm = alarm


@dataclass
class Alarm:
    step: int
    cause: str
    message: str
    value: float
    severity: float = 1.0  # larger is worse (the logit; |drift|; 10·ε / gradient RMS; loss / median): when to speak


WORSENS = 2.0
"""An alarm speaks the first time its cause fires and again only once its severity has grown by this factor since
it last spoke (a GPT-2 at LR 0.3 would otherwise print the same alarm on every recorded step)."""


@dataclass
class _Probe:
    """One attention layer: how to get its q, k (after RoPE) as [B, H, T, Dh], and the logit scale."""

    index: int
    kind: str
    scale: float
    q: torch.Tensor | None = None
    k: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Alarms:
    """The alarm rules (module docstring) and what they remember (the last logit, the first log Z, recent losses,
    what has been spoken): ``check`` says which hold at a step, ``speak`` prints those that are new or have worsened
    by ``WORSENS`` and keeps them in ``alarms``. The monitor of a user's loop holds one; ``RunAlarms`` holds one per
    member of a proxyscale group."""

    def __init__(self, logit_threshold: float = PAPER_LOGIT_THRESHOLD, log_z_drift: float = 10.0,
                 spike_factor: float = 2.0, forecast_high: float | None = None, who: str = "",
                 total_steps: int | None = None, precision: str = "fp32") -> None:
        self.logit_threshold, self.log_z_drift, self.spike_factor = logit_threshold, log_z_drift, spike_factor
        self.forecast_high, self.who = forecast_high, who
        self.total_steps, self.precision = total_steps, precision  # the drift rule's horizon and logit precision
        self.drift_points: list[tuple[int, float, float]] = []  # (step, integrated LR, |mean output logit|)
        self.alarms: list[Alarm] = []  # the alarms spoken, in order
        self.spoken: dict[str, float] = {}  # cause -> severity when it last spoke
        self.firings: dict[str, int] = {}  # cause -> recorded steps on which it held (spoken or not)
        self.losses: list[float] = []  # recent training losses (the spike rule's median)
        self.first_log_z: float | None = None
        self.last_logit: float | None = None

    def speak(self, fired: list[Alarm]) -> list[Alarm]:
        """Print (stderr) and keep the alarms of ``fired`` that are new for their cause or ``WORSENS`` times worse
        than when it last spoke; returns them."""
        new = []
        for alarm in fired:
            self.firings[alarm.cause] = self.firings.get(alarm.cause, 0) + 1
            last = self.spoken.get(alarm.cause)
            if last is not None and not alarm.severity >= WORSENS * last:
                continue  # spoken already, and no worse: the record has it
            self.spoken[alarm.cause] = alarm.severity
            self.alarms.append(alarm)
            new.append(alarm)
            again = " (worse)" if last is not None else ""
            print(f"proxyscale monitor: {self.who}step {alarm.step}{again}: {alarm.message}", file=sys.stderr,
                  flush=True)
        return new

    def check(self, s: int, cols: dict[str, Any], eps: float | None = None, n: int = 0) -> list[Alarm]:
        """The alarms that hold at step ``s`` for the recorded ``cols`` (host numbers or 0-d tensors: the monitor's
        column names); ``eps`` AdamW's ε and ``n`` the parameters with a gradient, for the ε rule."""
        host = {k: float(v) for k, v in cols.items() if k.startswith(("attn_logit_max/", "log_z_mean", "grad_norm",
                                                                        "loss", "output_logit_mean", "lr_integral"))}
        out: list[Alarm] = []
        logits = [v for k, v in host.items() if k.startswith("attn_logit_max/")]
        if logits:
            top = max(logits)
            rising = self.last_logit is not None and top > self.last_logit
            if top >= self.logit_threshold or (top >= LOGIT_WATCH_FRACTION * self.logit_threshold and rising):
                out.append(Alarm(s, "attention-logit growth", f"attention logits growing toward the divergence "
                                 f"threshold: max {top:.3g} (threshold {self.logit_threshold:.3g}; paper §3.1.1); "
                                 "use qk-layernorm, or lower the LR", top, top))
            if self.forecast_high is not None and host.get("attn_logit_max/0", 0.0) > self.forecast_high:
                out.append(Alarm(s, "left the forecast", f"layer-0 attention logit {host['attn_logit_max/0']:.3g} is "
                                 f"above the forecast's 80% band (≤ {self.forecast_high:.3g}); the run is less stable "
                                 "than its proxies predicted", host["attn_logit_max/0"],
                                 host["attn_logit_max/0"] / self.forecast_high))
            self.last_logit = top
        if "log_z_mean" in host:
            if self.first_log_z is None:
                self.first_log_z = host["log_z_mean"]
            drift = host["log_z_mean"] - self.first_log_z
            if abs(drift) >= self.log_z_drift:
                out.append(Alarm(s, "output-logit divergence", f"log Z drifted {drift:+.3g} nats since the first "
                                 f"record (alarm at ±{self.log_z_drift:g}; paper §3.1.2); add z-loss 1e-4 (or weight "
                                 "decay)", drift, abs(drift)))
        out += self._drift(s, host)
        if eps and "grad_norm" in host and n:
            rms = host["grad_norm"] / math.sqrt(n)
            if collapses(rms, eps):
                out.append(Alarm(s, "update collapse from ε", f"gradient RMS {rms:.3g} is within {EPS_FACTOR:g}x of "
                                 f"AdamW's ε = {eps:g} (paper §3.4): updates shrink; lower ε (e.g. 1e-15)", rms,
                                 EPS_FACTOR * eps / max(rms, 1e-300)))
        loss = host.get("loss")
        if loss is not None and math.isfinite(loss):
            recent = sorted(self.losses[-20:])
            if len(recent) >= 5 and loss > self.spike_factor * recent[len(recent) // 2]:
                out.append(Alarm(s, "loss spike", f"loss {loss:.4g} is {loss / recent[len(recent) // 2]:.2g}x the "
                                 "recent median; lower the LR or lengthen the warm-up (and see the logit and log Z "
                                 "alarms for the cause)", loss, loss / recent[len(recent) // 2]))
            self.losses.append(loss)
        elif loss is not None:
            out.append(Alarm(s, "loss spike", "the loss is not finite; lower the LR", loss, 1e300))
        return out


    DRIFT_MIN_POINTS = 5
    """Records of (integrated LR, |mean logit|) before the drift rule fits its law and projects."""

    def _drift(self, s: int, host: dict[str, float]) -> list[Alarm]:
        """The output-logit drift rule (``drift``): the mean output logit at or past the |logit| where this run's
        logit precision costs the loss (``drift.DAMAGE_AT``), or projected to reach it within the run (``total_steps``;
        unknown: within ten times the steps so far) by the law c·I^b fitted through the recorded (integrated LR,
        |mean logit|), the LR continuing at its recent rate. Names the projected step."""
        if "output_logit_mean" not in host or not host.get("lr_integral"):
            return []
        m, integral = abs(host["output_logit_mean"]), host["lr_integral"]
        if not math.isfinite(m):
            return []
        self.drift_points.append((s, integral, m))
        limit = drift.damage_at(self.precision)
        fix = "μ-centering (proxyscale: optim.mu_centering), z-loss 1e-4 or fp32 logits (OEC; paper §3.1.2)"
        if m >= limit:
            return [Alarm(s, "output-logit drift", f"mean output logit {host['output_logit_mean']:+.3g} is past "
                          f"±{limit:g}, where {self.precision} logits cost ≥ {drift.DAMAGE_NATS:g} nats of loss; {fix}",
                          m, m)]
        pts = self.drift_points
        if len(pts) < self.DRIFT_MIN_POINTS:
            return []
        fitted = drift.law([(i, v) for _, i, v in pts[len(pts) // 2:]])  # the recent half: the law as it runs now
        (s0, i0, _), (s1, i1, _) = pts[-2], pts[-1]
        rate = (i1 - i0) / (s1 - s0) if s1 > s0 else 0.0  # LR per step, recently
        if not fitted["ok"] or fitted["exponent"] <= 0 or rate <= 0:
            return []
        # the integrated LR at the limit, in logs: a nearly flat law puts it beyond any float
        log_reach = (math.log(limit) - math.log(fitted["coefficient"])) / fitted["exponent"]
        if log_reach > math.log(1e300):
            return []
        at = s + math.ceil(max(0.0, math.exp(log_reach) - integral) / rate)
        horizon = self.total_steps if self.total_steps else 10 * max(s, 1)
        if at > horizon:
            return []
        return [Alarm(s, "output-logit drift", f"mean output logit {host['output_logit_mean']:+.3g} grows as "
                      f"I^{fitted['exponent']:.2f} with the integrated LR (now {integral:.3g}); at this LR it reaches "
                      f"±{limit:g}, where {self.precision} logits cost ≥ {drift.DAMAGE_NATS:g} nats, near step {at}; "
                      f"{fix}", float(at), m)]


def _output_weight(model: nn.Module) -> torch.Tensor | None:
    """The output layer's weight [V, D] (``get_output_embeddings()``, else a module named ``lm_head``), whose mean
    row is μ; None where the model has neither."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head = head or next((m for n, m in model.named_modules() if n.split(".")[-1] == "lm_head"), None)
    weight = getattr(head, "weight", None)
    return weight if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


class Monitor:
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, every: int, out: Path,
                 qk: dict[str, tuple[nn.Module, nn.Module]] | None, qk_weights: dict[str, tuple[torch.Tensor,
                 torch.Tensor]] | None, heads: int | None, logit_threshold: float, log_z_drift: float,
                 spike_factor: float, on_alarm: str, forecast: str | Path | None,
                 total_steps: int | None = None) -> None:
        validate(every, on_alarm, total_steps)
        store.check_dir(Path(out), "monitor out=")  # before any hook: a bad folder is one error, the model untouched
        self.model, self.optimizer, self.every, self.out = model, optimizer, every, Path(out)
        self.on_alarm = on_alarm
        self.rules = Alarms(logit_threshold, log_z_drift, spike_factor,
                            _forecast_high(forecast) if forecast else None, total_steps=total_steps)
        self.lr_integral = 0.0  # Σ of the optimizer's LR over the steps seen: the drift law's clock (``drift``)
        self.log = MetricsLog(1)
        self.step_index = 0
        self.handles: list[Any] = []
        self.probes: list[_Probe] = []
        self.block_rms: dict[int, torch.Tensor] = {}
        self.names = {p: n for n, p in model.named_parameters()}
        self.snapshot: dict[str, torch.Tensor] | None = None
        self.closed = False
        self.training_only = False  # ``capture_outputs`` sets it: ignore evaluation forwards
        self.captured: dict[str, torch.Tensor] = {}  # loss / logits from ``capture_outputs``' hooks
        self.kind = self._find_attention(qk, heads)
        self.qk_weights = qk_weights or {}
        self.output_weight = _output_weight(model)  # for ‖μ‖, the mean output-embedding row (issue 23)
        self._find_blocks()
        # Adam moments to read the update direction from (module docstring); else parameters are copied per step
        self.adam = isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))
        self.update_source: str | None = None  # what update_rms/* measured (monitor.json)
        if optimizer is not None:
            self.handles.append(optimizer.register_step_post_hook(lambda opt, args, kwargs: self._after_update()))
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            self.close_hooks()
            raise store.StoreError(f"monitor out={self.out}: cannot create the directory ({err.strerror})") from None

    # ---- finding the attention ------------------------------------------------------------------------------------
    def recording(self) -> bool:
        """Whether the current step is one the monitor records (every ``every``-th; training forwards only once
        ``capture_outputs`` is on)."""
        # in a framework's loop (``integrations``) its evaluation forwards must not overwrite the training step's
        return self.step_index % self.every == 0 and (self.model.training or not self.training_only)

    def capture_outputs(self) -> None:
        """For loops the monitor cannot see into (Hugging Face ``Trainer``, Lightning): take the loss and the output
        logits of each recorded step from forward hooks, so ``step()`` needs no arguments; evaluation forwards
        (``model.eval()``) are ignored. The loss is the ``loss`` of the model's output (a ``transformers`` model
        given labels); the logits are the output of the output layer (``get_output_embeddings()``, else a module
        named ``lm_head``), else the model's own output (a tensor, or one with ``.logits``)."""
        self.training_only = True
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        head = head or next((m for n, m in self.model.named_modules() if n.split(".")[-1] == "lm_head"), None)

        def top(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if not self.recording():
                return
            loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
            if isinstance(loss, torch.Tensor):
                self.captured["loss"] = loss.detach()
            if head is None:
                z = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
                if isinstance(z, torch.Tensor):
                    self.captured["logits"] = z.detach()

        def output_layer(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if self.recording():
                self.captured["logits"] = out.detach()

        self.handles.append(self.model.register_forward_hook(top))
        if head is not None:
            self.handles.append(head.register_forward_hook(output_layer))

    def _find_attention(self, qk: dict[str, tuple[nn.Module, nn.Module]] | None, heads: int | None) -> str:
        if qk:
            for i, (_name, (q_mod, k_mod)) in enumerate(qk.items()):
                n_heads = heads or 1
                probe = _Probe(i, "named", 0.0)
                self.handles.append(q_mod.register_forward_hook(self._store(probe, "q", n_heads)))
                self.handles.append(k_mod.register_forward_hook(self._store(probe, "k", n_heads)))
                self.probes.append(probe)
            return "named q/k projections"
        kinds = []
        for module in self.model.modules():
            name = type(module).__name__
            if name == "GPT2Attention" and not getattr(module, "is_cross_attention", False):
                self._fused(module, module.c_attn, module.num_heads, module.split_size,
                            1 / math.sqrt(module.head_dim) if getattr(module, "scale_attn_weights", True) else 1.0)
                kinds.append("transformers GPT-2")
            elif name.endswith("Attention") and hasattr(module, "q_proj") and hasattr(module, "k_proj") \
                    and hasattr(module, "head_dim"):
                self._rotary(module)
                kinds.append("transformers Llama-family")
            elif hasattr(module, "c_attn") and hasattr(module, "n_head") and isinstance(module.c_attn, nn.Linear):
                d = module.c_attn.out_features // 3
                self._fused(module, module.c_attn, module.n_head, d, 1 / math.sqrt(d // module.n_head))
                kinds.append("nanoGPT CausalSelfAttention")
        if not self.probes:
            print("warning: monitor: no attention module recognised; attention logits are not recorded (name the "
                  "q/k projections with qk=..., or give qk_weights=... for the bound)", file=sys.stderr)
            return "none"
        return sorted(set(kinds))[0] if len(set(kinds)) == 1 else ", ".join(sorted(set(kinds)))

    def _fused(self, module: nn.Module, c_attn: nn.Module, heads: int, width: int, scale: float) -> None:
        probe = _Probe(len(self.probes), "fused", scale)

        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if not self.recording():
                return
            q, k = out.detach()[..., :width], out.detach()[..., width:2 * width]
            probe.q, probe.k = _heads(q, heads), _heads(k, heads)
            self._record_attention(probe)

        self.handles.append(c_attn.register_forward_hook(hook))
        self.probes.append(probe)

    def _rotary(self, module: nn.Module) -> None:
        """Llama-family: q/k projections, then the model's own rotary embedding, keys repeated for grouped heads."""
        probe = _Probe(len(self.probes), "rotary", float(getattr(module, "scaling", module.head_dim ** -0.5)))
        rope = getattr(sys.modules[type(module).__module__], "apply_rotary_pos_emb", None)
        head_dim = module.head_dim

        def capture(slot: str) -> Callable:
            def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
                if self.recording():
                    probe.extra[slot] = _heads(out.detach(), out.shape[-1] // head_dim)
            return hook

        def done(_mod: nn.Module, _args: Any, kwargs: dict[str, Any], _out: Any) -> None:
            if not self.recording() or "q" not in probe.extra:
                return
            q, k = probe.extra.pop("q"), probe.extra.pop("k")
            pos = kwargs.get("position_embeddings")
            if pos is not None and rope is not None:
                q, k = rope(q, k, *pos)
            if k.shape[1] != q.shape[1]:  # grouped-query attention: each key head serves several query heads
                k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            probe.q, probe.k = q, k
            self._record_attention(probe)

        self.handles += [module.q_proj.register_forward_hook(capture("q")),
                         module.k_proj.register_forward_hook(capture("k")),
                         module.register_forward_hook(done, with_kwargs=True)]
        self.probes.append(probe)

    def _store(self, probe: _Probe, slot: str, heads: int) -> Callable:
        def hook(_mod: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            if not self.recording():
                return
            setattr(probe, slot, _heads(out.detach(), heads))
            if probe.q is not None and probe.k is not None:
                probe.scale = probe.scale or probe.q.shape[-1] ** -0.5
                self._record_attention(probe)
        return hook

    def _find_blocks(self) -> None:
        """The residual blocks: the first ModuleList whose every entry holds one of the attention layers found."""
        n = len(self.probes)
        for module in self.model.modules():
            if isinstance(module, nn.ModuleList) and n and len(module) == n:
                for i, block in enumerate(module):
                    self.handles.append(block.register_forward_hook(self._block_hook(i)))
                return

    def _block_hook(self, i: int) -> Callable:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if self.recording():
                x = out[0] if isinstance(out, (tuple, list)) else out
                self.block_rms[i] = x.detach().float().pow(2).mean().sqrt()
        return hook

    def capture(self, loss: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> None:
        """Hand the monitor this step's loss or logits ahead of ``step()`` (a framework callback that sees them)."""
        if self.recording():
            self.captured.update({k: v.detach() for k, v in (("loss", loss), ("logits", logits)) if v is not None})

    # ---- measuring ------------------------------------------------------------------------------------------------
    def _record_attention(self, probe: _Probe) -> None:
        q, k = probe.q, probe.k
        assert q is not None and k is not None
        best = max_attention_logit(q, k, probe.scale).amax()
        probe.extra["stats"] = (best, torch.linalg.vector_norm(q.float(), dim=-1).mean(),
                                torch.linalg.vector_norm(k.float(), dim=-1).mean())
        probe.q = probe.k = None

    def step(self, loss: torch.Tensor | None = None, logits: torch.Tensor | None = None) -> bool:
        """Call after ``backward()`` and before ``optimizer.step()`` (and before clipping, to see the raw gradient
        norm). Returns False only when ``on_alarm="skip"`` and an alarm fired this step: the caller skips the
        update (and the monitor records no update RMS for it). Without ``loss``/``logits``, those
        ``capture_outputs`` took from the step's forward."""
        recording = self.recording()
        self.lr_integral += self._lr()
        loss = loss if loss is not None else self.captured.pop("loss", None)
        logits = logits if logits is not None else self.captured.pop("logits", None)
        self.captured = {}
        fired: list[Alarm] = []
        if recording:
            cols = self._measure(loss, logits)
            self.log.add(self.step_index, cols)
            n = sum(p.numel() for p in self.names if p.grad is not None)
            fired = self.rules.check(self.step_index, cols, self._eps(), n)
            self._snapshot()
        self.step_index += 1
        for alarm in self.rules.speak(fired):
            if self.on_alarm == "stop":
                self.close()
                raise TrainingStopped(alarm)
        if fired and self.on_alarm == "skip":
            self.snapshot = None  # no update follows: nothing to measure after it
            return False
        return True

    @torch.no_grad()
    def _measure(self, loss: torch.Tensor | None, logits: torch.Tensor | None) -> dict[str, torch.Tensor]:
        cols: dict[str, Any] = {} if loss is None else {"loss": torch.as_tensor(loss).detach().float()}
        for probe in self.probes:
            if "stats" in probe.extra:
                m, qn, kn = probe.extra.pop("stats")
                cols.update({f"attn_logit_max/{probe.index}": m, f"q_norm/{probe.index}": qn,
                             f"k_norm/{probe.index}": kn})
        for i, (wq, wk) in enumerate(self.qk_weights.values()):  # only a bound: ‖W_q‖₂·‖W_k‖₂ (× ‖x‖²/√d)
            cols[f"attn_logit_bound/{i}"] = (torch.linalg.matrix_norm(wq.detach().float(), ord=2)
                                             * torch.linalg.matrix_norm(wk.detach().float(), ord=2))
        if self.optimizer is not None:
            cols["lr_integral"] = torch.tensor(self.lr_integral)
        if logits is not None:
            # the precision the logits are in decides where the drift costs the loss (drift.DAMAGE_AT)
            self.rules.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(logits.dtype, "fp32")
            z = logits.detach().float()
            cols["output_logit_mean"] = z.mean()
            cols["log_z_mean"] = torch.logsumexp(z, dim=-1).mean()
        if self.output_weight is not None:  # ‖μ‖: the mean logit is μ·h (Output Embedding Centering's account)
            cols["mu_norm"] = self.output_weight.detach().float().mean(dim=0).norm()
        grads = [(n, p.grad) for p, n in self.names.items() if p.grad is not None]
        if grads:
            norms = torch._foreach_norm([g.detach().float() for _, g in grads])
            cols["grad_norm"] = torch.linalg.vector_norm(torch.stack(norms))
            for (name, g), norm in zip(grads, norms):
                cols[f"grad_rms/{name}"] = norm / math.sqrt(g.numel())
        params = list(self.names)
        for (p, name), norm in zip(self.names.items(), torch._foreach_norm([p.detach().float() for p in params])):
            cols[f"param_rms/{name}"] = norm / p.numel() ** 0.5
        for i, rms in self.block_rms.items():
            cols[f"block_rms/{i}"] = rms
        self.block_rms = {}
        return cols

    def _snapshot(self) -> None:
        """Before the step: the parameters with a gradient (a copy only where Δθ is needed: no Adam moments)."""
        if self.optimizer is not None:
            self.snapshot = {name: None if self.adam else p.detach().clone()
                             for p, name in self.names.items() if p.grad is not None}

    def _after_update(self) -> None:
        """Optimizer post-step hook: the update RMS of the step just recorded (see the module docstring)."""
        if self.snapshot is None or self.optimizer is None:
            return
        groups = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        cols: dict[str, torch.Tensor] = {}
        adam: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        for p, name in self.names.items():
            if name not in self.snapshot:
                continue
            group, state = groups.get(id(p), {}), self.optimizer.state.get(p, {})
            if has_adam_moments(state, group):
                adam.append((name, state, group))
            elif self.snapshot[name] is not None:
                delta = (p.detach().float() - self.snapshot[name].float()).pow(2).mean().sqrt()
                cols[f"update_rms/{name}"] = delta / (float(group.get("lr", 0.0)) or 1.0)
                self.update_source = "RMS(Δθ)/LR, weight decay included"
        if adam:
            rms = adam_direction_rms([state for _, state, _ in adam], [group for _, _, group in adam])
            cols.update({f"update_rms/{name}": r for (name, _, _), r in zip(adam, rms)})
            self.update_source = "Adam direction m̂/(√v̂ + ε)"
        self.snapshot = None
        if cols:
            self.log.add(self.step_index - 1, cols)

    def _lr(self) -> float:
        """The LR the coming optimizer step applies: the largest over the parameter groups (0 without an optimizer)."""
        if self.optimizer is None:
            return 0.0
        lrs = [float(g["lr"]) for g in self.optimizer.param_groups if "lr" in g]
        return max(lrs) if lrs else 0.0

    def _eps(self) -> float | None:
        if self.optimizer is None:
            return None
        eps = [g.get("eps") for g in self.optimizer.param_groups if isinstance(g.get("eps"), (int, float))]
        return min(eps) if eps else None

    # ---- output ---------------------------------------------------------------------------------------------------
    @property
    def alarms(self) -> list[Alarm]:
        """The alarms spoken so far (``Alarms.speak``)."""
        return self.rules.alarms

    @property
    def firings(self) -> dict[str, int]:
        """Per cause, the recorded steps on which it held."""
        return self.rules.firings

    def close_hooks(self) -> None:
        """Remove every hook the monitor put on the model and optimizer."""
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def close(self) -> Path:
        """Remove the hooks; write DIR/metrics.parquet, DIR/alarms.json and DIR/monitor.json (atomically). A second
        call (a framework's end after a stop) writes nothing new."""
        if self.closed:
            return self.out / "metrics.parquet"
        self.closed = True
        self.close_hooks()
        store.write_parquet(self.out / "metrics.parquet", self.log.frame())
        store.write_json(self.out / "alarms.json", [a.__dict__ for a in self.alarms])
        store.write_json(self.out / "monitor.json", {"model": type(self.model).__name__, "attention": self.kind,
                                                     "update_rms": self.update_source,
                                                     "layers": len(self.probes), "every": self.every,
                                                     "steps": self.step_index, "alarms": len(self.alarms),
                                                     "firings": self.firings})
        return self.out / "metrics.parquet"


class RunAlarms(Callback):
    """The monitor's alarms on a proxyscale group as it trains (a ``callbacks.Callback``): one ``Alarms`` per member,
    fed the member's logged loss, max attention logits and log Z, speaking as the monitor does (``member k:``).
    They warn only (a group's members are many runs; one going unstable is a result). ``alarms`` holds what was
    spoken, per member; ``out``, if given, gets them as ``alarms.json`` when the group finishes.

        train_group(cfg, out, callbacks=[monitor.RunAlarms(logit_threshold=100)])"""

    def __init__(self, logit_threshold: float = PAPER_LOGIT_THRESHOLD, log_z_drift: float = 10.0,
                 spike_factor: float = 2.0, out: str | Path | None = None) -> None:
        self.kwargs = {"logit_threshold": logit_threshold, "log_z_drift": log_z_drift, "spike_factor": spike_factor}
        self.out = Path(out) if out is not None else None
        self.members: list[Alarms] = []

    @property
    def alarms(self) -> list[Alarm]:
        return [a for m in self.members for a in m.alarms]

    def on_start(self, run: Any) -> None:
        self.members = [Alarms(**self.kwargs, who=f"member {k}: ", total_steps=run.cfg.train.steps,
                               precision=run.precision) for k in range(len(run.members))]

    def on_logged(self, step: int, columns: dict[str, Any]) -> None:
        if "loss" not in columns:  # an evaluation or throughput row: the rules read training steps
            return
        names = [n for n in columns if n in ("loss", "log_z_mean", "output_logit_mean", "lr_integral")
                 or n.startswith("attn_logit_max/")]
        for k, rules in enumerate(self.members):
            rules.speak(rules.check(step, {n: columns[n][k] for n in names}))

    def on_finish(self, summary: Any) -> None:
        if self.out is not None:
            store.write_json(self.out / "alarms.json", [{"member": k, **a.__dict__} for k, m in enumerate(self.members)
                                                        for a in m.alarms])


def validate(every: int, on_alarm: str, total_steps: int | None = None) -> None:
    """The options ``attach`` checks before it touches the model."""
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every: must be an integer >= 1, got {every!r}")
    if on_alarm not in ("warn", "stop", "skip"):
        raise ValueError(f"on_alarm: got {on_alarm!r}; valid: warn, stop, skip")
    if total_steps is not None and (not isinstance(total_steps, int) or isinstance(total_steps, bool)
                                    or total_steps < 1):
        raise ValueError(f"total_steps: the run's length in steps, an integer >= 1 (or None: unknown), got "
                         f"{total_steps!r}")


def has_adam_moments(state: dict[str, Any], group: dict[str, Any]) -> bool:
    """Whether ``state`` is ``torch.optim.Adam``/``AdamW``-style state after at least one step."""
    return ({"exp_avg", "exp_avg_sq", "step"} <= state.keys() and "betas" in group and "eps" in group
            and float(state["step"]) >= 1)


def adam_direction_rms(states: list[dict[str, Any]], groups: list[dict[str, Any]]) -> list[torch.Tensor]:
    """The RMS of the Adam direction m̂/(√v̂ + ε) of the step just taken, per tensor, from ``torch.optim.Adam``/
    ``AdamW``-style states (each with moments: ``has_adam_moments``): the update divided by the LR, weight decay
    apart (paper §3.4's update RMS). float32: the moments may be kept in bf16, and v̂ of a gradient near ε underflows
    there. All tensors at once (``torch._foreach_*``): a handful of kernels rather than a handful per tensor, which on
    a small model was most of the monitor's cost."""
    ms = [st["exp_avg"].detach().float() for st in states]
    vs = [(st["max_exp_avg_sq"] if g.get("amsgrad") and "max_exp_avg_sq" in st else st["exp_avg_sq"]).detach().float()
          for st, g in zip(states, groups)]
    t = [float(st["step"]) for st in states]
    bc1 = [1 - float(g["betas"][0]) ** s for g, s in zip(groups, t)]
    bc2 = [1 - float(g["betas"][1]) ** s for g, s in zip(groups, t)]
    denom = torch._foreach_sqrt(torch._foreach_div(vs, bc2))  # float32 (docstring)
    torch._foreach_add_(denom, [float(g["eps"]) for g in groups])
    direction = torch._foreach_div(torch._foreach_div(ms, bc1), denom)
    norms = torch._foreach_norm(direction)
    return [n / m.numel() ** 0.5 for n, m in zip(norms, ms)]


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H·Dh] -> [B, H, T, Dh]."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def _forecast_high(path: str | Path) -> float | None:
    """The upper end of a forecast's 80% band for the layer-0 logit (``forecast.json`` or its folder)."""
    from ..core.records import ForecastRecord

    t = ForecastRecord.read(Path(path)).trends.get("attn_logit_max/0", {})
    return t.get("high") if t.get("ok") else None


def attach(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, every: int = 10,
           out: str | Path = "runs/monitor", qk: dict[str, tuple[nn.Module, nn.Module]] | None = None,
           qk_weights: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None, heads: int | None = None,
           logit_threshold: float = PAPER_LOGIT_THRESHOLD, log_z_drift: float = 10.0, spike_factor: float = 2.0,
           on_alarm: str = "warn", forecast: str | Path | None = None, total_steps: int | None = None) -> Monitor:
    """Attach the monitor to ``model`` (and ``optimizer``, for update RMS, ε and the integrated LR); see the module
    docstring. ``total_steps``: the run's length, the horizon of the output-logit drift alarm's projection."""
    return Monitor(model, optimizer, every, Path(out), qk, qk_weights, heads, logit_threshold, log_z_drift,
                   spike_factor, on_alarm, forecast, total_steps)
