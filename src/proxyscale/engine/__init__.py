"""The engine: train one group of K proxies (the member axis) as one batched model.

``model`` (the GPT proxy and every architectural switch), ``optim`` (batched AdamW, Muon, QK-clip, schedules),
``losses`` (cross-entropy, z-loss), ``diagnostics`` (what the paper records), ``data`` (offline corpora and
tokenizers), ``device`` (the named seam for device tricks: precision, compile, micro-batching), ``threads`` (CPU
thread and wait policy), ``callbacks`` (training events), ``loggers`` (TensorBoard, W&B), ``ladder`` (the model
sizes) and ``train`` (``train_group``: the loop, checkpoints, summaries).

May import: ``proxyscale.core`` and the experiments catalogue.
"""
