"""Tests on 8 simulated CPU devices. They run in a process of their own
(tests/test_multi_device.py starts it), since JAX fixes the device count at start;
`pytest tests/multi_device` runs them directly."""

import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
