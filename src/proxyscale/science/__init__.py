"""The science over results: the output-logit drift law (``drift``), extrapolation in N with calibrated bands and
the warnings where it breaks (``extrapolation``), and each figure's claims as checks that give a verdict
(``claims``).

May import: ``proxyscale.core``, ``proxyscale.engine`` (the LR schedule and compute dtypes the drift law needs) and
the experiments catalogue.
"""
