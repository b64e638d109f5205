"""`t5pipe train --with_optimizer_state`: continued pretraining from a t5x checkpoint's
Adafactor state. The step the real train path takes from it must be the one t5x's
Adafactor takes next (t5x_testlib's numpy re-implementation of t5x/adafactor.py)."""

import jax
import numpy as np
import pytest
import t5x_testlib as t5xlib
from train_testlib import FAST, train_in_process

from t5pipe import checkpoint_format, cli, gin_setup, initial_optimizer
from t5pipe.losses import normalizing_weights
from t5pipe.models import abstract_params, model_for
from t5pipe.train_step import microbatch_loss

LR = 0.01  # the quickstart's constant learning rate
STEP = 3  # the t5x checkpoint's step
# Widths of 128 (min_dim_size_to_factor), so that t5x factors the embedding, the MLP
# and the [embed, heads * kv] attention kernels (which optax alone would not).
WIDE = ("d_model=128", "num_heads=8", "d_kv=16", "d_ff=256")
MODEL = tuple(f"--gin.T5Config.{binding}" for binding in WIDE)
TASK = ("--gin.MIXTURE_OR_TASK_NAME='builtin_reverse_v001'", "--gin.train.pack=False")
Z_LOSS = 1e-4  # runs/pretrain.gin's Z_LOSS


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
    """A t5x run at step 3 in the T5X format (two shards per array), with the Adafactor
    state t5x's optimizer left after 3 steps on random gradients; and the same
    parameters without optimizer state, as t5x and as t5pipe checkpoints."""
    root = tmp_path_factory.mktemp("t5x_optimizer")
    bindings = [binding.removeprefix("--gin.") for binding in MODEL]
    config = gin_setup.model_config_from_gin(["models/tiny.gin"], bindings)
    shapes = abstract_params(config)[0]
    params0 = t5xlib.flat_names(t5xlib.t5x_target(t5xlib.spread_params(shapes, 0), config))
    rng = np.random.default_rng(1)
    grads = [
        {n: rng.normal(size=p.shape).astype(np.float32) for n, p in params0.items()}
        for _ in range(STEP)
    ]
    params3, states3 = t5xlib.t5x_adafactor_steps(params0, grads, LR)
    assert sum(s["v_row"].shape != (1,) for s in states3.values()) >= 10  # factored state
    state = {"step": np.int32(STEP), "param_states": t5xlib.nest(states3)}
    t5xlib.write_t5x_format(
        root / "run" / f"checkpoint_{STEP}", {"target": t5xlib.nest(params3), "state": state}, 2
    )
    bare = {"target": t5xlib.nest(params3), "state": {"step": np.int32(STEP)}}
    t5xlib.write_t5x_format(root / "bare" / f"checkpoint_{STEP}", bare)
    from t5pipe.t5x import convert
    from t5pipe.vocabularies import byt5_vocabulary

    ours, _ = convert.read_t5x_params(root / "run" / f"checkpoint_{STEP}", config)
    checkpoint_format.save_checkpoint(
        root / "params_only", {"params": ours}, config, byt5_vocabulary()
    )
    return root, config, params3, states3


def first_batch_grads(config, params):
    """{t5x name: gradient} of the loss the train step minimises, on the first batch a
    run reads (a fine-tune's data starts at its task's first batch), at `params`
    (t5pipe's tree)."""
    from t5pipe import input_pipeline
    from t5pipe.train import MODEL_FEATURES, train

    data = gin_setup.resolved_arguments(train, "train")["data"]
    host = next(input_pipeline.train_batches(data, start_step=0))
    batch = {k: jax.numpy.asarray(host[k]) for k in MODEL_FEATURES if k in host}
    weights, factor = normalizing_weights(
        batch["decoder_loss_weights"], batch.get("decoder_segment_ids"), None
    )
    batch["weights"] = weights

    def loss(p):
        return microbatch_loss(
            p, batch, factor, None, model=model_for(config), z_loss=Z_LOSS, smoothing=0.0
        )[0]

    grads = jax.device_get(jax.jit(jax.grad(loss))(params))
    return t5xlib.flat_names(t5xlib.t5x_target(grads, config))


def worst_relative(got, want):
    """max over arrays of max |got - want| / max |want|."""
    return max(float(np.max(np.abs(got[n] - want[n])) / np.max(np.abs(want[n]))) for n in want)


def test_first_step_is_t5xs_next_adafactor_step(t5x_run, tmp_path, capsys):
    root, config, params3, states3 = t5x_run
    initial = root / "run" / f"checkpoint_{STEP}"
    summary = train_in_process(
        tmp_path / "run", *FAST, *TASK, *MODEL, f"--gin.INITIAL_CHECKPOINT_PATH='{initial}'",
        f"--gin.TRAIN_STEPS={STEP + 1}", "--with_optimizer_state",
    )  # fmt: skip
    assert summary["step"] == STEP + 1
    assert capsys.readouterr().out.splitlines()[0].startswith(f"starting at step {STEP}")
    trained = jax.device_get(summary["state"]["params"])
    got = t5xlib.flat_names(t5xlib.t5x_target(trained, config))

    from t5pipe.t5x import convert

    grads = first_batch_grads(config, convert.read_t5x_params(initial, config)[0])
    want, _ = t5xlib.t5x_adafactor_steps(params3, [grads], LR, None, states3, STEP)
    assert worst_relative(got, want) <= 1e-6
    assert max(float(np.max(np.abs(got[n] - want[n]))) for n in want) <= 1e-6
    assert max(float(np.max(np.abs(want[n] - params3[n]))) for n in want) > 1e-3  # it moved
    # Fresh statistics (what the run does without the flag) would step elsewhere.
    fresh, _ = t5xlib.t5x_adafactor_steps(params3, [grads], LR)
    assert worst_relative(fresh, want) > 1e-4

    # The run's checkpoint records t5x's view: as an initial checkpoint with the flag
    # its optimizer state goes on, and the next step is again t5x's.
    saved = tmp_path / "run" / "checkpoints" / str(STEP + 1)
    meta = checkpoint_format.read_meta(saved)
    assert meta[initial_optimizer.META_KEY] == initial_optimizer.T5X_VIEW
    _, states4 = t5xlib.t5x_adafactor_steps(params3, [grads], LR, None, states3, STEP)
    summary = train_in_process(
        tmp_path / "again", *FAST, *TASK, *MODEL, f"--gin.INITIAL_CHECKPOINT_PATH='{saved}'",
        f"--gin.TRAIN_STEPS={STEP + 2}", "--gin.train.with_optimizer_state=True",
    )  # fmt: skip
    again = t5xlib.flat_names(t5xlib.t5x_target(jax.device_get(summary["state"]["params"]), config))
    grads = first_batch_grads(config, trained)
    want5, _ = t5xlib.t5x_adafactor_steps(want, [grads], LR, None, states4, STEP + 1)
    assert worst_relative(again, want5) <= 1e-6


@pytest.mark.parametrize("checkpoint", ["bare", "params_only"])
def test_checkpoint_without_optimizer_state_is_refused(t5x_run, tmp_path, capsys, checkpoint):
    root, _, _, _ = t5x_run
    path = root / "bare" / f"checkpoint_{STEP}" if checkpoint == "bare" else root / checkpoint
    argv = ["train", "--gin_file=runs/quickstart.gin", f"--gin.MODEL_DIR={tmp_path / 'run'}"]
    argv += [*FAST, *TASK, *MODEL, f"--gin.INITIAL_CHECKPOINT_PATH='{path}'"]
    code = cli.main([*argv, f"--gin.TRAIN_STEPS={STEP + 1}", "--with_optimizer_state"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"the initial checkpoint {path} carries no optimizer state" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
