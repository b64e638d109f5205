"""Reading and writing t5x checkpoints (T5X msgpack + TensorStore, and t5x's Orbax format).

No t5x code is imported or needed: the formats are read with flax's msgpack,
TensorStore and orbax. Modules: `checkpoints` (formats), `mapping` (parameter names
and layouts), `optimizer_state` (Adafactor state), `convert` (the functions below).
"""

from t5pipe.t5x.checkpoints import is_t5x_checkpoint, open_checkpoint
from t5pipe.t5x.convert import (
    read_t5x_optimizer_state,
    read_t5x_params,
    t5config_from_t5x,
    write_t5x_checkpoint,
)

__all__ = [
    "is_t5x_checkpoint",
    "open_checkpoint",
    "read_t5x_optimizer_state",
    "read_t5x_params",
    "t5config_from_t5x",
    "write_t5x_checkpoint",
]
