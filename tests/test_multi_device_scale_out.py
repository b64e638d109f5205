"""The scale-out half of tests/multi_device/ (losses and parameters equal across mesh
layouts, for T5, a GQA family and LoRA) on 8 simulated CPU devices, in a process of
their own."""

from testlib import run_on_8_devices


def test_scale_out_tests_pass_on_8_devices():
    run_on_8_devices("scale_out")
