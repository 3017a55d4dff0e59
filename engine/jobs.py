"""What every job (land cover, change, tree crowns) shares: messages, progress stages, atomic outputs."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LandSegError, OutputError
from .outputs import OutputSet

ProgressFn = Callable[[float, str], None]


class JsonResult:
    """A job result (a dataclass) as one JSON object; paths become strings. The CLI and the plugin read it."""

    def to_json(self) -> str:
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()})


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
    """Outputs that appear together on commit() or not at all: any failure removes the temporaries, and an
    OSError while writing becomes a one-line OutputError naming the folder."""
    outputs = OutputSet(overwrite)
    try:
        yield outputs
    except BaseException as exc:
        outputs.discard()
        if isinstance(exc, OSError) and not isinstance(exc, LandSegError):
            raise OutputError(f"writing outputs in {where} failed: {exc}") from None
        raise


@contextmanager
def scratch_folder(near: Path) -> Iterator[Path]:
    """A hidden temporary folder for intermediates, next to the outputs (same disk), always removed."""
    Path(near).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".landseg_", dir=near))
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
