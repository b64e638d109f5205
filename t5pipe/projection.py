"""The one weight projection every model family uses, and the hook that extends it.

`dense` creates a float32 kernel with logical axis names and applies it with an
einsum. Because every family's attention and MLP projections go through it,
anything that changes what a projection computes (LoRA adapters, see
`t5pipe.lora`) is written once, here, instead of in each family's layers:

    with intercept_projections(interceptor):
        model.apply(...)          # every `dense` call inside passes through it

An interceptor is `interceptor(projection: Projection, outputs) -> outputs`. It
runs inside the owning module's scope, so it may create parameters or submodules
there and draw rngs. Interceptors are read when the model is traced: enter the
context inside the function that `jax.jit` traces, as with
`flax.linen.intercept_methods`, whose semantics this follows at projection level.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Projection:
    """What an interceptor sees of one `dense` call.

    module: the module owning the kernel (bound); name: the kernel's parameter name;
    inputs: the array the kernel is applied to (not yet cast to `dtype`);
    kernel_shape / kernel_axes: the kernel's shape and logical axis names;
    equation: the einsum `inputs,kernel->outputs`; dtype: the computation dtype.
    """

    module: nn.Module
    name: str
    inputs: jax.Array
    kernel_shape: tuple[int, ...]
    kernel_axes: tuple[str | None, ...]
    equation: str
    dtype: jnp.dtype

    @property
    def path(self) -> str:
        """The kernel's parameter path, '/'-joined: `encoder/layers_0/attention/query`."""
        return "/".join((*self.module.path, self.name))


Interceptor = Callable[[Projection, jax.Array], jax.Array]
_INTERCEPTORS: contextvars.ContextVar[tuple[Interceptor, ...]] = contextvars.ContextVar(
    "t5pipe_projection_interceptors", default=()
)


@contextlib.contextmanager
def intercept_projections(interceptor: Interceptor) -> Iterator[None]:
    """Within the context, every `dense` output passes through `interceptor` (after
    those of enclosing contexts)."""
    token = _INTERCEPTORS.set((*_INTERCEPTORS.get(), interceptor))
    try:
        yield
    finally:
        _INTERCEPTORS.reset(token)


def _project(equation: str, inputs: jax.Array, kernel: jax.Array) -> jax.Array:
    """`jnp.einsum(equation, inputs, kernel)`, as one 2-D matmul where the einsum
    contracts the trailing input axes with the leading kernel axes in order
    (`ble,ehd->blhd`, `blhd,hde->ble`): inputs [rows, contracted] @ kernel
    [contracted, rest]. A batched einsum with several free axes on each side leaves
    XLA:CPU transposed copies in the gradient; the 2-D form's gradient is two plain
    matmuls. Other equations go to einsum unchanged.

    Both ways accumulate in float32 and round the result to the operands' dtype once,
    as a bfloat16 matmul on any backend does at best; XLA:CPU runs a bfloat16 matmul
    asked for a bfloat16 result 2.5x slower than one asked for float32 (140 vs 354
    GFLOP/s, [1024, 512] x [512, 1024] on the development CPU), and accelerators fuse
    the rounding into the matmul."""
    lhs, out = equation.split("->")
    ins, ker = lhs.split(",")
    n = len(ins) - len(set(ins) & set(ker))  # leading input axes kept
    contracted = ins[n:]
    if (
        "." in equation
        or ker[: len(contracted)] != contracted
        or out != ins[:n] + ker[len(contracted) :]
        or not contracted
    ):
        return jnp.einsum(equation, inputs, kernel, preferred_element_type=jnp.float32).astype(
            inputs.dtype
        )
    rows = inputs.shape[:n]
    rest = kernel.shape[len(contracted) :]
    inputs, kernel = inputs.reshape((math.prod(rows), -1)), kernel.reshape((-1, math.prod(rest)))
    if inputs.dtype == jnp.float32:
        flat = inputs @ kernel  # nothing to round: autodiff's gradient is already right
    else:
        flat = _matmul(inputs, kernel)
    return flat.reshape(rows + rest)


def _dot(x: jax.Array, y: jax.Array, contract: tuple[int, int], dtype) -> jax.Array:
    """x, y 2-D, contracting x's axis contract[0] with y's contract[1]; float32
    accumulation, the result rounded to `dtype`."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    out = jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)
    return out.astype(dtype)


@jax.custom_vjp
def _matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """x [rows, k] @ w [k, n] -> [rows, n] in x's dtype, accumulated in float32.

    The gradient's two matmuls take the output's cotangent in the activation dtype and
    accumulate in float32 too; differentiating the plain expression instead would feed
    them the float32 cotangent of the rounding, and a float32 x bfloat16 matmul runs
    as a slow float32 one."""
    return _dot(x, w, (1, 0), x.dtype)


def _matmul_forward(x, w):
    return _matmul(x, w), (x, w)


def _matmul_backward(residuals, cotangent):
    x, w = residuals
    cotangent = cotangent.astype(x.dtype)
    return _dot(cotangent, w, (1, 1), x.dtype), _dot(x, cotangent, (0, 0), w.dtype)


_matmul.defvjp(_matmul_forward, _matmul_backward)


def dense(
    module: nn.Module,
    name: str,
    inputs: jax.Array,
    kernel_shape: Sequence[int],
    kernel_axes: Sequence[str | None],
    equation: str,
    init: Callable,
    dtype,
) -> jax.Array:
    """`jnp.einsum(equation, inputs, kernel)` with a float32 kernel parameter `name` of
    `module`, partitioned by `kernel_axes`; both operands are cast to `dtype` first.

    E.g. attention's query: inputs [batch, length, embed], kernel [embed, heads, kv]
    ("embed", "heads", "kv"), equation "ble,ehd->blhd" -> [batch, length, heads, kv].
    Call it from the module's compact method (the kernel is created in its scope).
    """
    kernel_shape, kernel_axes = tuple(kernel_shape), tuple(kernel_axes)
    kernel = module.param(
        name, nn.with_logical_partitioning(init, kernel_axes), kernel_shape, jnp.float32
    )
    dtype = jnp.dtype(dtype)
    outputs = _project(equation, inputs.astype(dtype), kernel.astype(dtype))
    interceptors = _INTERCEPTORS.get()
    if interceptors:
        projection = Projection(module, name, inputs, kernel_shape, kernel_axes, equation, dtype)
        for interceptor in interceptors:
            outputs = interceptor(projection, outputs)
    return outputs


def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """`jax.lax.dot_general` for flax layers (`nn.DenseGeneral(dot_general=...)`) with
    `_project`'s numerics: float32 accumulation, the result in lhs's dtype. lhs
    [..., k] x rhs [k, n] (the output layer) runs as `_matmul`."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    if (
        tuple(lhs_contract) == (lhs.ndim - 1,)
        and tuple(rhs_contract) == (0,)
        and rhs.ndim == 2
        and not lhs_batch
        and not rhs_batch
        and lhs.dtype != jnp.float32
    ):
        rows = lhs.shape[:-1]
        flat = _matmul(lhs.reshape((math.prod(rows), lhs.shape[-1])), rhs.astype(lhs.dtype))
        return flat.reshape((*rows, rhs.shape[1]))
    out = jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision, preferred_element_type=jnp.float32
    )
    return out.astype(preferred_element_type or jnp.result_type(lhs, rhs))
