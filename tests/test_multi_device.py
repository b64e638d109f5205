"""tests/multi_device/ (mesh layouts, two processes) on 8 simulated CPU devices, in a
process of their own; the scale-out half runs from test_multi_device_scale_out.py."""

from testlib import MULTI_DEVICE_GROUPS, REPO_ROOT, run_on_8_devices


def test_every_multi_device_file_is_in_exactly_one_group():
    grouped = [name for names in MULTI_DEVICE_GROUPS.values() for name in names]
    on_disk = sorted(p.name for p in (REPO_ROOT / "tests" / "multi_device").glob("test_*.py"))
    assert sorted(grouped) == on_disk
    assert len(grouped) == len(set(grouped))


def test_process_and_partitioning_tests_pass_on_8_devices():
    run_on_8_devices("processes")
