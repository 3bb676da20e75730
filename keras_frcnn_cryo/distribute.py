"""tf.distribute for training: which strategy a run uses, and the CPU split that lets it run without a GPU.

``Config.distribute``: "none" (one device, TensorFlow's default strategy), "mirrored"
(tf.distribute.MirroredStrategy over the GPUs of this machine, or over ``Config.cpu_replicas``
logical CPU devices) or "multiworker" (tf.distribute.MultiWorkerMirroredStrategy; the cluster and
this process's task come from the TF_CONFIG environment variable, as TensorFlow documents it).
``Config.batch_size`` images make one step, split evenly across the replicas; each replica's loss
is its images' summed losses divided by the global batch, and the optimiser sums the replicas'
gradients, so a step is the mean over the global batch however it is split.
"""
from __future__ import annotations

import json
import os

from .config import CHOICES, Config, check_choice
from .errors import CryoError

STRATEGIES = CHOICES["distribute"]


def split_cpu(replicas: int) -> list[str]:
    """Split the CPU into ``replicas`` logical devices (names returned). Must run before TensorFlow
    starts its runtime; CryoError if it already has with another split."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:
        existing = tf.config.list_logical_devices("CPU")
        if len(existing) != replicas:
            raise CryoError(f"--cpu-replicas {replicas}: TensorFlow already started with {len(existing)} CPU "
                            "device(s); split the CPU before anything else uses TensorFlow") from None
    return [device.name for device in tf.config.list_logical_devices("CPU")]


def make_strategy(cfg: Config):
    """The tf.distribute.Strategy of ``cfg.distribute`` (see the module docstring); CryoError when it
    cannot be built here (unknown name, no TF_CONFIG for multiworker)."""
    import tensorflow as tf

    if check_choice("distribute", cfg.distribute) == "none":
        return tf.distribute.get_strategy()
    if cfg.distribute == "mirrored":
        if cfg.cpu_replicas:
            return tf.distribute.MirroredStrategy(devices=split_cpu(cfg.cpu_replicas),
                                                  cross_device_ops=tf.distribute.ReductionToOneDevice())
        return tf.distribute.MirroredStrategy()
    if not os.environ.get("TF_CONFIG"):
        raise CryoError("--distribute multiworker needs TF_CONFIG (the cluster and this worker's task) in the "
                        "environment")
    if cfg.cpu_replicas:
        split_cpu(cfg.cpu_replicas)
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief() -> bool:
    """True unless TF_CONFIG names this process a worker other than the chief (worker 0 without a
    "chief" task): only the chief writes weights, config, logs and the resume state."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        spec = json.loads(raw)
        task = spec.get("task", {})
        kind, index = task.get("type", "worker"), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError):
        raise CryoError("TF_CONFIG is not valid JSON with a task {type, index}") from None
    if kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in spec.get("cluster", {})


def per_replica(cfg: Config, replicas: int) -> int:
    """Images each replica takes per step: ``cfg.batch_size / replicas`` (CryoError unless whole)."""
    if cfg.batch_size % replicas:
        raise CryoError(f"--batch-size {cfg.batch_size} does not split evenly over {replicas} replicas")
    return cfg.batch_size // replicas
