"""Watch any PyTorch training loop for the paper's instabilities, live (``watch``), and inside Hugging Face
``Trainer`` and Lightning (``integrations``)::

    from proxyscale import monitor
    mon = monitor.attach(model, optimizer, every=10, out="runs/monitor")

May import: ``proxyscale.core``, ``proxyscale.engine`` (diagnostics, callbacks) and ``proxyscale.science`` (the
drift law). No framework is imported until its adapter is built.
"""

from .integrations import lightning_callback, trainer_callback
from .watch import (WORSENS, Alarm, Alarms, Monitor, RunAlarms, TrainingStopped, adam_direction_rms, attach,
                    has_adam_moments, validate)

__all__ = ["WORSENS", "Alarm", "Alarms", "Monitor", "RunAlarms", "TrainingStopped", "adam_direction_rms", "attach",
           "has_adam_moments", "lightning_callback", "trainer_callback", "validate"]
