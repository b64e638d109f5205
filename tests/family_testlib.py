"""Checks every model family must pass against Hugging Face (PyTorch, float32).

Each family test builds a tiny config, the transformers model of the same shapes
(random weights, spread out so that greedy decodes vary), imports its state dict
through the family's name map, and runs the checks here.
"""

from __future__ import annotations

import copy
import functools

import gin
import jax
import jax.numpy as jnp
import numpy as np
import torch
from hf_testlib import mixed_length_inputs  # noqa: F401 (shared helper)
from test_decoding import cut_after_eos  # noqa: F401 (shared helper)

from t5pipe import gin_setup
from t5pipe.decoding import DecodingOptions, decode
from t5pipe.model import shift_right
from t5pipe.models import abstract_params, family_of, model_for

MAX_NEW = 10
ENC_LENGTHS = [13, 7, 10, 3]  # a padded batch of mixed lengths
DEC_LENGTHS = [9, 4, 6, 2]


def spread_weights(
    hf: torch.nn.Module,
    std: float,
    one_centered_norms: bool,
    embedding_std: float | None = None,
    seed: int = 0,
):
    """Every parameter redrawn: matrices N(0, std) (embedding tables N(0, embedding_std)
    when given), norm scales around their neutral value (1, or 0 for Gemma's 1 + scale)
    with spread std / 2. Tied parameters stay tied."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in hf.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if param.ndim == 1:
                neutral = 0.0 if one_centered_norms or "eoi" in name else 1.0
                param.copy_(neutral + noise * std / 2)
            elif "embed" in name and embedding_std is not None:
                param.copy_(noise * embedding_std)
            else:
                param.copy_(noise * std)
    return hf.eval()


def hf_state(hf) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in hf.state_dict().items()}


def params_from(hf, config):
    return family_of(config).params_from_hf(hf_state(hf).items(), config)


def padded_batch(vocab_size: int, seed: int = 0, special=()):
    """Encoder tokens [4, 13], targets [4, 9], 0-padded, and their masks; `special` token
    ids are sprinkled in (T5Gemma 2's end-of-image token)."""
    rng = np.random.default_rng(seed)
    enc = rng.integers(3, vocab_size, (4, max(ENC_LENGTHS)))
    targets = rng.integers(3, vocab_size, (4, max(DEC_LENGTHS)))
    for token in special:
        enc[rng.integers(0, 4), rng.integers(0, 3)] = token
        targets[rng.integers(0, 4), rng.integers(0, 2)] = token
    enc_mask = np.arange(enc.shape[1])[None] < np.array(ENC_LENGTHS)[:, None]
    dec_mask = np.arange(targets.shape[1])[None] < np.array(DEC_LENGTHS)[:, None]
    return enc * enc_mask, targets * dec_mask, enc_mask, dec_mask


def relative_error(ours, ref, mask) -> float:
    ours, ref = np.asarray(ours)[mask], np.asarray(ref)[mask]
    return float(np.linalg.norm(ours - ref) / np.linalg.norm(ref))


def parity_errors(
    config, hf, params, seed: int = 0, special=(), precisions=("float32",)
) -> dict[str, float]:
    """Relative errors of our encoder output and logits against HF's on a padded
    mixed-length batch, both sides in each of `precisions` (float32, float64).

    Where spread-out weights make float32 results differ by rounding at the 1e-5 level
    (umT5: HF's own float32 logits are ~2e-5 off its float64 ones), float64 on both
    sides is the sharp check. HF keeps norm statistics in float32 even then, and our
    logits come back float32, which bounds that agreement near 1e-6.
    """
    enc, targets, enc_mask, dec_mask = padded_batch(config.vocab_size, seed, special)
    dec_in = np.asarray(shift_right(jnp.asarray(targets), config.decoder_start_token_id))
    errors = {}
    for name in precisions:
        torch_dtype = {"float32": torch.float32, "float64": torch.float64}[name]
        reference = copy.deepcopy(hf).to(torch_dtype)
        with torch.no_grad():
            out = reference(
                input_ids=torch.tensor(enc),
                attention_mask=torch.tensor(enc_mask.astype(np.int64)),
                decoder_input_ids=torch.tensor(dec_in),
            )
        with jax.enable_x64(name == "float64"):
            model = model_for(config.replace(dtype=name))
            cast = jax.tree.map(functools.partial(np.asarray, dtype=name), params)
            logits, encoded = jax.jit(functools.partial(forward, model))(cast, enc, dec_in)
        assert logits.dtype == jnp.float32 and logits.shape == (*targets.shape, config.vocab_size)
        errors[f"encoder_{name}"] = relative_error(
            encoded, out.encoder_last_hidden_state.double().numpy(), enc_mask
        )
        errors[f"logits_{name}"] = relative_error(logits, out.logits.double().numpy(), dec_mask)
    return errors


def assert_parity(errors: dict[str, float], tolerances: dict[str, float]):
    for name, tolerance in tolerances.items():
        assert errors[f"encoder_{name}"] <= tolerance, errors
        assert errors[f"logits_{name}"] <= tolerance, errors


def forward(model, params, enc, dec_in):
    """(teacher-forced logits, encoder output) of `model`."""
    encoded, segments = model.apply({"params": params}, enc, method="encode")
    return model.apply({"params": params}, encoded, segments, dec_in, method="decode"), encoded


def hf_generate(hf, config, enc, **kwargs) -> np.ndarray:
    with torch.no_grad():
        out = hf.generate(
            input_ids=torch.tensor(enc, dtype=torch.long),
            attention_mask=torch.tensor((enc != config.pad_token_id).astype(np.int64)),
            max_new_tokens=MAX_NEW,
            do_sample=False,
            decoder_start_token_id=config.decoder_start_token_id,
            eos_token_id=config.eos_token_id,
            pad_token_id=config.pad_token_id,
            **kwargs,
        )
    return cut_after_eos(out.numpy()[:, 1:], MAX_NEW, config.eos_token_id)  # no start token


def ours_decode(params, config, enc, **options) -> np.ndarray:
    options = DecodingOptions(max_decode_length=MAX_NEW, **options)
    tokens = np.asarray(decode(params, config, enc, options).tokens[:, 0])
    return cut_after_eos(tokens, MAX_NEW, config.eos_token_id)


def uncached_greedy(params, config, enc, length: int = MAX_NEW) -> np.ndarray:
    """Reference: runs the whole decoder on the prefix at every step (no cache).

    The decoder input keeps its full length (later positions padded): causal attention
    makes position i's logits depend on positions <= i only, and one shape compiles once.
    """
    model = model_for(config)
    run = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d))
    tokens = np.full((len(enc), length), config.pad_token_id, np.int32)
    tokens[:, 0] = config.decoder_start_token_id
    out = np.zeros((len(enc), length), np.int32)
    ended = np.zeros(len(enc), bool)
    for i in range(length):
        logits = np.asarray(run(params, jnp.asarray(enc), jnp.asarray(tokens)))
        chosen = np.where(ended, config.pad_token_id, np.argmax(logits[:, i], -1))
        out[:, i] = chosen
        if i + 1 < length:
            tokens[:, i + 1] = chosen
        ended |= chosen == config.eos_token_id
    return cut_after_eos(out, MAX_NEW, config.eos_token_id)


def assert_decoding_equals_references(params, config, hf, enc):
    """Greedy decodes equal HF's `generate` and uncached decoding; beam-4 equals HF's
    (length_penalty 0 is our alpha 0; early_stopping "never" is our stopping rule)."""
    greedy = ours_decode(params, config, enc, method="greedy")
    assert_decodes_vary(greedy, config.eos_token_id)
    np.testing.assert_array_equal(greedy, hf_generate(hf, config, enc, num_beams=1))
    np.testing.assert_array_equal(greedy, uncached_greedy(params, config, enc))
    beam = ours_decode(params, config, enc, method="beam", num_beams=4, alpha=0.0)
    reference = hf_generate(
        hf, config, enc, num_beams=4, length_penalty=0.0, early_stopping="never"
    )
    np.testing.assert_array_equal(beam, reference)
    return greedy


def config_from_gin(family, gin_file: str):
    """The config `family` builds from a shipped gin file (`models/<family>/<size>.gin`)."""
    gin_setup.register_configurables()
    gin.clear_config()
    gin.add_config_file_search_path(gin_setup.gin_configs_dir())
    try:
        gin.parse_config_file(gin_file)
        return family.config_cls()
    finally:
        gin.clear_config()


def assert_decodes_vary(tokens: np.ndarray, eos: int):
    """Spread-out weights: decodes differ between inputs and do not all stop at once."""
    assert len({tuple(row) for row in tokens}) > len(tokens) // 2
    assert (tokens[:, 0] != eos).mean() > 0.5


def assert_hf_round_trip(hf, config, ignored_copies: dict[str, str] | None = None):
    """HF -> t5pipe -> HF is bit-exact; names HF has beyond ours are tied copies
    (`ignored_copies`: name -> the exported name it equals) or another modality."""
    family = family_of(config)
    state = hf_state(hf)
    back = dict(family.params_to_hf(family.params_from_hf(state.items(), config), config))
    for name, array in back.items():
        assert array.dtype == state[name].dtype and np.array_equal(array, state[name]), name
    for name, source in (ignored_copies or {}).items():
        assert np.array_equal(state[name], back[source]), name
    # The tree has exactly the parameters the model initialises.
    shapes, _ = abstract_params(config)
    params = family.params_from_hf(state.items(), config)
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(shapes), strict=True):
        assert got.shape == want.shape
    return back


def hf_parameter_count(model: torch.nn.Module, exclude_prefixes=()) -> int:
    """Distinct parameters (tied ones once), leaving out the given submodules."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if not name.startswith(tuple(exclude_prefixes))
    )


def scan_remat_bf16_errors(config, params, seed: int = 3) -> dict[str, float]:
    """Relative logit differences to the plain float32 run of: scanned layers with full
    remat, unrolled layers with remat of dots only, bfloat16 activations."""
    family = family_of(config)
    enc, targets, _, dec_mask = padded_batch(config.vocab_size, seed)
    dec_in = shift_right(jnp.asarray(targets), config.decoder_start_token_id)

    def logits_of(cfg, p):
        return jax.jit(lambda p: model_for(cfg).apply({"params": p}, jnp.asarray(enc), dec_in))(p)

    reference = logits_of(config, params)
    scanned_params = family.scan_layout(params, config)
    errors = {}
    for scan, policy in ((True, "full"), (False, "dots")):
        variant = config.replace(scan_layers=scan, remat_policy=policy)
        logits = logits_of(variant, scanned_params if scan else params)
        errors[f"{'scan' if scan else 'unrolled'}_remat_{policy}"] = relative_error(
            logits, reference, dec_mask
        )
    half = logits_of(config.replace(dtype="bfloat16"), params)
    assert half.dtype == jnp.float32
    errors["bfloat16"] = relative_error(half, reference, dec_mask)
    return errors
