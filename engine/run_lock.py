"""One run per output folder, and no litter from runs that were killed.

A run takes ``<folder>/.landseg.lock`` (created exclusively, holding its PID and host) for as long as it writes
there; a second run into the same folder stops with a one-line error naming the first one's PID. Every
temporary a run writes carries its PID in its name (``.<stem>.<pid>-<random>.tmp.<ext>``, scratch folders
``.landseg_<pid>_<random>``), so when a run was killed (``kill -9``, a power cut) the next run into the folder
recognises the dead PID's files and removes them, and a lock left by a dead process is taken over.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError

LOCK_NAME = ".landseg.lock"
# Temporaries (outputs.OutputSet.temp_for, jobs.scratch_folder): the PID is the first number after the prefix.
_TEMP = re.compile(r"^\.(?:landseg_(\d+)_|.+\.(\d+)-[0-9a-f]+\.tmp\.)")


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would send Ctrl-C there: assume alive (the lock names its file)
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    return not _ended(pid)


def _ended(pid: int) -> bool:
    """Whether `pid`, which kill(pid, 0) still found, has ended but not been reaped, or has just gone. A killed
    run's worker processes are left to PID 1, and a container's PID 1 may reap late or never: until then the
    zombie still answers kill(pid, 0), though it holds and writes nothing (seen in CI: a killed batch's worker, a
    zombie for seconds, kept its folder locked from the rerun that was to resume it). psutil is imported here
    only: a lock or temporary of another live PID is rare, and its import costs every run's start 16 ms."""
    import psutil

    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:  # not allowed to look: it exists
        return False


def remove_stale(folder: Path) -> list[Path]:
    """Remove temporaries left by processes of this host that no longer run; returns what was removed."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        if not m:
            continue
        pid = int(m.group(1) or m.group(2))
        if pid_alive(pid):
            continue
        try:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _read_lock(lock: Path) -> tuple[int, str]:
    try:
        pid_s, _, host = lock.read_text().partition(" ")
        return int(pid_s), host.strip()
    except (OSError, ValueError):
        return -1, ""


@contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """Hold the folder's lock; a folder this run had to create is removed again if the run leaves it empty."""
    folder = Path(folder)
    created = []  # the folders mkdir will create, deepest first
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror}") from None
    lock = folder / LOCK_NAME
    me = f"{os.getpid()} {socket.gethostname()}"
    for _attempt in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            pid, host = _read_lock(lock)
            if host == socket.gethostname() and pid > 0 and not pid_alive(pid):
                lock.unlink(missing_ok=True)  # left by a run that was killed: take it over
                continue
            raise OutputError(
                f"output folder {folder} is in use by another LandSeg run (PID {pid} on {host or '?'}); wait for "
                f"it to finish or choose another output folder (if no such run exists, delete {lock})"
            ) from None
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise OutputError(f"output folder is not writable: {folder}") from None
            raise OutputError(f"cannot lock output folder {folder}: {exc.strerror}") from None
    else:
        raise OutputError(f"cannot lock output folder {folder}: delete {lock}")
    try:
        os.write(fd, me.encode())
    finally:
        os.close(fd)
    remove_stale(folder)
    try:
        yield
    finally:
        if _read_lock(lock)[0] == os.getpid():
            lock.unlink(missing_ok=True)
        for d in created:  # deepest first; stops at the first that holds something
            try:
                d.rmdir()
            except OSError:
                break
