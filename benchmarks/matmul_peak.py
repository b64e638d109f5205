"""The backend's own matmul ceiling, measured once: the denominator of MFU where no
vendor figure applies (CPU), and a sanity check of the vendor figure elsewhere.

One square matmul on the default device: on CPU that uses every core (XLA's CPU
backend runs a device on all threads), on an accelerator it is one chip. float32 on
CPU, bfloat16 on accelerators (their fast path).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from benchmarks.measure import summarize, time_calls


def measure_matmul_peak(size: int | None = None, repeats: int = 5) -> dict:
    """FLOP/s of the best of `repeats` [size, size] x [size, size] matmuls (2 * size**3 FLOPs).

    size: default 2048 on CPU (~17 GFLOP, a fraction of a second), 8192 on accelerators.
    """
    device = jax.devices()[0]
    on_cpu = device.platform == "cpu"
    size = size or (2048 if on_cpu else 8192)
    dtype = jnp.float32 if on_cpu else jnp.bfloat16
    keys = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(keys[0], (size, size), dtype)
    b = jax.random.normal(keys[1], (size, size), dtype)
    matmul = jax.jit(lambda x, y: jnp.matmul(x, y, preferred_element_type=dtype))
    jax.block_until_ready(matmul(a, b))  # compile and warm up
    seconds = time_calls(lambda: matmul(a, b), repeats)
    flops = 2.0 * size**3
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "dtype": jnp.dtype(dtype).name,
        "size": size,
        "flops_per_second": flops / min(seconds),
        **summarize(seconds),
    }
