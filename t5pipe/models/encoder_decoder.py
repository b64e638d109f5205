"""The frame every family shares: the encoder-decoder contract over a family's
pieces, and stacks of layers (scanned or unrolled, with remat).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from t5pipe.models import layers

_CHECKPOINT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_with_no_batch_dims": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


class EncoderDecoder(nn.Module):
    """The `t5pipe.models` contract (encode / decode / teacher-forced `__call__`) over a
    family's pieces: subclasses have a `config` and set up `encoder` and `decoder`
    stacks, `embed_encoder(tokens)`, `embed_decoder(tokens)` and `logits(hidden)`."""

    def encode(self, encoder_input_tokens, encoder_segment_ids=None, enable_dropout=False):
        """tokens [batch, length] -> (encoded [batch, length, embed], segment ids
        [batch, length]; by default 1 on tokens, 0 on padding)."""
        if encoder_segment_ids is None:
            encoder_segment_ids = (encoder_input_tokens != self.config.pad_token_id).astype(
                jnp.int32
            )
        embedded = self.embed_encoder(encoder_input_tokens)
        return self.encoder(embedded, encoder_segment_ids, not enable_dropout), encoder_segment_ids

    def decode(
        self,
        encoded,
        encoder_segment_ids,
        decoder_input_tokens,
        decoder_segment_ids=None,
        enable_dropout=False,
        decode=False,
        max_decode_length=None,
    ):
        """-> logits [batch, length, vocab], float32. With `decode`, the first call
        creates the cache; later ones take one position ([batch, 1])."""
        if decoder_segment_ids is None:
            decoder_segment_ids = jnp.ones(decoder_input_tokens.shape, jnp.int32)
        hidden = self.decoder(
            self.embed_decoder(decoder_input_tokens),
            encoded,
            decoder_segment_ids,
            encoder_segment_ids,
            not enable_dropout,
            decode,
            max_decode_length,
        )
        logits = self.logits(hidden).astype(jnp.float32)
        return layers.constrain(logits, ("batch", "length", "vocab"))

    def __call__(
        self,
        encoder_input_tokens,
        decoder_input_tokens,
        encoder_segment_ids=None,
        decoder_segment_ids=None,
        enable_dropout=False,
    ):
        """Teacher-forced logits [batch, dec_length, vocab], float32."""
        encoded, encoder_segment_ids = self.encode(
            encoder_input_tokens, encoder_segment_ids, enable_dropout
        )
        return self.decode(
            encoded, encoder_segment_ids, decoder_input_tokens, decoder_segment_ids, enable_dropout
        )


def layer_stack(
    layer_cls: type[nn.Module],
    num_layers: int,
    *,
    scan: bool,
    remat_policy: str,
    per_layer: Callable[[int], tuple] = lambda i: (),
    **layer_kwargs,
):
    """-> callable(x, *shared) -> x running `num_layers` layers, scanned or unrolled.

    Layers are built as `layer_cls(**layer_kwargs)` and called `layer(x, *shared,
    *per_layer(i))`: `shared` arrays are the same for every layer, `per_layer(i)` gives
    layer i's own values (e.g. whether it uses a sliding window) — Python values when
    unrolled, stacked into arrays along the scanned axis when scanned. Static options
    (deterministic, decode) are module attributes, so remat traces only arrays.
    """
    if remat_policy != "none":
        layer_cls = nn.remat(
            layer_cls, policy=_CHECKPOINT_POLICIES[remat_policy], prevent_cse=not scan
        )
    if scan:

        def body(layer, carry, shared, own):
            return layer(carry, *shared, *own), None

        rows = [per_layer(i) for i in range(num_layers)]
        own = tuple(jnp.asarray(column) for column in zip(*rows, strict=True))
        scanned = nn.scan(
            body,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, 0),
            length=num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        stacked = layer_cls(**layer_kwargs, name="layers")
        return lambda x, *shared: scanned(stacked, x, shared, own)[0]

    layers = [layer_cls(**layer_kwargs, name=f"layers_{i}") for i in range(num_layers)]

    def run(x, *shared):
        for i, layer in enumerate(layers):
            x = layer(x, *shared, *per_layer(i))
        return x

    return run
