"""Decoding speed of t5pipe (`t5pipe.decoding`, key/value cache): greedy and beam search.

A random model could end a row at any step by emitting EOS, and the loop stops when
every row has ended, so timings would depend on luck. `without_eos` zeroes the
output layer's EOS column: the EOS logit is then 0 while the best of 32k other
logits is several units above it, so no row ever ends and every method runs to
`max_decode_length`. The Hugging Face side gets the same weights, so both decode
the same number of positions.

Decode tokens/second counts the positions of the returned sequence per input:
batch * max_decode_length / seconds (beam search does num_beams times the model
work per token; that is the method's cost, and both sides pay it).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.measure import compile_log, summarize, time_calls
from t5pipe import partitioning
from t5pipe.decoding import DecodingOptions, make_decode_fn
from t5pipe.model_config import T5Config


def without_eos(params, config: T5Config):
    """The same parameters with the output weights of the EOS token set to zero."""
    eos = config.eos_token_id
    if config.tie_word_embeddings:
        table = params["token_embedder"]["embedding"]
        return {**params, "token_embedder": {"embedding": table.at[eos].set(0.0)}}
    kernel = params["logits_dense"]["kernel"]
    return {**params, "logits_dense": {"kernel": kernel.at[:, eos].set(0.0)}}


def random_inputs(config: T5Config, batch_size: int, input_length: int, seed: int = 7):
    """Encoder tokens int32 [batch, input_length]: random ids, every position real."""
    rng = np.random.default_rng(seed)
    return rng.integers(2, config.vocab_size, (batch_size, input_length), dtype=np.int32)


def measure_decode(
    config: T5Config,
    params,
    inputs: np.ndarray,
    *,
    method: str,
    num_beams: int,
    max_decode_length: int,
    repeats: int,
    mesh,
    rules,
) -> tuple[dict, np.ndarray]:
    """Times `repeats` decodes of `inputs` [batch, input_length] after one compiling call.

    -> (figures, best decoded tokens int32 [batch, max_decode_length]).
    """
    options = DecodingOptions(
        method=method, max_decode_length=max_decode_length, num_beams=num_beams
    )
    decode = make_decode_fn(config, options, mesh, rules)
    tokens = jax.device_put(jnp.asarray(inputs), partitioning.batch_sharding(mesh, rules))
    with compile_log() as log:
        first = time_calls(lambda: decode(params, tokens), 1)[0]
        first_compilations = sum(log.compilations.values())
        seconds = time_calls(lambda: decode(params, tokens), repeats)
        recompilations = sum(log.compilations.values()) - first_compilations
    decodes = decode(params, tokens)
    best = np.asarray(decodes.tokens[:, 0])
    median = summarize(seconds)["median_s"]
    generated = inputs.shape[0] * max_decode_length
    return {
        "method": method,
        "num_beams": num_beams if method == "beam" else 1,
        "max_decode_length": max_decode_length,
        "time": summarize(seconds),
        "first_call_s": first,
        "compile_s": sum(log.seconds.values()),
        "recompilations": recompilations,  # compilations after the first call: should be 0
        "tokens_per_second": generated / median,
        "rows_ended_early": int(np.sum(np.any(best == config.eos_token_id, axis=1))),
    }, best
