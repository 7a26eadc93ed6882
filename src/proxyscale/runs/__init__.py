"""Running many groups: declarative sweeps over the run store (``sweep``), their plan and cost estimate before
anything trains (``plan``), where groups run: processes, Ray or Slurm (``executors``), and the progress and heartbeat
lines (``progress``).

May import: ``proxyscale.core``, ``proxyscale.engine``, ``proxyscale.science``, ``proxyscale.outputs`` (a sweep
draws its LR-vs-loss figure) and the experiments catalogue.
"""
