"""The monitor inside the trainers users train with: a Hugging Face ``transformers.TrainerCallback`` and a Lightning
``Callback``, each one line to add and each recording what ``monitor.attach`` records in a hand-written loop.

    trainer = transformers.Trainer(model, args, train_dataset=ds,
                                   callbacks=[monitor.trainer_callback(out="runs/monitor")])
    trainer = lightning.Trainer(max_steps=1000, callbacks=[monitor.lightning_callback(out="runs/monitor")])

The keyword arguments are ``monitor.attach``'s (``every``, ``out``, ``logit_threshold``, ``on_alarm``, ``forecast``,
...). The monitor is attached when training starts (the model and optimizer the framework built), takes the loss and
the output logits from forward hooks (``Monitor.capture_outputs``: evaluation forwards are ignored), and measures
each recorded step after the backward pass and before the optimizer step, as ``Monitor.step`` is meant to be called.
It writes ``out/`` (metrics.parquet, alarms.json, monitor.json) when training ends, also when it stops early.

- ``on_alarm="stop"``: ``control.should_training_stop`` (Trainer) or ``trainer.should_stop`` (Lightning) is set;
  the framework finishes the step in progress (its optimizer step included) and stops.
- ``on_alarm="skip"``: the gradients are dropped before the optimizer step, so ``torch.optim`` optimizers leave
  every weight and moment as it was: the update is skipped. The frameworks still advance their LR scheduler and step
  counter for it, which no callback can prevent.
- The gradient norm is the one the optimizer sees: the Trainer clips before its ``on_pre_optimizer_step`` (set
  ``max_grad_norm=0`` to record the raw norm); Lightning clips after ``on_before_optimizer_step``, so it is raw.

``transformers`` and ``lightning`` are optional (``pip install 'proxyscale[transformers]'`` / ``[lightning]``);
each adapter imports its framework only when built.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .watch import Monitor, TrainingStopped, attach, validate


class _Watch:
    """What both adapters do, framework apart: attach at the start, measure before each update, close at the end."""

    def __init__(self, **attach_kwargs: Any) -> None:
        import inspect

        options = inspect.signature(attach).bind(None, None, **attach_kwargs)  # a misspelt option fails here
        options.apply_defaults()  # attach's own defaults, not a copy of them
        validate(options.arguments["every"], options.arguments["on_alarm"])
        self.kwargs = attach_kwargs
        self.monitor: Monitor | None = None

    def start(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        # accelerate's AcceleratedOptimizer (a torch Optimizer without its hooks) and Lightning's LightningOptimizer
        # hold the optimizer that steps
        while isinstance(getattr(optimizer, "optimizer", None), torch.optim.Optimizer):
            optimizer = optimizer.optimizer
        self.monitor = attach(model, optimizer, **self.kwargs)
        self.monitor.capture_outputs()

    def before_update(self, model: nn.Module) -> bool:
        """Measure the step; returns whether training must stop. Drops the gradients when the step is skipped."""
        if self.monitor is None:
            return False
        try:
            keep = self.monitor.step()
        except TrainingStopped:
            return True
        if not keep:
            for p in model.parameters():
                p.grad = None  # torch.optim skips a parameter without a gradient: no update, moments untouched
        return False

    def finish(self) -> None:
        if self.monitor is not None:
            self.monitor.close()


def trainer_callback(**attach_kwargs: Any) -> Any:
    """A ``transformers.TrainerCallback`` that runs the monitor (module docstring)."""
    from transformers import TrainerCallback

    class ProxyscaleMonitor(TrainerCallback):
        def __init__(self) -> None:
            self.watch = _Watch(**attach_kwargs)

        @property
        def monitor(self) -> Monitor | None:
            return self.watch.monitor

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                           **kwargs: Any) -> None:
            self.watch.start(model, optimizer)

        def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None,
                                  **kwargs: Any) -> None:
            if self.watch.before_update(model):
                control.should_training_stop = True

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.watch.finish()

    return ProxyscaleMonitor()


def lightning_callback(**attach_kwargs: Any) -> Any:
    """A Lightning ``Callback`` that runs the monitor (module docstring). Works with ``lightning`` 2.x."""
    from lightning.pytorch import Callback

    class ProxyscaleMonitor(Callback):
        def __init__(self) -> None:
            self.watch = _Watch(**attach_kwargs)

        @property
        def monitor(self) -> Monitor | None:
            return self.watch.monitor

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.watch.start(pl_module, trainer.optimizers[0] if trainer.optimizers else None)

        def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
            if self.monitor is not None:
                self.monitor.capture(loss=loss)  # the loss the module returned

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self.watch.before_update(pl_module):
                trainer.should_stop = True

        def on_train_end(self, trainer: Any, pl_module: Any) -> None:
            self.watch.finish()

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.watch.finish()  # what was recorded up to the failure is kept

    return ProxyscaleMonitor()
