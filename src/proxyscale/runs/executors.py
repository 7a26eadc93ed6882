"""Where a sweep's groups train: here (one after another, or N processes), as Ray tasks, or as a Slurm job array.

Every executor runs the same job, ``sweep.train_job`` (one group into ``pool/<id>``), and nothing else. The group
pool, on a filesystem every worker sees, is the single source of truth: the run store's per-group lock means two
workers never train the same group (the second waits, then finds it finished), and a worker killed mid-group
leaves a checkpoint that the next attempt (a Ray retry, or a rerun of the command) resumes, bit for bit.

``ray`` and ``submitit`` are optional extras: ``pip install 'proxyscale[ray]'`` / ``'proxyscale[slurm]'``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..core.config import ConfigError, require_extra
from ..core.store import StoreError
from ..engine.threads import usable_cores


@dataclass(frozen=True)
class ExecutorConfig:
    """The ``executor`` section of a sweep spec (and the matching ``sweep``/``reproduce`` flags, which win)."""

    kind: Literal["local", "ray", "slurm"] = "local"
    """``local``: this machine (``workers`` processes); ``ray``: one Ray task per group; ``slurm``: one
    submitit job per group, submitted as one Slurm job array."""
    workers: int = 1
    """local: groups trained at once, each in its own process. Ray and Slurm schedule by the resources below."""
    cpus_per_group: int = 0
    """CPU cores a group uses (its torch threads, when ``train.threads`` is 0): 0 = auto, cores / workers here,
    1 per Ray task, ``slurm_cpus_per_task`` on Slurm."""
    gpus_per_group: float = 0.0
    """GPUs a Ray task or Slurm job asks for (Ray accepts fractions, e.g. 0.5 to pack two micro groups per GPU)."""
    ray_address: str = ""
    """Ray: the address of an existing cluster (e.g. ``ray://head:10001`` or ``auto``); empty = start a local Ray on
    this machine. Workers need proxyscale installed and the pool's folder mounted at the same path."""
    retries: int = 2
    """Ray: times a group is retried after its worker dies; the retry resumes from the group's last checkpoint."""
    slurm_partition: str = ""
    """Slurm partition (``--partition``); empty = the cluster's default."""
    slurm_time_min: int = 240
    """Slurm time limit per group, in minutes."""
    slurm_cpus_per_task: int = 8
    """Slurm ``--cpus-per-task`` for each group's job."""
    slurm_array_parallelism: int = 16
    """At most this many jobs of the array run at once."""
    slurm_folder: str = ""
    """Where submitit keeps job scripts, pickles and logs (on the shared filesystem); empty = ``OUT/slurm``."""
    slurm_cluster: Literal["auto", "slurm", "local"] = "auto"
    """submitit's backend: ``auto`` = Slurm where ``srun`` exists, else local subprocesses; ``local`` forces those
    (how the tests run the Slurm path without a cluster)."""


RAY_ADDRESS = re.compile(r"auto|local|(ray://)?[A-Za-z0-9.\-]+:[0-9]{1,5}")
"""The addresses ``ray.init`` takes: ``auto``, ``local``, a GCS ``host:port``, or a Ray Client ``ray://host:port``."""
_RAY_STARTED_HERE = False  # connect_ray started Ray in this process: _ray shuts it down when the sweep ends


def connect_ray(cfg: ExecutorConfig) -> None:
    """Start or join Ray before a sweep writes anything, so an address that cannot be reached is one line, exit 2,
    and nothing on disk."""
    global _RAY_STARTED_HERE
    import ray

    if ray.is_initialized():
        return
    try:
        ray.init(address=cfg.ray_address or None, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    except Exception as err:  # noqa: BLE001 - ConnectionError, RuntimeError, ValueError: all mean "cannot reach"
        raise StoreError(f"--ray-address {cfg.ray_address or '(local)'}: cannot start or join Ray "
                         f"({_first_line(err)}); check the address (ray status on the head node)", exit_code=2) \
            from None
    _RAY_STARTED_HERE = True


def executor_config(raw: dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> ExecutorConfig:
    """The spec's ``executor`` mapping, then command-line overrides (None = not given), validated."""
    from ..core.config import parse_section

    merged = {**(raw or {}), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    cfg = parse_section("executor", ExecutorConfig, merged)
    for name in ("workers", "slurm_time_min", "slurm_cpus_per_task", "slurm_array_parallelism"):
        if getattr(cfg, name) < 1:
            flag = "--workers" if name == "workers" else f"executor.{name}"
            raise ConfigError(f"{flag}: must be at least 1, got {getattr(cfg, name)}")
    if cfg.cpus_per_group < 0 or cfg.gpus_per_group < 0 or cfg.retries < 0:
        raise ConfigError("executor: cpus_per_group, gpus_per_group and retries must be >= 0")
    if cfg.kind == "ray":
        require_extra("--executor ray", "ray", "ray")
    if cfg.ray_address and not RAY_ADDRESS.fullmatch(cfg.ray_address):
        raise ConfigError(f"--ray-address {cfg.ray_address!r}: not a Ray address; valid: auto, local, HOST:PORT "
                          "(a cluster's GCS) or ray://HOST:PORT (Ray Client)")
    if cfg.kind == "slurm":
        require_extra("--executor slurm", "submitit", "slurm")
    return cfg


def cpus_per_group(cfg: ExecutorConfig) -> int:
    if cfg.cpus_per_group:
        return cfg.cpus_per_group
    if cfg.kind == "local":
        return max(1, usable_cores() // cfg.workers)  # the cores this process may use (its affinity mask)
    return 1 if cfg.kind == "ray" else cfg.slurm_cpus_per_task


def run(fn: Callable[[Any], Any], jobs: Sequence[Any], cfg: ExecutorConfig, out: Path,
        show: Callable[[int, int], None]) -> Iterator[Any]:
    """Run ``fn`` on every job with ``cfg``'s executor; yield each job's result (a group id) as it finishes.
    ``show(done, running)`` is told the progress."""
    if not jobs:
        return iter(())
    if cfg.kind == "ray":
        return _ray(fn, jobs, cfg, show)
    if cfg.kind == "slurm":
        return _slurm(fn, jobs, cfg, out, show)
    return _local(fn, jobs, cfg, show)


def _local(fn: Callable[[Any], Any], jobs: Sequence[Any], cfg: ExecutorConfig,
           show: Callable[[int, int], None]) -> Iterator[Any]:
    if cfg.workers <= 1:
        for i, job in enumerate(jobs):
            show(i, 1)
            yield fn(job)
        show(len(jobs), 0)
        return
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(cfg.workers) as pool:
        show(0, min(cfg.workers, len(jobs)))
        for i, gid in enumerate(pool.imap_unordered(fn, jobs), start=1):
            show(i, min(cfg.workers, len(jobs) - i))
            yield gid


def _ray(fn: Callable[[Any], Any], jobs: Sequence[Any], cfg: ExecutorConfig,
         show: Callable[[int, int], None]) -> Iterator[Any]:
    import ray

    global _RAY_STARTED_HERE
    connect_ray(cfg)
    started_here, _RAY_STARTED_HERE = _RAY_STARTED_HERE, False
    try:
        task = ray.remote(num_cpus=cpus_per_group(cfg), num_gpus=cfg.gpus_per_group, max_retries=cfg.retries)(fn)
        pending = [task.remote(job) for job in jobs]
        show(0, len(pending))
        done = 0
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                gid = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                raise StoreError(f"a group failed on Ray after {cfg.retries} retries ({_first_line(err)}); rerun "
                                 "the same command: finished groups are kept, the others resume") from None
            done += 1
            show(done, len(pending))
            yield gid
    finally:
        if started_here:
            ray.shutdown()


def _slurm(fn: Callable[[Any], Any], jobs: Sequence[Any], cfg: ExecutorConfig, out: Path,
           show: Callable[[int, int], None]) -> Iterator[Any]:
    import submitit
    from submitit.helpers import as_completed

    folder = Path(cfg.slurm_folder) if cfg.slurm_folder else out / "slurm"
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=None if cfg.slurm_cluster == "auto"
                                     else cfg.slurm_cluster)
    params: dict[str, Any] = {"name": "proxyscale", "timeout_min": cfg.slurm_time_min,
                              "cpus_per_task": cpus_per_group(cfg), "slurm_array_parallelism":
                              cfg.slurm_array_parallelism}
    if cfg.gpus_per_group:
        params["gpus_per_node"] = int(cfg.gpus_per_group)
    if cfg.slurm_partition:
        params["slurm_partition"] = cfg.slurm_partition
    executor.update_parameters(**params)
    submitted = executor.map_array(fn, jobs)
    show(0, len(submitted))
    for done, job in enumerate(as_completed(submitted), start=1):
        try:
            gid = job.result()
        except Exception as err:  # noqa: BLE001 - submitit's FailedJobError / UncompletedJobError and their kin
            raise StoreError(f"job {job.job_id} failed ({_first_line(err)}); logs in {folder}; rerun the same "
                             "command: finished groups are kept, the others resume from their checkpoints") from None
        show(done, len(submitted) - done)
        yield gid


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{err.__class__.__name__}: {text[0] if text else ''}"[:200]
