"""Runs tests/multi_device/ in a process with 8 simulated CPU devices (XLA_FLAGS must be
set before JAX starts, so those tests cannot share this process's single device)."""

import os
import subprocess
import sys

from testlib import REPO_ROOT


def test_multi_device_tests_pass_on_8_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/multi_device"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(result.stdout[-5000:])
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
