"""BATCH_SIZE must split evenly over the data-parallel devices (8 here), and an API
batch is rounded up to do so."""

import jax
from testlib import train_error

from t5pipe import api


def test_batch_size_not_divisible_by_devices(model_dir, capsys):
    message = train_error(model_dir, "--gin.BATCH_SIZE=12", capsys=capsys)
    assert "BATCH_SIZE=12 does not divide evenly over the data-parallel devices" in message
    assert f"({jax.device_count()})" in message


def test_api_batch_is_rounded_up_to_the_devices(byte_checkpoint):
    model = api.load(byte_checkpoint[0], batch_size=3)
    assert model.batch_size == 8  # rounded up to split evenly over the 8 test devices
