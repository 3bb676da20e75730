"""Shared command-line plumbing: error reporting and seeding."""
from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
from collections.abc import Callable, Sequence

from .errors import CryoError

EXIT_BAD_INPUT = 2


# Lines TensorFlow's C++ runtime prints on import whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21).
_TF_IMPORT_NOISE = ("oneDNN custom operations are on", "All log messages before absl::InitializeLog()",
                    "cpu_feature_guard", "This TensorFlow binary is optimized",
                    "To enable the following instructions", "rebuild TensorFlow with the appropriate")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with their start-up notices filtered out of stderr.

    Everything else TensorFlow prints while importing (a real error, a missing library) is passed on.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if line.strip() and not any(noise in line for noise in _TF_IMPORT_NOISE):
                    print(line, file=sys.stderr)


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
