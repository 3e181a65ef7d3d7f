"""Files a run writes, atomically (temp file + rename), so that a crash never leaves half a file behind.
Torch-free: the command line's own files (sweep reports) use it before torch is imported."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dgmrun.errors import DgmrunError


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def os_error_behind(error: BaseException) -> OSError | None:
    """The OSError that caused ``error`` (torch's writer, say, turns a failed write into a RuntimeError)."""
    while error is not None and not isinstance(error, OSError):
        error = error.__cause__ or error.__context__
    return error


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on success it replaces ``path`` in one step.

    A failed write (full disk, read-only directory) leaves ``path`` as it was, removes the temp file and
    raises a DgmrunError naming ``path`` and the OS's reason.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes owner-only files; give the permissions open() would
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        if tmp is not None:
            with contextlib.suppress(OSError):  # a failing unlink must not hide the error that matters
                os.unlink(tmp)
        cause = os_error_behind(error)
        if cause is None or not isinstance(error, Exception):  # a signal (Stopped, KeyboardInterrupt) goes on as it is
            raise
        raise DgmrunError(f"cannot write {path}: {cause.strerror or cause}") from error


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> None:
    with atomic_open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
