"""What the machine offers: CPU model and the instruction-set flags that change TensorFlow's speed.

Printed with every benchmark (figures from different CPUs differ several-fold: compare ratios
measured in one run).
"""
from __future__ import annotations

import functools
import os
import platform

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
