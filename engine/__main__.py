import atexit
import os
import sys

from .cli import main

_returned: list[int] = []  # main's exit status, once it has returned


def _exit_now() -> None:
    """The last exit handler (atexit runs them in reverse order): non-daemon threads are joined and every other
    handler has run; what is left of the interpreter's shutdown is freeing each module and onnxruntime's and
    GDAL's static state, 0.1 s of every job, with every output already closed and committed: skipped. When main
    did not return (argparse's own exit, an escaped exception) Python ends as it always does."""
    if not _returned:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said on it
            pass
    os._exit(_returned[0])


atexit.register(_exit_now)
_returned.append(main())
sys.exit(_returned[0])
