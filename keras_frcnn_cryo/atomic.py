"""Atomic file output: write under a temporary name in the target folder, then rename.

A file that exists under its final name is therefore always complete: an interrupted run, a full
disk or an exception leaves at most a hidden ``.tmp_*`` file, which is removed when possible.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from .errors import CryoError


TMP_PREFIX = ".tmp_"


def remove_stale_temporaries(path: str | os.PathLike) -> list[str]:
    """Delete temporary files that a killed writer of ``path`` left beside it; return their names.

    Only files named like :func:`atomic_path`'s temporaries for this very ``path`` are touched.
    Call it when no other process is writing ``path`` (e.g. at the start of a training run).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    stem, suffix = (base[:base.index(".")], base[base.index("."):]) if "." in base else (base, "")
    removed = []
    if os.path.isdir(directory):
        for name in os.listdir(directory):
            if name.startswith(f"{TMP_PREFIX}{stem}_") and name.endswith(suffix) \
                    and len(name) == len(TMP_PREFIX) + len(stem) + 1 + 8 + len(suffix):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def _default_file_mode() -> int:
    """0o666 less the process umask: the mode open() would give a new file (mkstemp gives 0o600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path`` (same extension); on success rename it to ``path``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise CryoError(f"cannot create folder ({exc.strerror})", directory) from None
    base = os.path.basename(path)
    # keep the full suffix (".weights.h5", ".png") so libraries that look at it still work, and the
    # stem, so a leftover from a killed process says whose it was (see remove_stale_temporaries)
    stem, suffix = (base[:base.index(".")], base[base.index("."):]) if "." in base else (base, "")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{stem}_", suffix=suffix, dir=directory)
    except OSError as exc:
        raise CryoError(f"cannot write ({exc.strerror})", path) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except OSError as exc:
        raise CryoError(f"cannot write ({exc.strerror or exc})", path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def check_output_dir(path: str) -> str:
    """Create ``path`` if needed and make sure it is a writable directory; return it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CryoError(f"cannot create output directory ({exc.strerror})", path) from None
    if not os.access(path, os.W_OK):
        raise CryoError("output directory is not writable", path)
    return path
