"""Central finite differences: the reference every hand-written gradient meets.

The method: perturb one parameter at a time by +-eps,
take `(f(x + eps) - f(x - eps)) / (2 eps)`, and compare with the analytic
gradient by the worst element-wise relative error. Use float64 (under
`jax.enable_x64(True)`) wherever the tolerance matters: in float32 the
truncation and round-off errors of the difference quotient meet near 1e-3.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


def finite_difference_grad(
  fn: Callable[..., jax.Array],
  params: PyTree,
  *args: Any,
  eps: float = 1e-6,
) -> PyTree:
  """The gradient of a scalar `fn(params, *args)` by central differences.

  All `2 * P` perturbed evaluations run as one vmapped call, so the cost is
  one batched forward pass rather than a Python loop over parameters.

  Args:
    fn: a function of `(params, *args)` returning a scalar.
    params: the point at which to differentiate (any pytree of arrays).
    *args: further arguments passed to `fn` unchanged.
    eps: the half-width of the difference quotient.

  Returns:
    A pytree shaped like `params` holding the estimated gradient.

  Raises:
    ValueError: if `fn` does not return a scalar or `eps` is not positive.
  """
  if not eps > 0:
    raise ValueError(f"eps must be positive, got {eps}.")
  flat, unravel = ravel_pytree(params)
  out = jnp.asarray(fn(params, *args))
  if out.shape != ():
    raise ValueError(
      f"fn must return a scalar, got an array of shape {out.shape}."
    )
  directions = eps * jnp.eye(flat.size, dtype=flat.dtype)

  def f(x):
    return fn(unravel(x), *args)

  f_plus = jax.vmap(f)(flat[None, :] + directions)
  f_minus = jax.vmap(f)(flat[None, :] - directions)
  return unravel((f_plus - f_minus) / (2 * eps))


def max_relative_error(a: PyTree, b: PyTree, *, floor: float = 1e-8) -> float:
  """The worst `|a - b| / max(|a|, |b|, floor)` over all leaves of two pytrees.

  Args:
    a: a pytree of arrays.
    b: a pytree with the same structure and shapes as `a`.
    floor: the smallest denominator, so that two near-zero entries do not
      produce a large relative error from round-off alone.

  Returns:
    The worst relative error as a Python float (0.0 for empty pytrees).

  Raises:
    ValueError: if the two pytrees differ in structure or shapes.
  """
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  if tree_a != tree_b:
    raise ValueError(
      f"Pytree structures differ: expected {tree_a}, got {tree_b}."
    )
  worst = 0.0
  for x, y in zip(leaves_a, leaves_b, strict=True):
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.shape != y.shape:
      raise ValueError(
        f"Leaf shapes differ: expected {x.shape}, got {y.shape}."
      )
    if x.size == 0:
      continue
    denom = jnp.maximum(jnp.maximum(jnp.abs(x), jnp.abs(y)), floor)
    worst = max(worst, float(jnp.max(jnp.abs(x - y) / denom)))
  return worst


def check_gradients(
  fn: Callable[..., jax.Array],
  grad_fn: Callable[..., PyTree],
  params: PyTree,
  *args: Any,
  eps: float = 1e-6,
) -> float:
  """Compares `grad_fn(params, *args)` with central differences of `fn`.

  Args:
    fn: a scalar function of `(params, *args)`.
    grad_fn: the gradient under test, a function of `(params, *args)`
      returning a pytree shaped like `params` (for example a hand-written
      backward pass, or `jax.grad(fn)`).
    params: the point at which to compare.
    *args: further arguments for both functions.
    eps: the half-width of the difference quotient.

  Returns:
    The worst element-wise relative error (see `max_relative_error`).
  """
  numeric = finite_difference_grad(fn, params, *args, eps=eps)
  return max_relative_error(grad_fn(params, *args), numeric)
