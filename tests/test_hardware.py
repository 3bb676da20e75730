"""hardware: the CPU description every benchmark prints (the CPU stood in for, so the test does not
depend on this machine), and what TensorFlow's start prints on stderr."""
import os
import subprocess
import sys

from keras_frcnn_cryo import hardware

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_description_names_the_speed_flags_present(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Test CPU", frozenset("fpu sse2 avx2 avx512f amx_bf16 amx_tile".split())))
    text = hardware.cpu_description()
    assert text.startswith("Test CPU, ") and text.endswith("flags avx2 avx512f amx_tile amx_bf16")
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Test CPU", frozenset({"fpu", "sse2"})))
    assert "none of avx2" in hardware.cpu_description()


def test_cpu_info_reads_this_machine():
    model, flags = hardware.cpu_info()
    assert isinstance(model, str) and model and isinstance(flags, frozenset)


def test_tensorflow_start_up_leaves_no_cuda_noise_on_stderr():
    """Importing the model (as every command does) in a fresh process: TensorFlow's start-up notices
    and, without a CUDA driver, its "failed call to cuInit" error become at most one plain line."""
    code = ("from keras_frcnn_cryo import model\n"
            "import tensorflow as tf\n"
            "print(len(tf.config.list_physical_devices('GPU')))\n")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    for noise in ("cuInit", "Could not find cuda drivers", "cpu_feature_guard", "oneDNN custom operations"):
        assert not any(noise in ln for ln in lines), run.stderr[-2000:]
    if run.stdout.strip() == "0":        # no GPU: at most the one line saying the CPU is used
        assert lines in ([], ["TensorFlow found no CUDA driver: running on the CPU"]), lines
