"""The core: what a run is, how it is kept, and the paper's measures over its results.

- ``config``: the group config (one dataclass per section, every field documented with its source) and its errors;
- ``store``: the run store's atomic, one-writer files; ``records``: the typed records written there;
- ``table``: the results table's columns and run identities; ``analysis``: LR sensitivity (paper §3), best LR and
  loss, power-law fits; ``instability``: unstable runs, the logit threshold, prediction intervals; ``seeds``: seed
  replicates and verdicts judged against seed noise.

May import: the experiments catalogue (``proxyscale.experiments``, data only). Nothing else of proxyscale: every
other layer imports this one.
"""
