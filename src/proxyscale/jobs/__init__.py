"""The jobs a user asks for by name: reproduce an experiment of the paper (``reproduce``), forecast a run from a
ladder of proxies (``forecast``), and render the generated parts of the documentation (``docs``).

May import every layer below: ``core``, ``engine``, ``science``, ``outputs``, ``runs``, and the experiments
catalogue. Only ``proxyscale.cli`` imports it.
"""
