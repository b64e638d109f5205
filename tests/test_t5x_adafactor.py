"""t5x's Adafactor state carried into t5pipe's optax Adafactor: the first update after an
import must be the one t5x's optimizer makes (numpy re-implementation of t5x/adafactor.py
in t5x_testlib, checked against t5x's own code outside CI)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import t5x_testlib as t5xlib
from testlib import tiny_config

from t5pipe import optimizers
from t5pipe.hf import t5 as hf_mapping
from t5pipe.model import abstract_params
from t5pipe.t5x import convert, optimizer_state

LR = 0.01
# Widths of at least 128 (min_dim_size_to_factor), so that Adafactor factors.
FACTORED = dict(vocab_size=256, d_model=128, num_heads=8, d_kv=16, d_ff=256)


def shapes(config):
    """The parameter tree's ShapeDtypeStructs (no model init to compile)."""
    return abstract_params(config)[0]


def run_t5x(target, grads, momentum):
    """t5x's Adafactor: 3 steps from zero state, then the 4th on `grads[3]`."""
    flat = t5xlib.flat_names(target)
    params3, states3 = t5xlib.t5x_adafactor_steps(flat, grads[:3], LR, momentum)
    params4, _ = t5xlib.t5x_adafactor_steps(params3, grads[3:], LR, momentum, states3, 3)
    return (params3, states3), params4


def t5x_grads(config, scanned, seed):
    rng = np.random.default_rng(seed)
    like = shapes(config.replace(scan_layers=False))
    t5pipe = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), like)
    return t5pipe, t5xlib.flat_names(t5xlib.t5x_target(t5pipe, config, scanned))


@pytest.mark.parametrize(
    "scanned_t5x, scan_layers, momentum",
    [(False, False, None), (False, True, None), (True, False, None), (False, False, 0.9)],
    ids=["t5", "t5-into-scanned-t5pipe", "scalable-scanned", "t5-momentum"],
)
def test_first_update_after_import_is_t5xs(tmp_path, scanned_t5x, scan_layers, momentum):
    config = tiny_config(**FACTORED, num_encoder_layers=2, num_decoder_layers=2)
    params = t5xlib.spread_params(shapes(config), seed=1)
    grads = [t5x_grads(config, scanned_t5x, seed) for seed in range(4)]
    (params3, states3), params4 = run_t5x(
        t5xlib.t5x_target(params, config, scanned_t5x), [g for _, g in grads], momentum
    )
    assert any(s["v_row"].shape != (1,) for s in states3.values())  # some state is factored
    state_dict = {
        "target": t5xlib.nest(params3),
        "state": {"step": np.int32(3), "param_states": t5xlib.nest(states3)},
    }
    t5xlib.write_t5x_format(tmp_path / "checkpoint_3", state_dict, shards=2)

    config = config.replace(scan_layers=scan_layers)
    ours, step = convert.read_t5x_params(tmp_path, config)
    assert step == 3
    tx = optimizer_state.factor_like_t5x(
        optimizers.adafactor(learning_rate=LR, momentum=momentum), config
    )
    opt_state = convert.read_t5x_optimizer_state(tmp_path, config, tx, ours)
    if not scanned_t5x:  # t5x's own layout: the statistics move bit for bit, both ways
        back = optimizer_state.t5x_param_states_from_optax(opt_state, config)
        assert set(back) == set(states3)
        for name, slots in states3.items():
            for slot, array in slots.items():
                assert np.array_equal(back[name][slot], array), (name, slot)
    t5pipe_grads = grads[3][0]
    if scan_layers:
        t5pipe_grads = hf_mapping.scan_layout(t5pipe_grads, config)
    updates, _ = tx.update(jax.tree.map(jnp.asarray, t5pipe_grads), opt_state, ours)
    new = jax.tree.map(np.asarray, optax.apply_updates(ours, updates))
    if scan_layers:
        new = hf_mapping.unscan_layout(new, config)
    got = t5xlib.flat_names(t5xlib.t5x_target(new, config, scanned_t5x))
    worst = max(float(np.max(np.abs(got[name] - params4[name]))) for name in params4)
    moved = max(float(np.max(np.abs(params4[name] - params3[name]))) for name in params4)
    assert moved > 1e-3  # the update is not negligible
    bad = {n: float(np.max(np.abs(got[n] - params4[n]))) for n in params4}
    assert worst <= 1e-6, sorted(bad.items(), key=lambda kv: -kv[1])[:6]


def test_plain_adafactor_matches_t5x_except_attention_kernels(tmp_path):
    """Without factor_like_t5x optax factors t5pipe's [embed, heads, kv] kernels (and
    clips and scales them) unlike t5x's [embed, heads * kv] matrices; everything else
    carries over exactly."""
    config = tiny_config(**FACTORED, num_encoder_layers=1, num_decoder_layers=1)
    params = t5xlib.spread_params(shapes(config), seed=2)
    grads = [t5x_grads(config, False, seed) for seed in range(4)]
    (params3, states3), params4 = run_t5x(
        t5xlib.t5x_target(params, config), [g for _, g in grads], None
    )
    state_dict = {
        "target": t5xlib.nest(params3),
        "state": {"step": np.int32(3), "param_states": t5xlib.nest(states3)},
    }
    t5xlib.write_t5x_format(tmp_path / "checkpoint_3", state_dict)
    ours, _ = convert.read_t5x_params(tmp_path, config)
    tx = optimizers.adafactor(learning_rate=LR)
    opt_state = convert.read_t5x_optimizer_state(tmp_path, config, tx, ours)
    updates, _ = tx.update(jax.tree.map(jnp.asarray, grads[3][0]), opt_state, ours)
    new = jax.tree.map(np.asarray, optax.apply_updates(ours, updates))
    got = t5xlib.flat_names(t5xlib.t5x_target(new, config))
    for name in params4:
        diff = float(np.max(np.abs(got[name] - params4[name])))
        if "attention/" in name and name.endswith("/kernel"):
            assert diff > 1e-5, name
        else:
            assert diff <= 1e-6, (name, diff)


def test_state_of_an_optimizer_without_adafactor_is_refused(tmp_path):
    config = tiny_config()
    params = t5xlib.spread_params(shapes(config), seed=0)
    target = t5xlib.flat_names(t5xlib.t5x_target(params, config))
    states = {n: t5xlib.t5x_init_state(n, p.shape, None) for n, p in target.items()}
    state_dict = {
        "target": t5xlib.nest(target),
        "state": {"step": np.int32(5), "param_states": t5xlib.nest(states)},
    }
    t5xlib.write_t5x_format(tmp_path / "checkpoint_5", state_dict)
    with pytest.raises(Exception, match="no Adafactor statistics"):
        convert.read_t5x_optimizer_state(tmp_path, config, optimizers.adamw(1e-3), params)


def test_factor_like_t5x_composes_with_frozen_parameters():
    """Inside peft's freeze_except (optax.multi_transform), frozen leaves pass through
    t5x's view as optax MaskedNodes and keep zero updates; the view traces under jit."""
    from t5pipe import peft

    config = tiny_config(num_encoder_layers=1, num_decoder_layers=1, scan_layers=True)
    params = t5xlib.spread_params(shapes(config), seed=3)
    round_trip = jax.jit(
        lambda p: optimizer_state.from_t5x_view(optimizer_state.t5x_view(p, config), config)
    )(params)
    assert all(
        jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), round_trip, params))
    )
    inner = optimizer_state.factor_like_t5x(optimizers.adafactor(learning_rate=LR), config)
    tx = peft.freeze_except(inner, params, "decoder/.*")
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, jax.jit(tx.init)(params), params)
    for path, update in jax.tree_util.tree_leaves_with_path(updates):
        frozen = not jax.tree_util.keystr(path).startswith("['decoder']")
        assert bool(jnp.all(update == 0)) == frozen, jax.tree_util.keystr(path)
