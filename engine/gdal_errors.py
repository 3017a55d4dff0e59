"""GDAL errors that rasterio does not raise: a dataset's close() flushes its cached blocks, and when that write
fails (a full disk, a file-size limit) GDAL prints "ERROR 1: TIFFAppendToStrip:Write error" and rasterio returns
normally, leaving a raster with missing blocks that reads back as wrong values (issue #29 item 7: exit 0 with a
wrong confidence map). ``close_checked`` closes with GDAL's last-error state reset before and read after, through
the GDAL library rasterio itself loaded."""

from __future__ import annotations

import ctypes
import errno
import glob
import os
import re
from contextlib import contextmanager
from functools import cache
from pathlib import Path

CE_FAILURE = 3


@cache
def _gdal() -> ctypes.CDLL | None:
    """The libgdal rasterio runs on: its bundled copy (wheels), else the one loaded into this process."""
    import rasterio

    candidates = glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*.so*"))
    candidates += glob.glob(os.path.join(os.path.dirname(rasterio.__file__) + ".libs", "libgdal*.dylib"))
    if not candidates and os.path.exists("/proc/self/maps"):
        with open("/proc/self/maps") as maps:
            candidates = sorted({ln.split()[-1] for ln in maps if "/libgdal" in ln and ".so" in ln})
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            lib.CPLGetLastErrorType.restype = ctypes.c_int
            lib.CPLGetLastErrorMsg.restype = ctypes.c_char_p
            return lib
        except (OSError, AttributeError):
            continue
    return None


FULL_BELOW = 16 * 2**20  # free bytes under which a failed write is taken for a full disk (GDAL gives no errno)


def full_disk_error(path, cause: BaseException | str) -> OSError | None:
    """ENOSPC, when the disk holding ``path`` is (nearly) full now, at the failure: the temporaries that filled it
    are removed later, after which the disk no longer looks full."""
    import shutil

    try:
        free = shutil.disk_usage(Path(str(path)).parent).free
    except OSError:
        return None
    if free >= FULL_BELOW:
        return None
    return OSError(errno.ENOSPC, f"No space left on device ({cause})")


@contextmanager
def failures_raised(path):
    """Raise OSError when GDAL reported a failure (that rasterio did not raise) inside the block, e.g. a
    CreateCopy (COG) whose last writes failed."""
    lib = _gdal()
    if lib is not None:
        lib.CPLErrorReset()
    yield
    if lib is not None and lib.CPLGetLastErrorType() >= CE_FAILURE:
        message = (lib.CPLGetLastErrorMsg() or b"").decode("utf-8", "replace").strip()
        lib.CPLErrorReset()
        raise write_failure(path, message)


def write_failure(path, message: str) -> OSError:
    """The error of a write GDAL reported failed: ENOSPC when the disk is full now, else the write named."""
    return full_disk_error(path, message) or OSError(
        f"GDAL could not finish writing {_final_name(path)} ({message or 'no reason given'}): a full disk or a "
        "file-size limit"
    )


def close_checked(dataset, path) -> None:
    """Close a rasterio dataset opened for writing; raise OSError when GDAL failed to write its last blocks."""
    with failures_raised(path):
        dataset.close()


def _final_name(path) -> str:
    """The output a temporary stands for (engine.outputs.OutputSet names them .NAME.PID-HEX.tmp.EXT[.cog])."""
    name = Path(str(path)).name
    m = re.fullmatch(r"\.(.+)\.\d+-[0-9a-f]+\.tmp(\.\w+)(\.cog)?", name)
    return m.group(1) + m.group(2) if m else name
