"""The run store: one writer per run directory, results that a reader sees whole or not at all, damaged files
named and set aside (never silently trusted, never silently deleted), and a full disk reported as such.

Layout of a group directory ``DIR``:

- ``DIR/.lock``: held (``fcntl.lockf``, a POSIX lock that NFS honours and the kernel releases when its process
  dies) by the one process writing ``DIR``; it holds that process's pid, host and start time, for the message a
  second writer gets.
- ``DIR/checkpoint/state.pt`` (and the one before it, ``state.prev.pt``) while the group trains, plus
  ``progress.json`` (the step it resumes from, for plans).
- ``DIR/config.json``, ``DIR/metrics.parquet``, ``DIR/summary.json``, then ``DIR/DONE``: written only when the group
  has finished, each to a temporary name and renamed into place; ``DONE`` comes last and records the run's id and
  the SHA-256 of each result file, so a reader that finds ``DONE`` verifies what it reads.

A damaged file is renamed ``NAME.damaged-<time>`` (a damaged finished group: the whole directory, to
``DIR.damaged-<time>``) with a one-line warning, and the run starts again from what is still good.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


DONE = "DONE"
CHECKPOINT = "checkpoint"
PROGRESS = "progress.json"
LOCK = ".lock"
RESULTS = ("config.json", "metrics.parquet", "summary.json")
"""The files of a finished group, verified against the hashes in DONE."""


class StoreError(Exception):
    """A run-store problem, reported in one line: ``exit_code`` 2 when the user must change something (a busy
    or misnamed directory), 1 when the machine did (a full disk, a damaged finished group)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def warn(message: str) -> None:
    """A one-line warning on stderr (the store's only output)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---- writing: atomic, and a full disk said as such ---------------------------------------------------------

def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _out_of_space(err: BaseException, path: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err).lower()
    if "no space left" in text or "file write failed" in text:  # torch.save's zip writer hides the errno
        return True
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False


@contextlib.contextmanager
def writing(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it into place, on failure remove it and turn a
    full disk into a one-line StoreError naming ``path``."""
    tmp = _tmp(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, (OSError, RuntimeError)) and _out_of_space(err, path):
            raise StoreError(f"{path}: no space left on device; free some space and rerun the same command "
                             "(it resumes from the last good checkpoint)") from None
        raise


def write_atomic(path: Path, data: bytes) -> None:
    with writing(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2, default=json_default) + "\n").encode())


def json_default(x: Any) -> Any:
    """How ``write_json`` writes numpy/torch scalars (their ``item()``)."""
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_parquet(path: Path, frame: Any) -> None:
    with writing(path) as tmp:
        frame.write_parquet(tmp)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---- one writer per directory --------------------------------------------------------------------------------

def check_dir(out: Path, flag: str = "--out") -> None:
    """A run directory must be a directory, or one that can be created: every way it cannot (a file there or
    above it, a dangling symlink, a name too long, a read-only or unwritable place) is one StoreError (exit 2)
    naming ``flag`` and the path, before anything is written."""
    out = Path(out)
    existing = out.absolute()
    while not _lexists(existing):  # the nearest ancestor that exists: where the directory would be created
        existing = existing.parent
    try:
        name_max = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, AttributeError, ValueError):  # a dangling symlink (named below), or no pathconf here
        name_max = 255
    long = next((part for part in out.parts if len(os.fsencode(part)) > name_max), None)
    if long is not None:  # first: stat() of such a path fails itself
        raise StoreError(f"{flag} {str(out)[:60]}...: the name {long[:20]}... is {len(os.fsencode(long))} bytes, "
                         f"over this filesystem's {name_max}; choose a shorter name", exit_code=2)
    if existing.is_symlink() and not existing.exists():
        raise StoreError(f"{flag} {out}: {existing} is a symlink to {os.readlink(existing)}, which does not exist; "
                         "create its target or choose another directory", exit_code=2)
    if existing == out.absolute() and not existing.is_dir():
        raise StoreError(f"{flag} {out}: is a file, not a directory; choose a directory", exit_code=2)
    if not existing.is_dir():
        raise StoreError(f"{flag} {out}: {existing} is a file, so no directory can be made under it; choose a "
                         "directory", exit_code=2)
    if hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY:
        raise StoreError(f"{flag} {out}: {existing} is on a read-only filesystem; choose a writable directory",
                         exit_code=2)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise StoreError(f"{flag} {out}: {existing} is not writable by this user; choose a writable directory",
                         exit_code=2)


def _lexists(path: Path) -> bool:
    """Whether anything (a dangling symlink included) is at ``path``; False also when the name cannot be stat'ed."""
    try:
        os.lstat(path)
        return True
    except OSError:
        return False


def busy(out: Path) -> bool:
    """Whether another process holds ``out``'s writer lock now (a glance, for ordering work: it may change at once)."""
    if not (out / LOCK).exists():
        return False
    try:
        fd = os.open(out / LOCK, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


@contextlib.contextmanager
def lock(out: Path, wait: bool = False) -> Iterator[None]:
    """Hold ``out``'s writer lock: the only process writing ``out`` while it lasts. A second writer waits
    (``wait``) or gets a StoreError (exit 2) naming the holder. Leftover temporary files of a dead writer are
    removed once the lock is held."""
    check_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a race or a case check_dir cannot see (a full disk, a quota): still one line
        raise StoreError(f"--out {out}: cannot create the directory ({err.strerror})", exit_code=2) from None
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as err:
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise StoreError(f"--out {out}: being written by {holder}; wait for it to finish, or choose another "
                             "--out", exit_code=2) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        for stale in [*out.glob(".*.tmp*"), *(out / CHECKPOINT).glob(".*.tmp*")]:
            stale.unlink(missing_ok=True)  # a dead writer's half-written file: never anyone's result
        yield
    finally:
        os.close(fd)  # closing releases the lock


# ---- finished groups: all or nothing, verified ----------------------------------------------------------------

def finish(out: Path, run_id: str, config: dict[str, Any], metrics: Any, summary: dict[str, Any]) -> None:
    """Write a finished group's results, then DONE with their hashes (the moment the group counts as finished)."""
    write_json(out / "config.json", config)
    write_parquet(out / "metrics.parquet", metrics)
    write_json(out / "summary.json", summary)
    write_json(out / DONE, {"run_id": run_id, "sha256": {name: sha256(out / name) for name in RESULTS}})


def is_done(out: Path) -> bool:
    """Whether ``out`` claims to hold a finished group (cheap; ``finished`` verifies it)."""
    return (out / DONE).exists()


def damage(out: Path) -> str | None:
    """What is wrong with the finished group in ``out`` (a file missing, unreadable or not what DONE recorded),
    or None when it is whole."""
    try:
        done = read_json(out / DONE) if (out / DONE).stat().st_size else {}  # legacy DONE: empty, no hashes
    except (OSError, ValueError) as err:
        return f"{out / DONE}: unreadable ({err.__class__.__name__})"
    recorded = done.get("sha256", {}) if isinstance(done, dict) else {}
    for name in RESULTS:
        path = out / name
        if not path.exists():
            return f"{path}: missing"
        if name in recorded and sha256(path) != recorded[name]:
            return f"{path}: does not match the hash recorded when the group finished"
    if not recorded:  # a legacy group: at least every file must parse
        try:
            read_json(out / "config.json")
            read_json(out / "summary.json")
            import polars as pl

            pl.read_parquet(out / "metrics.parquet")
        except Exception as err:  # noqa: BLE001 - any parse failure means damaged
            return f"{out}: a result file does not parse ({err.__class__.__name__})"
    return None


def set_aside(path: Path, why: str) -> Path:
    """Rename a damaged file or directory to ``NAME.damaged-<time>`` (kept for inspection) and warn."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while target.exists():
        target, n = path.with_name(f"{path.name}.damaged-{stamp}-{n}"), n + 1
    os.replace(path, target)
    warn(f"{why}; set aside as {target.name}")
    return target


def finished(out: Path) -> bool:
    """Whether ``out`` holds a whole finished group. A damaged one is set aside (so it will be trained again)."""
    if not is_done(out):
        return False
    why = damage(out)
    if why is None:
        return True
    set_aside(out, f"damaged finished group {why}")
    return False


# ---- checkpoints ------------------------------------------------------------------------------------------------

def save_checkpoint(out: Path, state: dict[str, Any]) -> None:
    """Write ``state`` (tensors, numbers, strings, lists, dicts only) as DIR/checkpoint/state.pt, atomically; the
    previous one is kept as state.prev.pt, to fall back on if the newest turns out damaged."""
    ckpt = out / CHECKPOINT
    ckpt.mkdir(parents=True, exist_ok=True)
    with writing(ckpt / "state.new.pt") as tmp:
        import torch  # here, not at the top (load_checkpoint)

        torch.save(state, tmp)
    if (ckpt / "state.pt").exists():
        os.replace(ckpt / "state.pt", ckpt / "state.prev.pt")
    os.replace(ckpt / "state.new.pt", ckpt / "state.pt")
    if "next_step" in state:  # a small sidecar, so a plan can say how far a group got without loading its tensors
        write_json(ckpt / PROGRESS, {"next_step": int(state["next_step"])})


def checkpoint_step(out: Path) -> int | None:
    """The step an unfinished group resumes from, or None when it has no checkpoint (0 when it has one of
    unknown progress)."""
    ckpt = out / CHECKPOINT
    if not any((ckpt / name).exists() for name in ("state.pt", "state.prev.pt", "state.new.pt")):
        return None
    try:
        return int(read_json(ckpt / PROGRESS)["next_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def load_checkpoint(out: Path, device: torch.device) -> dict[str, Any] | None:
    """The newest checkpoint that loads, or None. A damaged one is set aside with a warning and the one before it
    is tried (then a fresh start)."""
    import torch  # here, not at the top: list, report and --help never import torch

    ckpt = out / CHECKPOINT
    # state.new.pt is left only by a writer that died between its last two renames: complete, and the newest
    for name in ("state.new.pt", "state.pt", "state.prev.pt"):
        path = ckpt / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location=device, weights_only=True)  # weights_only: never unpickle code
            if not isinstance(state, dict) or not {"config", "flat", "next_step"} <= set(state):
                raise ValueError("not a proxyscale checkpoint")
            return state
        except Exception as err:  # noqa: BLE001 - any failure to load means damaged: set aside, fall back
            set_aside(path, f"damaged checkpoint {path} ({err.__class__.__name__})")
    return None


def clear_checkpoint(out: Path) -> None:
    """Remove a finished group's checkpoints; damaged files set aside stay (never silently deleted)."""
    ckpt = out / CHECKPOINT
    for name in ("state.pt", "state.prev.pt", "state.new.pt", PROGRESS):
        (ckpt / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        ckpt.rmdir()  # only when nothing set aside is left in it
