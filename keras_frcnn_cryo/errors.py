"""User-facing errors.

Every problem caused by the user's input (a file, a flag, a line of an annotation file) is raised as
:class:`CryoError` with a one-line message that names the file (and line) and the problem. The
command-line entry points catch it, print ``error: <message>`` and exit with status 2; anything else
is a bug and keeps its traceback.
"""
from __future__ import annotations

import math
import os


class CryoError(Exception):
    """Bad input: a one-line, user-readable message naming the file and the problem."""

    def __init__(self, message: str, path: str | os.PathLike | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = str(path)
            if line is not None:
                where += f":{line}"
            where += ": "
        super().__init__(f"{where}{message}")
        self.path = None if path is None else str(path)
        self.line = line


def parse_float(text: str, what: str, source: str | os.PathLike, line: int | None = None) -> float:
    """``float(text)``, or CryoError naming ``source:line`` and ``what`` if it is not a finite number."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise CryoError(f"{what} is not a number: {text!r}", source, line) from None
    if not math.isfinite(value):
        raise CryoError(f"{what} is not a finite number: {text!r}", source, line)
    return value
