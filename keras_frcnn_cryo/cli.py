"""Shared command-line plumbing: error reporting and seeding."""
from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Callable, Sequence

from .errors import CryoError

EXIT_BAD_INPUT = 2


def run_cli(main: Callable[[argparse.Namespace], int | None], parser: argparse.ArgumentParser,
            argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and call ``main``; bad input becomes one ``error:`` line and exit status 2.

    ``--debug`` (added here to every command) keeps the traceback instead.
    """
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    args = parser.parse_args(argv)
    try:
        result = main(args)
    except CryoError as exc:
        if args.debug:
            raise
        _close_progress_bars()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _close_progress_bars()
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


def _close_progress_bars() -> None:
    """Close the tqdm bars an exception left open, so that the message starts a line of its own
    (an open bar ends in a carriage return, not a newline)."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def set_seed(seed: int) -> None:
    """One seed for python, numpy and TensorFlow (and hash-based ordering in subprocesses)."""
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    import numpy as np
    np.random.seed(seed)
    import keras
    keras.utils.set_random_seed(seed)
