"""Train several benchmark models at once, one process each, the CPU cores shared between them.

Used by accuracy_synthetic.py (with / without preprocessing) and accuracy_real_em.py (paper /
fitted anchors): each variant is the same script run again with ``--train-only VARIANT`` and
``--threads N``; every process gets ``os.cpu_count() // jobs`` TensorFlow threads. Each model then
trains for the same wall-time budget on its share of the machine, so the variants are compared at
equal compute, and two 60-minute trainings take 60 minutes, not 120.
"""
from __future__ import annotations

import os
import subprocess
import sys

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
