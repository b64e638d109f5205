"""`t5pipe.projection`: the 2-D matmul form and its bfloat16 path (float32 accumulation,
one rounding) against plain einsums, forward and gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pipe import projection


def _operands(dtype, seed=0):
    keys = jax.random.split(jax.random.key(seed), 3)
    x = jax.random.normal(keys[0], (3, 5, 16), jnp.float32)
    kernel = jax.random.normal(keys[1], (16, 4, 6), jnp.float32) * 0.25
    cotangent = jax.random.normal(keys[2], (3, 5, 4, 6), jnp.float32)
    return x.astype(dtype), kernel.astype(dtype), cotangent


def _reference(x, kernel):
    """The einsum in float32, rounded to the operands' dtype once."""
    out = jnp.einsum("ble,ehd->blhd", x.astype(jnp.float32), kernel.astype(jnp.float32))
    return out.astype(x.dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_is_the_einsum_rounded_once(dtype):
    x, kernel, _ = _operands(dtype)
    out = projection._project("ble,ehd->blhd", x, kernel)
    assert out.dtype == dtype and out.shape == (3, 5, 4, 6)
    expected = _reference(x, kernel)
    np.testing.assert_allclose(
        np.asarray(out, np.float32), np.asarray(expected, np.float32), rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gradient_matches_autodiff_of_the_float32_expression(dtype):
    """The custom bfloat16 gradient (cotangent in bfloat16, float32 accumulation) agrees
    with the float32 gradient to bfloat16's precision; float32 is autodiff itself."""
    x, kernel, cotangent = _operands(dtype, seed=1)

    def loss(fn, x, kernel):
        return jnp.sum(fn(x, kernel).astype(jnp.float32) * cotangent)

    ours = jax.grad(
        lambda x, k: loss(lambda a, b: projection._project("ble,ehd->blhd", a, b), x, k),
        argnums=(0, 1),
    )(x, kernel)
    x32, kernel32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
    exact = jax.grad(lambda x, k: loss(_reference, x, k), argnums=(0, 1))(x32, kernel32)
    tolerance = 1e-6 if dtype == jnp.float32 else 2e-2
    for got, want in zip(ours, exact, strict=True):
        assert got.dtype == dtype
        got, want = np.asarray(got, np.float32), np.asarray(want)
        assert np.max(np.abs(got - want)) <= tolerance * np.max(np.abs(want))


def test_dot_general_for_flax_layers_matches_lax():
    keys = jax.random.split(jax.random.key(2), 2)
    x = jax.random.normal(keys[0], (2, 3, 8)).astype(jnp.bfloat16)
    w = jax.random.normal(keys[1], (8, 10)).astype(jnp.bfloat16)
    dims = (((2,), (0,)), ((), ()))
    out = projection.dot_general(x, w, dims)
    expected = jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)
    assert out.dtype == jnp.bfloat16 and out.shape == (2, 3, 10)
    np.testing.assert_allclose(
        np.asarray(out, np.float32),
        np.asarray(expected.astype(jnp.bfloat16), np.float32),
        rtol=0,
        atol=1e-6,
    )
    # A layout it does not flatten (contracting the first axis) goes to lax as is.
    other = projection.dot_general(w, w, (((0,), (0,)), ((), ())))
    w32 = w.astype(jnp.float32)
    expected_other = np.asarray((w32.T @ w32).astype(jnp.bfloat16), np.float32)
    np.testing.assert_allclose(np.asarray(other, np.float32), expected_other, rtol=1e-2)
