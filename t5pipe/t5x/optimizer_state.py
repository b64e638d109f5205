"""t5x's Adafactor state <-> optax's `adafactor` state, and t5x's factoring for optax.

t5x (`t5x/adafactor.py`) keeps, for every parameter, `state/param_states/<name>/`
{v_row, v_col, v, m}, unused slots being [1] zero placeholders:

    factored over row dims R and column dims C (other dims: batch, e.g. `layers`):
        v_row = EMA of mean over C of grad**2    [parameter shape without C]
        v_col = EMA of mean over R of grad**2    [parameter shape without R]
    unfactored:   v = EMA of grad**2             [parameter shape]
    momentum:     m = EMA of the update          [parameter shape] (beta1 only)

Which dims: a parameter of rank <= 2 without a `layers` axis is factored by the
heuristic, its two largest dims when the smaller is >= min_dim_size_to_factor (row:
the second largest, column: the largest, in `np.argsort` order); higher ranks and
scanned parameters by t5x's standard logical factor rules (embed: row; vocab, mlp,
heads, kv: column; layers: batch; layer-norm scales and relative position tables
unfactored). optax (`scale_by_factored_rms`) keeps the same statistics in
`FactoredState(count, v_row, v_col, v)`, factoring each leaf of the tree it is given
by the same heuristic on that leaf's own shape, and momentum in `EmaState.ema`.

t5pipe's attention kernels are [embed, heads, kv] where t5x's are [embed, heads * kv],
and scanned t5pipe stacks [layers, ...], so a plain optax Adafactor over t5pipe's tree
factors (and clips, and scales by parameter RMS) those leaves differently from t5x:
its first update after an import cannot be t5x's. `factor_like_t5x` wraps the
optimizer so that it sees every parameter as t5x's `t5x/examples/t5` layout does (one
[embed, heads * kv] matrix per layer); then the statistics move over exactly and
updates are t5x's. Without the wrapper, leaves whose factoring differs get the
second-moment estimate t5x's update uses, V = v_row * v_col / mean(v_row),
re-factored for optax (exact for unfactored and equally factored leaves).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

from t5pipe.model_config import T5Config
from t5pipe.t5x import mapping

Factoring = tuple[tuple[int, ...], tuple[int, ...]]  # (row dims, column dims)
ROW_AXES, COLUMN_AXES, BATCH_AXES = (
    ("embed",),
    ("vocab", "mlp", "heads", "kv", "joined_kv"),
    ("layers",),
)
SLOTS = ("v_row", "v_col", "v", "m")


def heuristic_factoring(shape: tuple[int, ...], min_dim_size_to_factor: int = 0):
    """Adafactor's default factoring (t5x and optax alike), or None (unfactored)."""
    if len(shape) < 2:
        return None
    order = np.argsort(shape)
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return (int(order[-2]),), (int(order[-1]),)


def logical_axes(entry: mapping.T5xArray, layout: mapping.T5xLayout) -> tuple[str, ...]:
    """The logical axis names t5x's T5 networks give a parameter array."""
    part = entry.parts[0]
    last = part.path[-1]
    if last == "embedding":
        axes = ("vocab", "embed")
    elif last == "kernel":  # logits_dense
        axes = ("embed", "vocab")
    elif last == "scale":
        axes = ("embed",)
    elif last == "rel_embedding":
        axes = ("heads", "relpos_buckets")
    elif last in ("query", "key", "value"):
        axes = (
            ("embed", "joined_kv") if part.kind == mapping.JOINED_IN else ("embed", "heads", "kv")
        )
    elif last == "out":
        axes = (
            ("joined_kv", "embed") if part.kind == mapping.JOINED_OUT else ("heads", "kv", "embed")
        )
    elif last == "wo":
        axes = ("mlp", "embed")
    else:
        axes = ("embed", "mlp")
    if entry.stacked:
        axes = axes[: layout.scan_axis] + ("layers",) + axes[layout.scan_axis :]
    return axes


def t5x_factoring(entry: mapping.T5xArray, layout: mapping.T5xLayout) -> Factoring | None:
    """How t5x's Adafactor factors `entry` when it factors it (see the module docstring);
    for heuristic parameters the min-dim threshold is left to the stored shapes."""
    axes = logical_axes(entry, layout)
    if len(axes) <= 2 and "layers" not in axes:
        return heuristic_factoring(entry.shape)
    rows = tuple(i for i, a in enumerate(axes) if a in ROW_AXES)
    cols = tuple(i for i, a in enumerate(axes) if a in COLUMN_AXES)
    return (rows, cols) if rows and cols else None


def stored_factoring(
    name: str, shape: tuple[int, ...], slots: Mapping[str, np.ndarray], rule: Factoring | None
) -> Factoring | None:
    """The factoring t5x's stored slots show (None: unfactored), checked against `rule`."""
    v = slots.get("v")
    if v is not None and tuple(v.shape) == tuple(shape):
        return None
    if rule is not None:
        rows, cols = rule
        want_row = tuple(n for i, n in enumerate(shape) if i not in cols)
        want_col = tuple(n for i, n in enumerate(shape) if i not in rows)
        got = tuple(slots["v_row"].shape), tuple(slots["v_col"].shape)
        if got == (want_row, want_col):
            return rule
    raise ValueError(
        f"Adafactor state of {name} {list(shape)} has v_row {_shape(slots, 'v_row')}, v_col "
        f"{_shape(slots, 'v_col')}, v {_shape(slots, 'v')}: not t5x's factored or unfactored "
        "layout for this parameter"
    )


def _shape(slots, slot):
    return list(slots[slot].shape) if slot in slots else None


def dense_second_moment(slots: Mapping[str, np.ndarray], factoring: Factoring | None) -> np.ndarray:
    """The [parameter shape] second-moment estimate Adafactor's update divides by."""
    if factoring is None:
        return np.asarray(slots["v"], np.float32)
    rows, cols = factoring
    v_row, v_col = np.asarray(slots["v_row"], np.float32), np.asarray(slots["v_col"], np.float32)
    # Positions of the row dims within v_row (which lacks the column dims).
    rows_in_v_row = tuple(r - sum(c < r for c in cols) for r in rows)
    row_mean = np.mean(v_row, axis=rows_in_v_row, keepdims=True)
    return np.expand_dims(v_row / row_mean, cols) * np.expand_dims(v_col, rows)


def refactor(dense: np.ndarray, factoring: Factoring | None) -> dict[str, np.ndarray]:
    """Slots holding `dense` under `factoring` (v_row/v_col means, or v itself)."""
    placeholder = np.zeros((1,), np.float32)
    if factoring is None:
        return {"v_row": placeholder, "v_col": placeholder, "v": dense}
    rows, cols = factoring
    return {
        "v_row": np.mean(dense, axis=cols, dtype=np.float32),
        "v_col": np.mean(dense, axis=rows, dtype=np.float32),
        "v": placeholder,
    }


# ---------------------------------------------------------------------------
# t5x's view of t5pipe's parameters


def _canonical_entries(config: T5Config) -> list[mapping.T5xArray]:
    return mapping.t5x_arrays(config, mapping.UNSCANNED)


def _layer_of(tree, path: mapping.Path, config: T5Config):
    """`mapping.leaf` that also lets optax's MaskedNode (a frozen leaf) through."""
    if config.scan_layers and len(path) > 1 and path[1].startswith("layers_"):
        node = tree[path[0]]["layers"]
        for key in path[2:]:
            node = node[key]
        return node if isinstance(node, optax.MaskedNode) else node[int(path[1][7:])]
    return mapping.leaf(tree, path, config)


def t5x_view(tree: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """A t5pipe tree (params, gradients or updates; numpy, jax or traced) as t5x's
    `t5x/examples/t5` layout: {t5x name: one layer's array}, attention kernels
    [embed, heads * kv]. Leaves t5x has no name for (a soft prompt) keep their path."""
    view = {}
    for entry in _canonical_entries(config):
        part = entry.parts[0]
        x = _layer_of(tree, part.path, config)
        if not isinstance(x, optax.MaskedNode):
            x = x.reshape(mapping.to_t5x_shape(part.shape, part.kind))
        view[entry.name] = x
    if "prompt" in tree:
        view["prompt"] = tree["prompt"]
    return view


def from_t5x_view(view: Mapping[str, Any], config: T5Config) -> dict[str, Any]:
    """Inverse of `t5x_view` (layers stacked again when `config.scan_layers`)."""
    import jax.numpy as jnp

    tree: dict[str, Any] = {}
    stacked: dict[mapping.Path, list] = {}
    for entry in _canonical_entries(config):
        part = entry.parts[0]
        x = view[entry.name]
        x = x if isinstance(x, optax.MaskedNode) else x.reshape(part.shape)
        if config.scan_layers and len(part.path) > 1 and part.path[1].startswith("layers_"):
            stacked.setdefault((part.path[0], "layers", *part.path[2:]), []).append(x)
            continue
        _set(tree, part.path, x)
    for path, layers in stacked.items():
        masked = isinstance(layers[0], optax.MaskedNode)
        _set(tree, path, layers[0] if masked else jnp.stack(layers))
    if "prompt" in view:
        tree["prompt"] = view["prompt"]
    return tree


def _set(tree: dict, path: mapping.Path, value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def factor_like_t5x(
    optimizer: optax.GradientTransformation, config: T5Config
) -> optax.GradientTransformation:
    """`optimizer` run on `t5x_view` of the parameters: an optax Adafactor inside then
    factors, clips and scales each parameter as t5x's Adafactor does, and its state
    is keyed by t5x parameter names."""

    def init(params):
        return optimizer.init(t5x_view(params, config))

    def update(updates, state, params=None):
        view_params = None if params is None else t5x_view(params, config)
        new, state = optimizer.update(t5x_view(updates, config), state, view_params)
        return from_t5x_view(new, config), state

    return optax.GradientTransformation(init, update)


# ---------------------------------------------------------------------------
# t5x state -> optax state

_STATE_NODES = (optax.FactoredState, optax.EmaState, optax.ScaleByScheduleState)


class _Sources:
    """t5x's statistics by t5pipe leaf; dense estimates made once per t5x array."""

    def __init__(self, states, config: T5Config, layout: mapping.T5xLayout):
        self.states, self.config, self.layout = states, config, layout
        self.index: dict[mapping.Path, tuple[mapping.T5xArray, int]] = {}
        for entry in mapping.t5x_arrays(config, layout):
            for i, part in enumerate(entry.parts):
                self.index.setdefault(part.path, (entry, i))
        self._dense: dict[tuple[str, str], np.ndarray] = {}

    def slots(self, entry: mapping.T5xArray) -> Mapping[str, np.ndarray]:
        if entry.name not in self.states:
            raise ValueError(f"no Adafactor state for {entry.name} in state/param_states/")
        return self.states[entry.name]

    def factoring(self, entry: mapping.T5xArray) -> Factoring | None:
        rule = t5x_factoring(entry, self.layout)
        return stored_factoring(entry.name, entry.shape, self.slots(entry), rule)

    def _full(self, entry: mapping.T5xArray, what: str) -> np.ndarray:
        key = (entry.name, what)
        if key not in self._dense:
            slots = self.slots(entry)
            if what == "v":
                self._dense[key] = dense_second_moment(slots, self.factoring(entry))
            else:
                m = slots.get("m")
                has_m = m is not None and tuple(m.shape) == entry.shape
                self._dense[key] = np.asarray(m if has_m else np.zeros(entry.shape), np.float32)
        return self._dense[key]

    def layer(self, path: mapping.Path, what: str) -> np.ndarray:
        """One layer's dense second moment ("v") or momentum ("m"), t5pipe-shaped."""
        entry, i = self.index[path]
        full = self._full(entry, what)
        part = entry.parts[i]
        layer = full[(slice(None),) * self.layout.scan_axis + (i,)] if entry.stacked else full
        return mapping.to_t5pipe(layer, part)


class _Target:
    """An optax state leaf: the unscanned t5pipe leaves it holds and how it lays them out."""

    def __init__(self, keys: tuple[str, ...], config: T5Config, canonical):
        self.paths, self.kind, self.stacked = [keys], mapping.SAME, False
        if len(keys) == 1 and keys[0] in canonical:  # inside factor_like_t5x
            part = canonical[keys[0]].parts[0]
            self.paths, self.kind = [part.path], part.kind
        elif config.scan_layers and len(keys) > 1 and keys[1] == "layers":
            n = mapping.stack_size(config, keys[0])
            self.paths = [(keys[0], f"layers_{i}", *keys[2:]) for i in range(n)]
            self.stacked = True

    def gather(self, sources: _Sources, what: str) -> np.ndarray:
        layers = [mapping.from_t5pipe(sources.layer(p, what), self.kind) for p in self.paths]
        return np.stack(layers) if self.stacked else layers[0]

    def copyable(self, sources: _Sources, shape, factoring) -> Mapping[str, np.ndarray] | None:
        """t5x's own slots when they already are what optax keeps for this leaf."""
        if self.stacked:
            return None
        entry, _ = sources.index[self.paths[0]]
        if entry.stacked or entry.shape != tuple(shape) or sources.factoring(entry) != factoring:
            return None
        return {k: np.asarray(v, np.float32) for k, v in sources.slots(entry).items()}


def _keys(keypath) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in keypath)


def _optax_factoring(v_row_leaf, shape) -> Factoring | None:
    return None if tuple(v_row_leaf.shape) == (1,) else heuristic_factoring(tuple(shape))


def _fill_factored(node: optax.FactoredState, sources, config, canonical, step):
    results = {}

    def convert(keypath, v_row, v_col, v):
        del v_col
        keys = _keys(keypath)
        if not keys or keys[0] == "prompt":  # no t5x counterpart: fresh statistics
            return
        target = _Target(keys, config, canonical)
        if target.paths[0] not in sources.index:
            return
        shape = v.shape if tuple(v.shape) != (1,) else _param_shape(target, sources)
        factoring = _optax_factoring(v_row, shape)
        slots = target.copyable(sources, shape, factoring)
        results[keys] = slots or refactor(target.gather(sources, "v"), factoring)

    jax.tree_util.tree_map_with_path(convert, node.v_row, node.v_col, node.v)

    def pick(slot):
        def fill(keypath, leaf):
            found = results.get(_keys(keypath))
            return found[slot] if found is not None else np.zeros(leaf.shape, leaf.dtype)

        return jax.tree_util.tree_map_with_path(fill, getattr(node, slot))

    count = np.asarray(step, node.count.dtype)
    return optax.FactoredState(count=count, v_row=pick("v_row"), v_col=pick("v_col"), v=pick("v"))


def _param_shape(target: _Target, sources: _Sources) -> tuple[int, ...]:
    layer = mapping.to_t5x_shape(sources.index[target.paths[0]][0].parts[0].shape, target.kind)
    return ((len(target.paths),) if target.stacked else ()) + tuple(layer)


def _fill_momentum(node: optax.EmaState, sources, config, canonical, step):
    def fill(keypath, leaf):
        keys = _keys(keypath)
        target = _Target(keys, config, canonical)
        if keys[0] == "prompt" or target.paths[0] not in sources.index:
            return np.zeros(leaf.shape, leaf.dtype)
        return target.gather(sources, "m").astype(leaf.dtype)

    ema = jax.tree_util.tree_map_with_path(fill, node.ema)
    return optax.EmaState(count=np.asarray(step, node.count.dtype), ema=ema)


def optax_state_from_t5x(
    states: Mapping[str, Mapping[str, np.ndarray]],
    step: int,
    optimizer: optax.GradientTransformation,
    params,
    config: T5Config,
    layout: mapping.T5xLayout = mapping.UNSCANNED,
):
    """The state of `optimizer` (an optax Adafactor, possibly chained, masked or inside
    `factor_like_t5x`) carrying t5x's Adafactor statistics `states` ({t5x name: slots})
    and `step`. Other states (a schedule's count aside) start fresh. numpy leaves."""
    canonical = {entry.name: entry for entry in _canonical_entries(config)}
    sources = _Sources(states, config, layout)
    abstract = jax.eval_shape(optimizer.init, params)
    found = []

    def convert(node):
        if isinstance(node, optax.FactoredState):
            found.append(node)
            return _fill_factored(node, sources, config, canonical, step)
        if isinstance(node, optax.EmaState):
            return _fill_momentum(node, sources, config, canonical, step)
        if isinstance(node, optax.ScaleByScheduleState):
            return optax.ScaleByScheduleState(count=np.asarray(step, node.count.dtype))
        return np.zeros(node.shape, node.dtype)

    state = jax.tree.map(convert, abstract, is_leaf=lambda x: isinstance(x, _STATE_NODES))
    if not found:
        raise ValueError(
            "the optimizer keeps no Adafactor statistics (no optax FactoredState); t5x's "
            "Adafactor state only carries over into an Adafactor (train.optimizer = @adafactor)"
        )
    return state


def t5x_param_states_from_optax(opt_state, config: T5Config) -> dict[str, dict[str, np.ndarray]]:
    """{t5x name: {v_row, v_col, v, m}} for `write_t5x_checkpoint`, from the state of an
    Adafactor inside `factor_like_t5x` (whose statistics are already t5x's, by t5x name,
    for the `t5x/examples/t5` layout). Without momentum, m is t5x's [1] placeholder."""
    canonical = {entry.name for entry in _canonical_entries(config)}
    found: dict[str, Any] = {}

    def visit(node):
        if isinstance(node, (optax.FactoredState, optax.EmaState)):
            found.setdefault(type(node).__name__, node)
        return node

    jax.tree.map(visit, opt_state, is_leaf=lambda x: isinstance(x, _STATE_NODES))
    factored = found.get("FactoredState")
    if factored is None or not isinstance(factored.v, Mapping) or not canonical <= set(factored.v):
        raise ValueError(
            "the optimizer state holds no Adafactor statistics keyed by t5x names; wrap the "
            "optimizer in factor_like_t5x to carry its state to t5x"
        )
    momentum = found.get("EmaState")
    placeholder = np.zeros((1,), np.float32)
    return {
        name: {
            "v_row": np.asarray(factored.v_row[name], np.float32),
            "v_col": np.asarray(factored.v_col[name], np.float32),
            "v": np.asarray(factored.v[name], np.float32),
            "m": placeholder if momentum is None else np.asarray(momentum.ema[name], np.float32),
        }
        for name in sorted(canonical)
    }
