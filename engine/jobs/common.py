"""What every job (land cover, change, tree crowns) shares: messages, progress stages, atomic outputs."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LandSegError, OutputError
from ..outputs import OutputSet
from ..run_lock import folder_lock

ProgressFn = Callable[[float, str], None]


class JsonResult:
    """A job result (a dataclass) as one JSON object; paths become strings. The CLI and the plugin read it."""

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()})


@dataclass
class MapReport(JsonResult):
    """What a mapping job (land cover, change) reports besides its rasters. Keyword-only, so each result's own
    fields (without defaults) come first."""

    polygons: Path | None = field(kw_only=True)  # None when polygonizing is off (engine.jobs.batch chunks)
    layer: str = field(kw_only=True)
    n_polygons: int = field(kw_only=True)
    device: str = field(kw_only=True)
    device_detail: str = field(default="", kw_only=True)  # runtime.device_detail: "CPU, 8 threads: no usable ..."
    # --precision int8: the copy's agreement with fp32 on held-back tiles and the precision that ran (precision.py)
    precision: dict = field(default_factory=dict, kw_only=True)
    seconds: float = field(kw_only=True)
    messages: list[str] = field(default_factory=list, kw_only=True)
    resampling: dict = field(default_factory=dict, kw_only=True)  # engine.resample.ResamplePlan.as_dict()
    rescaling: dict = field(default_factory=dict, kw_only=True)  # model input -> the stretch (engine.value_range)

    def polygons_line(self) -> str:
        return f"polygons:    {self.polygons} (layer '{self.layer}', {self.n_polygons} features)"


class Messages:
    """Collects a job's messages for its result and forwards each to the caller's notify callback.

    Not a list subclass on purpose: an empty list is falsy, and callers test `if notify:`.
    """

    def __init__(self, notify: Callable[[str], None] | None) -> None:
        self.items: list[str] = []
        self.notify = notify

    def __call__(self, msg: str) -> None:
        self.items.append(msg)
        if self.notify:
            self.notify(msg)


def stage(progress: ProgressFn | None, lo: float, hi: float) -> ProgressFn | None:
    """Map a sub-step's 0..1 progress onto [lo, hi] of the whole job."""
    return (lambda f, m: progress(lo + (hi - lo) * f, m)) if progress else None


@contextmanager
def atomic_outputs(where: Path, overwrite: bool = True) -> Iterator[OutputSet]:
    """Outputs that appear together on commit() or not at all, written by one run at a time (engine.run_lock:
    the folder's lock, stale temporaries of killed runs removed, a folder this run created removed again when
    the run fails). Any failure removes the temporaries; an OSError while writing becomes a one-line OutputError
    naming the folder (and "no space left on device" when that is the cause)."""
    with folder_lock(where):
        outputs = OutputSet(overwrite)
        try:
            yield outputs
        except BaseException as exc:
            # Described before the temporaries are removed: removing them frees the space a full disk lacked
            said = describe_os_error(exc, where) if not isinstance(exc, LandSegError) and _is_io_error(exc) else None
            outputs.discard()
            if said is not None:
                raise OutputError(f"writing outputs in {where} failed: {said}") from None
            raise


def _is_io_error(exc: BaseException) -> bool:
    """OSErrors, and what GDAL/OGR raise through rasterio and fiona while writing (reads are mapped to
    InputError where they happen), e.g. SQLite's "database or disk is full" in a GeoPackage."""
    if isinstance(exc, OSError):
        return True
    module = type(exc).__module__ or ""
    return module.startswith(("fiona", "rasterio", "pyogrio")) or type(exc).__name__.startswith("CPLE_")


def _cannot_write(where: Path, size: int = 1 << 20) -> bool:
    """Is the folder out of space? GDAL's own messages ("Write error at scanline 1344") do not say, so write a
    1 MiB probe (named like a temporary of this process, removed at once) and look at its errno."""
    probe = Path(where) / f".probe.{os.getpid()}-0.tmp.bin"
    try:
        with open(probe, "wb") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        return False
    except OSError as exc:
        return exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    finally:
        probe.unlink(missing_ok=True)


def exception_chain(exc: BaseException, limit: int = 10) -> list[BaseException]:
    """The exception and what it was raised from or during (GDAL's "See previous exception", an ExportError
    carrying the OSError that stopped the write), newest first."""
    chain, e = [], exc
    while e is not None and len(chain) < limit:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def describe_os_error(exc: BaseException, where: Path) -> str:
    """An OSError in words; a full disk (ENOSPC, EFBIG, or GDAL/SQLite's "disk full") is named as such.
    GDAL's errors come chained ("Write failed. See previous exception"): the whole chain is read."""
    chain = exception_chain(exc)
    texts = [str(e) for e in chain]
    full = any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) for e in chain) or any(
        k in t.lower()
        for t in texts
        for k in ("no space left", "disk full", "database or disk is full", "file too large", "disk is full")
    )
    if full or _cannot_write(where):
        try:
            free = shutil.disk_usage(where).free / 2**20
            return f"no space left on device ({free:.0f} MB free in {where})"
        except OSError:
            return "no space left on device"
    useful = [t for t in texts if t and "see previous exception" not in t.lower()]
    return (useful[0] if useful else texts[0]).strip().splitlines()[0]


@contextmanager
def scratch_folder(near: Path) -> Iterator[Path]:
    """A hidden temporary folder for intermediates, next to the outputs (same disk), always removed. Its name
    carries the PID, so a killed run's folder is recognised and removed by the next run (engine.run_lock)."""
    Path(near).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".landseg_{os.getpid()}_", dir=near))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def release_memory() -> None:
    """Return freed memory to the OS between stages (glibc keeps freed heap pages otherwise)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass
