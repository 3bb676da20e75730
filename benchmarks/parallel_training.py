"""Train several benchmark models at once, one process each, the CPU cores shared between them.

Used by accuracy_synthetic.py (with / without preprocessing) and accuracy_real_em.py (paper /
fitted anchors): each variant is the same script run again with ``--train-only VARIANT`` and
``--threads N``; every process gets ``os.cpu_count() // jobs`` TensorFlow threads. Each model then
trains for the same wall-time budget on its share of the machine, so the variants are compared at
equal compute, and two 60-minute trainings take 60 minutes, not 120.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

# CPU features that change TensorFlow's speed on x86 (AVX-512 and its bfloat16 units, AMX tiles)
_SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_description() -> str:
    """'<model name>, <n> cores, flags avx2 avx512f ...' from /proc/cpuinfo (best effort), for benchmark logs."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    shown = " ".join(f for f in _SPEED_FLAGS if f in flags) or "none of " + " ".join(_SPEED_FLAGS)
    return f"{model}, {os.cpu_count()} cores, flags {shown}"


def limit_threads(threads: int) -> None:
    """Give TensorFlow ``threads`` intra-op threads and one inter-op thread; call before any op runs."""
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)


def run_variants(script: str, argv: list[str], variants: list[str], jobs: int) -> None:
    """Run ``script argv --train-only V --threads T`` for every variant V, ``jobs`` at a time.

    Output of each child goes to its terminal as it comes (lines prefixed by tqdm's own bars);
    a child failing stops the benchmark with its exit status.
    """
    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = list(variants)
    running: list[tuple[str, subprocess.Popen]] = []
    while pending or running:
        while pending and len(running) < jobs:
            variant = pending.pop(0)
            cmd = [sys.executable, script, *argv, "--train-only", variant, "--threads", str(threads)]
            print(f"training {variant} in its own process with {threads} thread(s)", flush=True)
            running.append((variant, subprocess.Popen(cmd)))
        variant, proc = running.pop(0)
        if proc.wait() != 0:
            for _, other in running:
                other.terminate()
            sys.exit(f"error: training of {variant} failed (exit {proc.returncode})")
