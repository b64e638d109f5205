"""Autoregressive decoding with the key/value cache: greedy, beam search, sampling.

Every method runs as one `lax.while_loop` under `jax.jit` and stops as soon as
every sequence of the batch has ended (or `max_decode_length` is reached).
The decoder cache is created once per batch from the encoder output
(`decode(..., decode=True)` of the config's model family, see `t5pipe.models`), then
each step feeds one token per row.

Results are `Decodes` (a NamedTuple, so a pytree):
    tokens     int32 [batch, num_decodes, max_decode_length]  (no start token;
               0-padded after the EOS, which is kept)
    scores     float32 [batch, num_decodes]  what the method ranks by (beam:
               log-probability / t5x brevity penalty; otherwise = log_probs)
    log_probs  float32 [batch, num_decodes]  sum of the model's token log-probs
Decodes of one input are sorted best first.

Beam search follows the classic algorithm (as in Hugging Face's `generate`
with `early_stopping="never"`): each step keeps the 2*num_beams best
continuations, those of the best num_beams that end in EOS join the finished
pool, the best num_beams that do not end stay alive; at max length the alive
beams count as finished. Finished beams are ranked by
log_prob / ((5 + length) / 6) ** alpha (t5x's brevity penalty); an input
stops once no alive beam can still beat its worst finished one.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import flax
import gin
import jax
import jax.numpy as jnp

from t5pipe.model_config import T5Config
from t5pipe.models import family_of, model_for
from t5pipe.partitioning import activation_rules

METHODS = ("greedy", "beam", "sample")
NEG_INF = -1.0e9  # finite, so that sums and divisions stay well defined


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """How to decode. `method`: "greedy", "beam" or "sample".

    beam:   num_beams, alpha (brevity penalty ((5 + length) / 6) ** alpha; 0 ranks
            by plain log-probability), num_decodes <= num_beams best beams returned.
    sample: temperature (0 = argmax), top_k (0 = off), top_p (1.0 = off),
            num_decodes independent samples per input.
    """

    method: str = "greedy"
    max_decode_length: int = 64
    num_beams: int = 4
    alpha: float = 0.6
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    num_decodes: int = 1

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"DecodingOptions.method={self.method!r}: expected one of {METHODS}")
        if self.max_decode_length <= 0:
            raise ValueError(
                f"DecodingOptions.max_decode_length={self.max_decode_length} must be positive"
            )
        if self.num_decodes < 1:
            raise ValueError(f"DecodingOptions.num_decodes={self.num_decodes} must be >= 1")
        if self.method == "greedy" and self.num_decodes != 1:
            raise ValueError(
                "DecodingOptions.num_decodes > 1 needs method='beam' or 'sample' (greedy has one)"
            )
        if self.method == "beam" and not 1 <= self.num_decodes <= self.num_beams:
            raise ValueError(
                f"DecodingOptions.num_decodes={self.num_decodes} must be in 1..num_beams="
                f"{self.num_beams}"
            )
        if self.temperature < 0 or self.top_k < 0 or not 0.0 < self.top_p <= 1.0:
            raise ValueError(
                f"DecodingOptions: need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
                f"temperature={self.temperature}, top_k={self.top_k}, top_p={self.top_p}"
            )

    def replace(self, **changes) -> DecodingOptions:
        return dataclasses.replace(self, **changes)


class Decodes(NamedTuple):
    tokens: jax.Array
    scores: jax.Array
    log_probs: jax.Array


def brevity_penalty(alpha: float, length) -> jax.Array:
    """t5x / GNMT length normalisation: ((5 + length) / 6) ** alpha."""
    return ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


# ----------------------------------------------------------------------------- model steps


def _init_cache(model, params, encoded, encoder_segment_ids, max_length: int):
    """The decoder cache for rows of `encoded` [batch, enc_length, embed], split in two
    flat dicts {path tuple: array}:

        fixed:   cross-attention keys/values [batch, heads, enc_length, kv], the same
                 for the whole decode (and shared by every beam of an input, unrepeated):
                 the entries the family's `is_fixed_cache` names;
        growing: self-attention keys/values [batch, heads, max_length, kv] (zeros) and
                 the decode position (0).

    Only `growing` is carried through the loop and reordered between beams; `fixed`, the
    big part, is loop-invariant and identical for every beam of an input. The full-length
    decoder pass this call makes is dead code (only the cache is used), so XLA removes it.
    """
    dummy = jnp.zeros((encoded.shape[0], max_length), jnp.int32)
    _, variables = model.apply(
        {"params": params},
        encoded,
        encoder_segment_ids,
        dummy,
        decode=True,
        mutable=["cache"],
        method="decode",
    )
    return _split_cache(model, variables["cache"])


def _split_cache(model, cache) -> tuple[dict, dict]:
    is_fixed = family_of(model.config).is_fixed_cache
    flat = flax.traverse_util.flatten_dict(cache)
    fixed = {path: leaf for path, leaf in flat.items() if is_fixed(path)}
    growing = {path: leaf for path, leaf in flat.items() if path not in fixed}
    return fixed, growing


def _step(model, params, fixed, growing, encoded, encoder_segment_ids, tokens, max_length):
    """One decoder position: tokens [batch] -> (log-probs [batch, vocab] float32, growing cache)."""
    cache = flax.traverse_util.unflatten_dict({**fixed, **growing})
    # Cross-attention reads its keys/values from the cache; one encoder row is enough to
    # keep the (unused) projection cheap.
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        encoded[:, :1],
        encoder_segment_ids,
        tokens[:, None],
        decode=True,
        max_decode_length=max_length,
        mutable=["cache"],
        method="decode",
    )
    _, growing = _split_cache(model, variables["cache"])
    return jax.nn.log_softmax(logits[:, 0].astype(jnp.float32)), growing


def _batch_axis(path: tuple) -> int:
    """Cache arrays are [batch, ...], or [layers, batch, ...] under a scanned `layers` subtree."""
    return 1 if "layers" in path else 0


def repeat_cache_rows(cache: dict, times: int) -> dict:
    """Each row of every per-row cache array `times` times in a row (row r -> r*times...)."""
    return {
        path: leaf if leaf.ndim == 0 else jnp.repeat(leaf, times, axis=_batch_axis(path))
        for path, leaf in cache.items()
    }


def gather_cache_rows(growing: dict, rows: jax.Array) -> dict:
    """Selects rows [new_batch] of every per-row array of the growing cache (beam
    reordering); the scalar decode position is shared."""

    return {
        path: leaf if leaf.ndim == 0 else jnp.take(leaf, rows, axis=_batch_axis(path))
        for path, leaf in growing.items()
    }


# ----------------------------------------------------------------------------- methods


def _greedy_or_sample(
    model, params, encoded, encoder_segment_ids, options: DecodingOptions, rng, sample: bool
):
    """Rows [batch] decoded independently -> tokens [batch, L], log-probs [batch]."""
    cfg = model.config
    batch, length = encoded.shape[0], options.max_decode_length
    fixed, cache = _init_cache(model, params, encoded, encoder_segment_ids, length)

    def cond(state):
        i, _, _, ended, _, _, _ = state
        return (i < length) & ~jnp.all(ended)

    def body(state):
        i, last, tokens, ended, log_prob, cache, rng = state
        log_probs, cache = _step(
            model, params, fixed, cache, encoded, encoder_segment_ids, last, length
        )
        if sample:
            rng, key = jax.random.split(rng)
            chosen = _sample(key, log_probs, options)
        else:
            chosen = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
        chosen = jnp.where(ended, cfg.pad_token_id, chosen)
        picked = jnp.take_along_axis(log_probs, chosen[:, None], axis=-1)[:, 0]
        log_prob = log_prob + jnp.where(ended, 0.0, picked)
        tokens = jax.lax.dynamic_update_slice(tokens, chosen[:, None], (0, i))
        ended = ended | (chosen == cfg.eos_token_id)
        return i + 1, chosen, tokens, ended, log_prob, cache, rng

    state = (
        jnp.int32(0),
        jnp.full((batch,), cfg.decoder_start_token_id, jnp.int32),
        jnp.full((batch, length), cfg.pad_token_id, jnp.int32),
        jnp.zeros((batch,), jnp.bool_),
        jnp.zeros((batch,), jnp.float32),
        cache,
        rng,
    )
    _, _, tokens, _, log_prob, _, _ = jax.lax.while_loop(cond, body, state)
    return tokens, log_prob


def _sample(key, log_probs, options: DecodingOptions) -> jax.Array:
    """Draws one token per row from log_probs [batch, vocab] / temperature, after top-k and
    top-p (nucleus) filtering; temperature 0 is argmax."""
    if options.temperature == 0.0:
        return jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    logits = log_probs / options.temperature
    if options.top_k > 0:
        kth = jax.lax.top_k(logits, options.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, NEG_INF, logits)
    if options.top_p < 1.0:
        sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p: a token stays if the mass
        # strictly before it is below top_p (so the best token always stays).
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        kept = mass_before < options.top_p
        threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, NEG_INF, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _beam_search(model, params, encoded, encoder_segment_ids, options: DecodingOptions):
    """-> tokens [batch, beams, L], scores [batch, beams], log-probs [batch, beams], best first."""
    cfg = model.config
    batch, beams, length = encoded.shape[0], options.num_beams, options.max_decode_length
    width = 2 * beams  # candidates per step: enough that `beams` of them do not end
    # The cache is built once per input; row b * beams + j is beam j of input b. Only the
    # growing part is repeated: the beams of an input share its cross-attention
    # keys/values (the attention reads row r // beams), so a step reads them once per
    # input instead of once per beam.
    fixed, cache = _init_cache(model, params, encoded, encoder_segment_ids, length)
    cache = repeat_cache_rows(cache, beams)
    encoded = jnp.repeat(encoded, beams, axis=0)
    encoder_segment_ids = jnp.repeat(encoder_segment_ids, beams, axis=0)
    best_possible_penalty = brevity_penalty(options.alpha, length)
    row_offset = (jnp.arange(batch) * beams)[:, None]

    def cond(state):
        i, alive_log_probs, finished_scores = state[0], state[2], state[4]
        # Alive log-probs only fall; their best possible score is at maximum length.
        best_alive = alive_log_probs[:, 0] / best_possible_penalty
        can_improve = best_alive > jnp.min(finished_scores, axis=1)
        return (i < length) & jnp.any(can_improve)

    def body(state):
        (i, alive_tokens, alive_log_probs, finished_tokens, finished_scores,
         finished_log_probs, cache) = state  # fmt: skip
        last = jax.lax.dynamic_slice_in_dim(alive_tokens, jnp.maximum(i - 1, 0), 1, axis=2)
        last = jnp.where(i == 0, cfg.decoder_start_token_id, last.reshape(-1))
        log_probs, cache = _step(
            model, params, fixed, cache, encoded, encoder_segment_ids, last, length
        )
        vocab = log_probs.shape[-1]
        totals = alive_log_probs[:, :, None] + log_probs.reshape(batch, beams, vocab)
        # The best `width` of beams * vocab are among each beam's best `width`: two small
        # top-k's instead of one over beams * vocab.
        beam_best, beam_token = jax.lax.top_k(totals, width)  # [batch, beams, width]
        top_log_probs, top_index = jax.lax.top_k(beam_best.reshape(batch, beams * width), width)
        parent = top_index // width
        token = jnp.take_along_axis(beam_token.reshape(batch, -1), top_index, axis=1)
        token = token.astype(jnp.int32)
        top_tokens = jnp.take_along_axis(alive_tokens, parent[:, :, None], axis=1)
        top_tokens = jax.lax.dynamic_update_slice_in_dim(top_tokens, token[:, :, None], i, axis=2)
        ends = (token == cfg.eos_token_id) | (i == length - 1)

        # Finished pool: among the best `beams` candidates, those that just ended.
        just_finished = ends & (jnp.arange(width) < beams)[None]
        new_scores = top_log_probs / brevity_penalty(options.alpha, i + 1)
        new_scores = jnp.where(just_finished, new_scores, NEG_INF)
        pool_scores = jnp.concatenate([finished_scores, new_scores], axis=1)
        finished_scores, keep = jax.lax.top_k(pool_scores, beams)
        pool_tokens = jnp.concatenate([finished_tokens, top_tokens], axis=1)
        finished_tokens = jnp.take_along_axis(pool_tokens, keep[:, :, None], axis=1)
        pool_log_probs = jnp.concatenate([finished_log_probs, top_log_probs], axis=1)
        finished_log_probs = jnp.take_along_axis(pool_log_probs, keep, axis=1)

        # Alive beams: the best `beams` candidates that did not end.
        alive_log_probs, keep = jax.lax.top_k(jnp.where(ends, NEG_INF, top_log_probs), beams)
        alive_tokens = jnp.take_along_axis(top_tokens, keep[:, :, None], axis=1)
        parent = jnp.take_along_axis(parent, keep, axis=1)
        cache = gather_cache_rows(cache, (parent + row_offset).reshape(-1))
        return (i + 1, alive_tokens, alive_log_probs, finished_tokens, finished_scores,
                finished_log_probs, cache)  # fmt: skip

    # Only beam 0 is live at the start, so the first step does not pick duplicates.
    alive_log_probs = jnp.tile(jnp.asarray([0.0] + [NEG_INF] * (beams - 1)), (batch, 1))
    empty_tokens = jnp.full((batch, beams, length), cfg.pad_token_id, jnp.int32)
    state = (
        jnp.int32(0),
        empty_tokens,
        alive_log_probs,
        empty_tokens,
        jnp.full((batch, beams), NEG_INF, jnp.float32),
        jnp.full((batch, beams), NEG_INF, jnp.float32),
        cache,
    )
    _, _, _, tokens, scores, log_probs, _ = jax.lax.while_loop(cond, body, state)
    return tokens, scores, log_probs


# ----------------------------------------------------------------------------- entry points


def decode_batch(
    params, config: T5Config, encoder_tokens: jax.Array, options: DecodingOptions, rng=None
) -> Decodes:
    """Decodes encoder_tokens [batch, enc_length] (0-padded). Traceable; see `make_decode_fn`."""
    model = model_for(config)
    encoded, segment_ids = model.apply({"params": params}, encoder_tokens, method="encode")
    batch, n = encoder_tokens.shape[0], options.num_decodes
    if options.method == "beam":
        tokens, scores, log_probs = _beam_search(model, params, encoded, segment_ids, options)
        return Decodes(tokens[:, :n], scores[:, :n], log_probs[:, :n])
    if options.method == "sample":
        if rng is None:
            raise ValueError("DecodingOptions.method='sample' needs an rng")
        encoded = jnp.repeat(encoded, n, axis=0)
        segment_ids = jnp.repeat(segment_ids, n, axis=0)
    tokens, log_prob = _greedy_or_sample(
        model, params, encoded, segment_ids, options, rng, sample=options.method == "sample"
    )
    tokens = tokens.reshape(batch, n, -1)
    log_prob = log_prob.reshape(batch, n)
    order = jnp.argsort(-log_prob, axis=1)
    tokens = jnp.take_along_axis(tokens, order[:, :, None], axis=1)
    log_prob = jnp.take_along_axis(log_prob, order, axis=1)
    return Decodes(tokens, log_prob, log_prob)


@functools.lru_cache(maxsize=32)
def _jitted_decode(config: T5Config, options: DecodingOptions):
    return jax.jit(functools.partial(decode_batch, config=config, options=options))


def make_decode_fn(config: T5Config, options: DecodingOptions, mesh=None, rules=None):
    """A compiled `fn(params, encoder_tokens [batch, enc_length], rng=None) -> Decodes`.

    With `mesh` and `rules`, tracing happens under the logical-axis rules so that the
    model's activation constraints (batch split over data axes) apply; place params and
    tokens with the matching shardings (`partitioning.batch_sharding`).
    """
    jitted = _jitted_decode(config, options)

    def run(params, encoder_tokens, rng=None):
        if rng is None:
            rng = jax.random.PRNGKey(0)
        if mesh is None:
            return jitted(params, encoder_tokens=encoder_tokens, rng=rng)
        with activation_rules(mesh, rules):
            return jitted(params, encoder_tokens=encoder_tokens, rng=rng)

    return run


def decode(
    params, config: T5Config, encoder_tokens, options: DecodingOptions | None = None, rng=None
) -> Decodes:
    """Convenience: compile (cached per config/options) and run on one batch."""
    options = options or DecodingOptions()
    return make_decode_fn(config, options)(params, jnp.asarray(encoder_tokens, jnp.int32), rng)
