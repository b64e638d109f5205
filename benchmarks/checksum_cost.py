"""What the per-array checksums of a training save cost, on a t5_1_1 base-sized state.

    python -m benchmarks.checksum_cost [--model models/t5_1_1/base.gin] [--repeats 3]

Times, on this host's default device, the work the training loop waits for at a save
(hashing in the loop, as before; a host copy only, now that the asynchronous save's
background thread hashes), the hashing itself (now in that thread) and the re-hash a
restore does to verify. The state is the default optimizer's train state of the model
(parameters and optimizer statistics), filled with ones: CRC speed does not depend on
the values.
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from t5pipe import checkpoint_integrity
from t5pipe.gin_setup import model_config_from_gin
from t5pipe.model import init_params
from t5pipe.train_step import OptimizationConfig, init_train_state


def _best(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="models/t5_1_1/base.gin")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    config = model_config_from_gin([args.model])
    optimizer = OptimizationConfig().make_optimizer()
    shapes = jax.eval_shape(
        lambda rng: init_train_state(init_params(config, rng), optimizer, 0),
        jax.random.PRNGKey(0),
    )
    state = jax.tree.map(lambda s: jax.numpy.ones(s.shape, s.dtype), shapes)
    jax.block_until_ready(state)
    size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    pending = checkpoint_integrity.PendingMeta({}, state)
    meta = pending.resolve()
    figures = {
        "model": args.model,
        "checksum": checkpoint_integrity.CHECKSUM_KIND,
        "state_bytes": size,
        "arrays": len(jax.tree.leaves(state)),
        "loop_wait_before_s": _best(
            lambda: checkpoint_integrity.with_checksums({}, state), args.repeats
        ),
        "loop_wait_after_s": _best(
            lambda: checkpoint_integrity.PendingMeta({}, state), args.repeats
        ),
        "background_hash_s": _best(
            lambda: checkpoint_integrity.PendingMeta({}, state).resolve(), args.repeats
        ),
        "restore_verify_s": _best(
            lambda: checkpoint_integrity.mismatches(state, meta), args.repeats
        ),
    }
    figures["background_hash_s"] = round(
        figures["background_hash_s"] - figures["loop_wait_after_s"], 3
    )
    rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}
    print(json.dumps(rounded, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
