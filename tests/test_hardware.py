"""hardware: the CPU description every benchmark prints (the CPU stood in for, so the test does not
depend on this machine)."""
from keras_frcnn_cryo import hardware


def test_cpu_description_names_the_speed_flags_present(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Test CPU", frozenset("fpu sse2 avx2 avx512f amx_bf16 amx_tile".split())))
    text = hardware.cpu_description()
    assert text.startswith("Test CPU, ") and text.endswith("flags avx2 avx512f amx_tile amx_bf16")
    monkeypatch.setattr(hardware, "cpu_info", lambda: ("Test CPU", frozenset({"fpu", "sse2"})))
    assert "none of avx2" in hardware.cpu_description()


def test_cpu_info_reads_this_machine():
    model, flags = hardware.cpu_info()
    assert isinstance(model, str) and model and isinstance(flags, frozenset)
