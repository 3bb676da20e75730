"""What the machine offers: CPU model and the instruction-set flags that change TensorFlow's speed
(printed with every benchmark: figures from different CPUs differ several-fold, so compare ratios
measured in one run), and TensorFlow started without its start-up noise.
"""
from __future__ import annotations

import functools
import importlib
import os
import platform
import sys
import tempfile

# CPU features that change TensorFlow's speed on x86 (AVX-512 and its bfloat16 units, AMX tiles)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


@functools.lru_cache(maxsize=1)
def cpu_info() -> tuple[str, frozenset[str]]:
    """(model name, flags) from /proc/cpuinfo; (platform's processor name, no flags) where it is unreadable."""
    model, flags = platform.processor() or platform.machine(), frozenset()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = frozenset(value.split())
    except OSError:
        pass
    return model, flags


def cpu_description() -> str:
    """'<model name>, <n> cores, flags avx2 avx512f ...' (the SPEED_FLAGS present), for logs."""
    model, flags = cpu_info()
    shown = " ".join(f for f in SPEED_FLAGS if f in flags) or "none of " + " ".join(SPEED_FLAGS)
    return f"{model}, {os.cpu_count()} cores, flags {shown}"


# Lines TensorFlow's C++ runtime prints on import whatever TF_CPP_MIN_LOG_LEVEL says (TF 2.21).
_TF_IMPORT_NOISE = ("oneDNN custom operations are on", "All log messages before absl::InitializeLog()",
                    "cpu_feature_guard", "This TensorFlow binary is optimized",
                    "To enable the following instructions", "rebuild TensorFlow with the appropriate")
_TF_NO_GPU_NOTICES = ("Could not find cuda drivers", "failed call to cuInit")


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and Keras with their start-up notices filtered out of stderr.

    The GPU platform is probed inside the same filter: on a machine without a CUDA driver TensorFlow
    logs two "Could not find cuda drivers" notices and a "failed call to cuInit" CUDA error, which
    become one plain line saying the CPU is used. Everything else TensorFlow prints while importing
    (a real error, a missing library) is passed on.
    """
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    gpus: list = []
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            importlib.import_module("keras")
            import tensorflow
            gpus = tensorflow.config.list_physical_devices("GPU")
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            no_driver = False
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if any(notice in line for notice in _TF_NO_GPU_NOTICES):
                    no_driver = True
                elif line.strip() and not any(noise in line for noise in _TF_IMPORT_NOISE):
                    print(line, file=sys.stderr)
            if no_driver and not gpus:
                print("TensorFlow found no CUDA driver: running on the CPU", file=sys.stderr)
