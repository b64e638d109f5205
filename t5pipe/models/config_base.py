"""What every family's config dataclass shares: replace / to_dict / from_dict, checks.

A family config is a frozen dataclass naming its family in the class variable
`family`; `to_dict()` writes it as the key "family" (checkpoints store that dict, so
they say which family they hold; old T5 checkpoints have no such key). Nested
stack configs (T5Gemma's encoder and decoder) are listed in `nested`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from t5pipe.model_config import DTYPES, REMAT_POLICIES

# Activations in float64 (under `jax.enable_x64`) serve numerical reference checks.
REFERENCE_DTYPES = ("float64",)


class FamilyConfig:
    family: ClassVar[str]
    nested: ClassVar[dict[str, type]] = {}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        values = dict(values)
        family = values.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(f"{cls.__name__} holds family {cls.family!r}, not {family!r}")
        return _build(cls, values, cls.nested)

    def check_common(self) -> None:
        """Checks of the fields every family has (dtype, remat, dropout)."""
        name = type(self).__name__
        if self.dtype not in DTYPES + REFERENCE_DTYPES:
            raise ValueError(f"{name}.dtype={self.dtype!r}: expected one of {DTYPES}")
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(
                f"{name}.remat_policy={self.remat_policy!r}: expected one of {REMAT_POLICIES}"
            )
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"{name}.dropout_rate={self.dropout_rate} must be in [0, 1)")


def _build(cls, values: dict[str, Any], nested: dict[str, type]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; known: {sorted(known)}")
    for name, value in values.items():
        if name in nested and isinstance(value, dict):
            values[name] = _build(nested[name], dict(value), {})
        elif isinstance(value, list):
            values[name] = tuple(value)  # JSON gives lists; configs stay hashable
    return cls(**values)


def check_positive(config, *names: str) -> None:
    for name in names:
        if getattr(config, name) <= 0:
            raise ValueError(
                f"{type(config).__name__}.{name} must be positive, got {getattr(config, name)}"
            )
