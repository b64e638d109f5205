"""Attention kernels with key/value rows shared by several query rows (the beams of one
input reading that input's cross-attention cache once) equal the same kernels on keys
and values repeated per query row."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from t5pipe.attention import dot_product_attention
from t5pipe.models.layers import KeyValue, grouped_attention

INPUTS, BEAMS, HEADS, KV = 2, 3, 4, 8


def _normal(key, shape):
    return jax.random.normal(jax.random.PRNGKey(key), shape, jnp.float32)


@pytest.mark.parametrize("heads_major", [False, True])
@pytest.mark.parametrize("bias_rows", [1, INPUTS * BEAMS])
def test_dot_product_attention_reads_row_r_over_beams(heads_major, bias_rows):
    rows, kv_length = INPUTS * BEAMS, 5
    query = _normal(0, (rows, 1, HEADS, KV))
    kv_shape = (INPUTS, HEADS, kv_length, KV) if heads_major else (INPUTS, kv_length, HEADS, KV)
    key, value = _normal(1, kv_shape), _normal(2, kv_shape)
    bias = _normal(3, (bias_rows, HEADS, 1, kv_length))

    shared = dot_product_attention(query, key, value, bias, kv_heads_major=heads_major)
    repeated = dot_product_attention(
        query,
        jnp.repeat(key, BEAMS, axis=0),
        jnp.repeat(value, BEAMS, axis=0),
        bias,
        kv_heads_major=heads_major,
    )
    assert shared.shape == (rows, 1, HEADS, KV)
    np.testing.assert_allclose(shared, repeated, rtol=1e-6, atol=1e-6)
    # Row r really reads its own input's keys: another input's give another answer.
    swapped = dot_product_attention(query, key[::-1], value[::-1], bias, kv_heads_major=heads_major)
    assert not np.allclose(swapped, shared, atol=1e-3)


def test_dot_product_attention_rejects_rows_that_do_not_divide():
    query = _normal(0, (5, 1, HEADS, KV))
    key = _normal(1, (2, 3, HEADS, KV))
    with pytest.raises(ValueError, match="5 query rows do not share 2"):
        dot_product_attention(query, key, key, jnp.zeros((1, HEADS, 1, 3)))


def test_grouped_attention_with_a_shared_part_equals_repeated():
    rows, kv_heads, self_length, cross_length = INPUTS * BEAMS, 2, 3, 5
    query = _normal(0, (rows, 1, HEADS, KV))
    own = KeyValue(
        _normal(1, (rows, kv_heads, self_length, KV)),
        _normal(2, (rows, kv_heads, self_length, KV)),
        jnp.arange(self_length)[None, None] <= jnp.arange(rows)[:, None, None] % self_length,
        True,
    )
    cross_mask = jnp.ones((rows, 1, cross_length), bool).at[0, 0, -1].set(False)
    cross_key = _normal(3, (INPUTS, cross_length, kv_heads, KV))
    cross_value = _normal(4, (INPUTS, cross_length, kv_heads, KV))
    bias = _normal(5, (rows, HEADS, 1, cross_length))
    options = dict(scale=0.5, logit_cap=3.0)

    shared = grouped_attention(
        query, [own, KeyValue(cross_key, cross_value, cross_mask, False, bias)], **options
    )
    repeat = lambda x: jnp.repeat(x, BEAMS, axis=0)  # noqa: E731
    repeated = grouped_attention(
        query,
        [own, KeyValue(repeat(cross_key), repeat(cross_value), cross_mask, False, bias)],
        **options,
    )
    np.testing.assert_allclose(shared, repeated, rtol=1e-6, atol=1e-6)
