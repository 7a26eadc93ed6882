"""A declarative sweep: sizes × group-level switches × member scalars, expanded into groups and run.

Spec (YAML or a dict)::

    name: fig1
    base: {data: {corpus: kjv, seq_len: 64}, train: {steps: 300}}   # defaults for every group
    sizes: micro                       # a ladder name, micro[:3], or a list of {width, depth, heads}
    axes: {model.qk_layernorm: [head, off]}   # group-level switches (cartesian product)
    members: {lr: [3.0e-4, 1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 1.0e-1, 3.0e-1]}  # member scalars: one group each
    executor: {kind: ray}              # optional: where groups train (executors.ExecutorConfig)

A group id is a hash of the configuration (``table.run_id``: threads, device and logging excluded), so rerunning
skips finished groups and resumes unfinished ones from their last checkpoint.
"""

from __future__ import annotations

import copy
import json
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..core import config as config_mod
from ..engine import ladder, loggers
from ..core import store, table
from ..core import seeds as seeds_mod
from ..core.config import ConfigError, GroupConfig
from ..engine.data import check_corpus
from .executors import ExecutorConfig, connect_ray, cpus_per_group, executor_config
from .executors import run as run_jobs
from ..core.records import GroupSummary
from ..core.store import StoreError
from ..engine.threads import usable_cores

SPEC_KEYS = ("name", "base", "sizes", "axes", "members", "seeds", "tail_steps", "at_step", "parts", "labels",
             "executor")
PART_KEYS = ("base", "sizes", "axes", "members", "labels")


@dataclass
class Group:
    id: str
    cfg: GroupConfig
    labels: dict[str, Any] = field(default_factory=dict)  # size and axis values, for tables and plots


def _set(raw: dict, path: str, value: Any, where: str) -> None:
    """Set ``section.field`` in a raw config; ``a.b,c.d`` (a paired axis) sets several fields from a list."""
    paths = path.split(",")
    values = value if len(paths) > 1 else [value]
    if len(paths) > 1 and (not isinstance(value, list) or len(value) != len(paths)):
        raise ConfigError(f"{where}.{path}: each value of a paired axis is a list of {len(paths)} values, got {value!r}")
    for one, v in zip(paths, values):
        section, _, name = one.strip().partition(".")
        if section not in config_mod.SECTIONS or not name:
            raise ConfigError(f"{where}.{path}: unknown axis; valid: section.field with section in "
                              f"{', '.join(config_mod.SECTIONS)} (e.g. model.qk_layernorm)")
        raw.setdefault(section, {})[name] = v


def _size_sets(spec: Any) -> list[tuple[str | None, dict[str, int] | None]]:
    """``sizes`` -> [(set name, size)]: a ladder/list (set None) or named sets ``{depth: [...], width: [...]}``."""
    if spec is None:
        return [(None, None)]
    if isinstance(spec, dict):
        return [(name, s) for name, sub in spec.items() for s in ladder.sizes(sub)]
    return [(None, s) for s in ladder.sizes(spec)]


def merge(a: dict, b: dict) -> dict:
    """Deep merge of raw mappings: b's fields win, mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def with_log_to(spec: dict[str, Any], log_to: str | None) -> dict[str, Any]:
    """``spec`` with every group also streaming to ``log_to`` (``--log-to``: train.log_to); unchanged without it.
    Logging is not part of a group's identity, so the group ids stay the same."""
    return merge(spec, {"base": {"train": {"log_to": log_to}}}) if log_to else spec


def parse_seeds(value: Any) -> list[int] | None:
    """``seeds``: a count n (init seeds 0 … n-1) or a list of distinct init seeds, ridden on the member axis as
    ``members.seed`` (each member's init seed; the data order stays the group's ``train.seed``, which an axis
    varies as separate groups). None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not (isinstance(value, int) or isinstance(value, list)):
        raise ConfigError(f"seeds: expected a count (e.g. 3) or a list of distinct init seeds, got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= 1000:
            raise ConfigError(f"seeds: a count from 1 to 1000, got {value}")
        return list(range(value))
    if not value or len(set(map(str, value))) != len(value) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32 for v in value):
        raise ConfigError(f"seeds: expected a non-empty list of distinct integers in [0, 2^32), got {value!r}")
    return list(value)


def expand(spec: dict[str, Any]) -> list[Group]:
    """Spec -> groups (validated); raises ConfigError naming the bad key.

    ``parts`` (a list) splits a sweep into sub-sweeps, each overriding ``base`` (merged), ``sizes``, ``axes``,
    ``members`` and adding ``labels`` — e.g. coupled decay on its own LR grid beside independent decay.
    """
    if not isinstance(spec, dict):
        raise ConfigError("spec: expected a mapping with keys " + ", ".join(SPEC_KEYS))
    for key in spec:
        if key not in SPEC_KEYS:
            raise ConfigError(f"{key}: unknown spec key; valid: {', '.join(SPEC_KEYS)}")
    for key in ("base", "axes", "members", "labels"):
        if spec.get(key) is not None and not isinstance(spec[key], dict):
            raise ConfigError(f"{key}: expected a mapping, got a {type(spec[key]).__name__} ({str(spec[key])[:60]})")
    if spec.get("parts") is not None and not isinstance(spec["parts"], list):
        raise ConfigError("parts: expected a list of sub-sweeps, each a mapping")
    if spec.get("parts"):
        groups, seen = [], set()
        for i, part in enumerate(spec["parts"]):
            if not isinstance(part, dict):
                raise ConfigError(f"parts[{i}]: expected a mapping with keys {', '.join(PART_KEYS)}")
            bad = [k for k in part if k not in PART_KEYS]
            if bad:
                raise ConfigError(f"parts[{i}].{bad[0]}: unknown key; valid: {', '.join(PART_KEYS)}")
            sub = {k: v for k, v in spec.items() if k != "parts"}
            sub.update({k: v for k, v in part.items() if k != "base"})
            sub["base"] = merge(spec.get("base") or {}, part.get("base") or {})
            for g in expand(sub):
                if g.id not in seen:
                    seen.add(g.id)
                    groups.append(g)
        return groups
    base = spec.get("base") or {}
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError("axes: expected a mapping such as {model.qk_layernorm: [head, off]}")
    for path, values in axes.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"axes.{path}: expected a non-empty list of values")
    members = spec.get("members") or {}
    for path in axes:  # a group-level value of a scalar the members list would train the same group twice
        for key in path.split(","):
            why = config_mod.shadowed_by_members(key, members)
            if why:
                name = key.strip().partition(".")[2]
                raise ConfigError(f"axes.{path}: {why}, so every value of this axis would train the same runs; "
                                  f"sweep it as members.{name} instead (or drop members.{name})")
    for name, values in members.items():
        if isinstance(values, list) and not values:
            raise ConfigError(f"members.{name}: empty grid; give at least one value")
    seeds = parse_seeds(spec.get("seeds"))
    if seeds is not None:
        if "seed" in members:
            raise ConfigError("seeds: members.seed is listed too; give the init seeds once (seeds: 3, or "
                              "members.seed: [0, 1, 2])")
        members = {**members, "seed": seeds}
    groups, seen = [], set()
    for size_set, size in _size_sets(spec.get("sizes")):
        for combo in itertools.product(*axes.values()):
            raw = copy.deepcopy(base)
            labels: dict[str, Any] = dict(spec.get("labels") or {})
            if size_set is not None:
                labels["scaling"] = size_set
            if size is not None:
                raw.setdefault("model", {}).update(size)
                labels["size"] = ladder.size_label(size)
            for path, value in zip(axes, combo):
                _set(raw, path, value, "axes")
            raw["members"] = members
            cfg = config_mod.from_dict(raw)
            for path in axes:  # labels are the validated values: YAML's unquoted off is the config's "off"
                got = [config_mod.get_path(cfg, p.strip()) for p in path.split(",")]
                labels[path] = str(got) if len(got) > 1 else got[0]
            if "size" not in labels:  # every group carries its size, also when the spec names no sizes
                m = cfg.model
                labels = {"size": ladder.size_label({"width": m.width, "depth": m.depth, "heads": m.heads}), **labels}
            gid = table.run_id(cfg)
            if gid not in seen:
                seen.add(gid)
                groups.append(Group(gid, cfg, labels))
    return groups


def load_spec(path: str) -> dict[str, Any]:
    spec = config_mod.read_yaml(path, "sweep spec")
    if not isinstance(spec, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    group_sections = sorted(set(spec) & set(config_mod.SECTIONS))
    if group_sections and not set(spec) & {"base", "sizes", "axes"}:
        raise ConfigError(f"{path}: a group file (sections {', '.join(group_sections)}), not a sweep spec; train it "
                          f"with proxyscale train {path} --out DIR, or give sweep a spec with keys base, sizes, axes, "
                          "members (e.g. examples/fig3_search.yaml)")
    return spec


def train_job(job: tuple[str, dict, str, int, int | None]) -> tuple[str, bool]:
    """The one job every executor runs (top-level, so it pickles): train group ``id`` into ``pool/<id>``; returns
    (id, whether this job trained it: False when another sweep did, while this one waited)."""
    gid, raw_cfg, pool, threads, grow = job
    from .progress import Heartbeat
    from ..engine.train import train_group

    cfg = config_mod.from_dict(raw_cfg)
    # threads auto: at most the cores the executor gave this group (so workers never oversubscribe), fewer where
    # other work holds them (threads.choose), more (up to ``grow``) once other workers finish; a group another
    # worker holds: wait, then it is finished. Trained wherever the executor put it (another process, a Ray or Slurm
    # worker), the sweep's progress lines read how far it is from the group's heartbeat.json
    _, trained = train_group(cfg, Path(pool) / gid, wait=True, thread_cap=threads, thread_max=grow,
                             callbacks=[Heartbeat(Path(pool) / gid)])
    return gid, trained


def run_sweep(spec: dict[str, Any], out: str | Path, workers: int | None = None, progress: Any = None,
              pool: str | Path | None = None, executor: dict[str, Any] | None = None,
              record: dict[str, Any] | None = None) -> pl.DataFrame:
    """Run every group of ``spec`` (skipping finished ones) and write ``out/results.parquet``; ``record``, if given,
    receives what ``out/sweep.json`` says of this call (groups, trained here, executor, seconds).

    Groups live in ``pool/<id>`` (default ``out/groups``); experiments that share a pool share identical groups.
    ``out`` has one writer at a time; each group folder too, so two sweeps over one pool never train a group twice.
    ``executor`` overrides the spec's ``executor`` section (see ``executors.ExecutorConfig``).
    """
    groups, out, pool, ex = prepare(spec, out, pool, {"workers": workers, **(executor or {})})
    # Several sweeps of one spec into one ``out`` (cluster workers over one pool) cooperate: ``out`` is locked only
    # while its files are written; the groups train under their own locks, so each trains once and every sweep
    # waits for the groups another one holds, then collects the same results.
    with store.lock(out, wait=True):
        write_spec(spec, out)
    trained, seconds = train_groups(groups, pool, ex, progress, out)
    with store.lock(out, wait=True):
        results = finish(spec, groups, trained, out, pool, ex, seconds)
    if record is not None:
        record.update(groups=len(groups), trained=trained, executor=ex.kind, seconds=round(seconds, 1))
    return results


def prepare(spec: dict[str, Any], out: str | Path, pool: str | Path | None, executor: dict[str, Any] | None = None,
            *, check_memory: bool = True) -> tuple[list[Group], Path, Path, ExecutorConfig]:
    """Everything checked before anything is written: the spec, the executor, the directories, the corpora and
    (unless ``check_memory`` is False, as for a plan, which notes it per group) that each group fits here."""
    groups = expand(spec)
    ex = executor_config(spec.get("executor"), executor)
    out = Path(out)
    pool = Path(pool) if pool is not None else out / "groups"
    store.check_dir(out)
    store.check_dir(pool, "the group pool")
    for data_cfg in {g.cfg.data.corpus: g.cfg.data for g in groups}.values():
        check_corpus(data_cfg)
    if check_memory:
        check_fits(groups, ex)
    if ex.kind == "ray":  # joined now: an unreachable cluster is one line, before spec.json is written
        connect_ray(ex)
    return groups, out, pool, ex


def check_fits(groups: list[Group], executor: ExecutorConfig) -> None:
    """A group too big for this machine is refused before anything is printed or written, naming the group and the
    field that makes it so (``train.memory_plan``). Only where the groups train here: a Ray or Slurm worker's device
    is not this machine's."""
    if executor.kind != "local":
        return
    from ..engine.train import memory_plan

    for g in groups:
        try:
            memory_plan(g.cfg)
        except ConfigError as err:
            labels = ", ".join(f"{k}={v}" for k, v in g.labels.items())
            raise ConfigError(f"group {labels or g.id}: {err}") from None


def run_locked(spec: dict[str, Any], groups: list[Group], out: Path, pool: Path, executor: ExecutorConfig,
               progress: Any) -> pl.DataFrame:
    """``run_sweep`` for a caller that already holds ``out``'s lock (``reproduce`` writes more into it)."""
    write_spec(spec, out)
    trained, seconds = train_groups(groups, pool, executor, progress, out)
    return finish(spec, groups, trained, out, pool, executor, seconds)


def write_spec(spec: dict[str, Any], out: Path) -> None:
    """``out/spec.json`` (under ``out``'s lock); a different spec already there is refused: one ``out``, one sweep."""
    path = out / "spec.json"
    if path.exists():
        try:
            same = store.read_json(path) == json.loads(json.dumps(spec, default=store.json_default))
        except (OSError, ValueError):
            same = True  # damaged: rewritten below
        if not same:
            raise store.StoreError(f"--out {out}: holds another sweep (its spec.json differs from this spec); "
                                   "choose another --out, or run the same spec to share the work", exit_code=2)
    store.write_json(path, spec)


def train_groups(groups: list[Group], pool: Path, executor: ExecutorConfig, progress: Any, out: Path
                 ) -> tuple[int, float]:
    """Train the groups of ``pool`` not finished yet (each under its own lock); returns how many this call trained
    and the seconds it took. A group another sweep holds is waited for, then found finished."""
    start = time.perf_counter()
    todo = [g for g in groups if not store.finished(pool / g.id)]  # a damaged finished group is set aside: retrained
    todo.sort(key=lambda g: store.busy(pool / g.id))  # another sweep's groups last: by then they are finished
    task = progress.add_task("groups", total=len(groups), completed=len(groups) - len(todo), running=0,
                             left=len(todo)) if progress else None
    # a local worker with automatic cores may grow into the cores other workers leave (the tail of a sweep)
    grow = usable_cores() if executor.kind == "local" and not executor.cpus_per_group else None
    jobs = [(g.id, g.cfg.to_dict(), str(pool.resolve()), cpus_per_group(executor), grow) for g in todo]

    def show(done: int, running: int) -> None:
        if progress:
            progress.update(task, completed=len(groups) - len(todo) + done, running=running,
                            left=len(todo) - done - running)

    here = _follow(run_jobs(train_job, jobs, executor, out, show), todo, pool, executor, progress)
    return here, time.perf_counter() - start


def finish(spec: dict[str, Any], groups: list[Group], trained: int, out: Path, pool: Path,
           executor: ExecutorConfig, seconds: float) -> pl.DataFrame:
    """Collect the groups into ``out/results.parquet`` (under ``out``'s lock), with the sweep's figure and record
    (``seconds``: the training's wall time)."""
    results = collect(groups, pool, tail_steps=spec.get("tail_steps"), at_step=spec.get("at_step"))
    store.write_parquet(out / "results.parquet", results)
    if results.height:  # one row per setting and LR, each number the mean over seeds with its range
        store.write_parquet(out / "settings.parquet", seeds_mod.by_setting(results))
    kinds = loggers.sweep_kinds(groups)
    if kinds and results.height:  # the sweep's LR-vs-loss figure goes where its groups' numbers went
        from ..outputs import plots

        loggers.log_figures(kinds, out, str(spec.get("name") or out.name),
                            plots.lr_vs_loss(results, out / "figures" / "lr_vs_loss", title=out.name))
    store.write_json(out / "sweep.json", {"groups": len(groups), "trained": trained, "executor": executor.kind,
                                          "seconds": round(seconds, 1)})
    return results
def _follow(finished: Any, todo: list[Group], pool: Path, executor: ExecutorConfig, progress: Any) -> int:
    """Drain the executor's finished (group id, trained here) pairs; returns how many this sweep trained (the rest
    another sweep over the same pool did). Tells a ``progress.Lines`` (if that is the progress) which group
    started and finished. Starts are inferred: the executor runs ``parallel`` groups at once, in order, and starts
    the next when one finishes (exact for the local executor, whose pool hands out one job at a time)."""
    lines = progress if hasattr(progress, "group_started") else None
    if lines is None:
        return sum(trained for _, trained in finished)
    from .plan import group_plan

    by_id = {g.id: g for g in todo}
    parallel = {"local": executor.workers, "slurm": executor.slurm_array_parallelism}.get(executor.kind, len(todo))
    lines.set_weights({g.id: group_plan(g.id, g.cfg, g.labels, pool).flops for g in todo}, parallel, pool)
    queue = list(todo)
    for g in queue[:parallel]:
        lines.group_started(g)
    queue = queue[parallel:]
    here = 0
    for gid, trained in finished:
        here += trained
        seconds = GroupSummary.read(pool / gid / "summary.json").seconds
        lines.group_finished(by_id[gid], seconds if trained else None)
        if queue:
            lines.group_started(queue.pop(0))
    return here


def collect(groups: list[Group], pool: Path, tail_steps: int | None = None, at_step: int | None = None) -> pl.DataFrame:
    """The results table (see ``table``) of the finished groups among ``groups``."""
    rows = []
    for g in groups:
        folder = pool / g.id
        if not store.is_done(folder):
            continue
        why = store.damage(folder)
        if why is not None:
            store.set_aside(folder, f"damaged finished group {g.id}: {why}")
            raise StoreError(f"group {g.id} ({', '.join(f'{k}={v}' for k, v in g.labels.items())}): {why}; it was set "
                             "aside and the next run of this command trains it again")
        rows += table.member_rows(g.cfg, g.id, g.labels, folder, tail_steps, at_step)
    return table.frame(rows)
