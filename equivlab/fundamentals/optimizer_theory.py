"""Optimiser claims made executable on top of optax.

- Adam's moments in closed form (Kingma & Ba 2015):
  `m_t = (1 - b1) sum_{i<=t} b1^(t-i) g_i` and
  `v_t = (1 - b2) sum_{i<=t} b2^(t-i) g_i^2`.
- Adam with `b1 = 0`, `b2 -> 1` and `lr = eta0 / sqrt(t)` approaches
  AdaGrad(eta0) (Duchi, Hazan & Singer 2011). The limit holds exactly only
  when both sides drop their stabilisers: optax's Adam adds `eps` outside
  the root (1e-8 by default), and optax's AdaGrad starts its accumulator at
  0.1 and adds `eps` (1e-7) inside the root; `adam_adagrad_gap` measures the
  gap either way.
- RMSProp (Tieleman & Hinton 2012) with eps inside the root, as an optax
  `GradientTransformation`.
- The step sizes `alpha_k = C0 / (C1 + k)`, which meet the conditions of
  Robbins & Monro 1951, as an optax schedule.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from equivlab import checks

PyTree = Any


def adam_moments_closed_form(
  grads: jax.Array, b1: float, b2: float
) -> tuple[jax.Array, jax.Array]:
  """Adam's first and second moments after every step, in closed form.

  `m_t = A sum_i B_i g_i` and `v_t = C sum_i D_i g_i^2` with `A = 1 - b1`,
  `B_i = b1^(t-i)`, `C = 1 - b2`, `D_i = b2^(t-i)`, from `m_0 = v_0 = 0`
  (Kingma & Ba 2015).

  Args:
    grads: the gradients of steps `1..T`, stacked `[T, ...]`.
    b1: the first-moment decay in [0, 1).
    b2: the second-moment decay in [0, 1).

  Returns:
    `(m, v)`, each `[T, ...]`: row `t - 1` holds `m_t` and `v_t`.

  Raises:
    ValueError: if a decay is outside [0, 1) or `grads` has no time axis.
  """
  for name, b in (("b1", b1), ("b2", b2)):
    if not 0.0 <= b < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {b}.")
  grads = jnp.asarray(grads)
  if grads.ndim < 1 or grads.shape[0] < 1:
    raise ValueError(
      f"grads must be stacked [T, ...] with T >= 1, got shape {grads.shape}."
    )
  steps = jnp.arange(grads.shape[0])
  lag = steps[:, None] - steps[None, :]  # t - i, negative above the diagonal

  def weights(b):
    # (1 - b) b^(t - i) for i <= t, else 0; 0^0 = 1 covers b = 0.
    w = (1.0 - b) * jnp.power(b, jnp.maximum(lag, 0).astype(grads.dtype))
    return jnp.where(lag >= 0, w, 0.0).astype(grads.dtype)

  flat = grads.reshape(grads.shape[0], -1)
  m = (weights(b1) @ flat).reshape(grads.shape)
  v = (weights(b2) @ flat**2).reshape(grads.shape)
  return m, v


def _check_number(name: str, value, **bounds) -> None:
  """`checks.check_number` for concrete values; tracers pass (under vmap)."""
  if (
    isinstance(value, jax.Array)
    and value.ndim == 0
    and checks.is_concrete(value)
  ):
    value = value.item()
  if checks.is_concrete(value):
    checks.check_number(name, value, **bounds)


def inverse_sqrt_schedule(eta0: float) -> optax.Schedule:
  """`eta_t = eta0 / sqrt(t)` for steps `t = 1, 2, ...`.

  optax calls a schedule with the number of updates done so far, so step
  `t` sees `count = t - 1`.

  Args:
    eta0: the base step size, positive.

  Returns:
    An optax schedule.

  Raises:
    ValueError: if `eta0` is not positive.
  """
  _check_number("eta0", eta0, minimum=0, strict_minimum=True)
  return lambda count: eta0 / jnp.sqrt(count + 1.0)


def adam_as_adagrad(
  eta0: float, b2: float, *, eps: float = 0.0
) -> optax.GradientTransformation:
  """Adam with `b1 = 0` and `lr = eta0 / sqrt(t)`: AdaGrad as `b2 -> 1`.

  Args:
    eta0: the AdaGrad step size it approaches.
    b2: the second-moment decay in (0, 1).
    eps: optax's Adam `eps` (outside the root); 0 for the exact limit.

  Returns:
    An optax `GradientTransformation`.

  Raises:
    ValueError: if `eta0` is not a finite number > 0, `b2` is outside
      (0, 1) or `eps` is negative (traced values are not checked).
    TypeError: if one is not a real number.
  """
  _check_number("eta0", eta0, minimum=0, strict_minimum=True)
  _check_number(
    "b2", b2, minimum=0, maximum=1, strict_minimum=True, strict_maximum=True
  )
  _check_number("eps", eps, minimum=0)
  return optax.adam(
    inverse_sqrt_schedule(eta0), b1=0.0, b2=b2, eps=eps, eps_root=0.0
  )


def optimizer_trajectory(
  optimizer: optax.GradientTransformation,
  grad_fn: Callable[[jax.Array, jax.Array], jax.Array],
  w0: jax.Array,
  num_steps: int,
) -> jax.Array:
  """Runs `optimizer` on `grad_fn(w, t)` for `num_steps` steps (a scan).

  Args:
    optimizer: any optax transformation.
    grad_fn: the (possibly stochastic) gradient at `w` on step `t`, where
      `t` counts from 0; stochastic gradients use `fold_in(key, t)` inside.
    w0: the starting parameters `[P]`.
    num_steps: the number of updates.

  Returns:
    The iterates `w_0 .. w_T` stacked `[T + 1, P]`.

  Raises:
    TypeError: if `optimizer` is not an optax transformation, `grad_fn`
      is not callable or `num_steps` is not an int.
    ValueError: if `num_steps` is negative.
  """
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"optimizer must be an optax GradientTransformation, got {optimizer!r}."
    )
  if not callable(grad_fn):
    raise TypeError(
      f"grad_fn must be callable (w, t) -> grad, got {grad_fn!r}."
    )
  checks.check_int("num_steps", num_steps, minimum=0)

  def step(carry, t):
    w, state = carry
    updates, state = optimizer.update(grad_fn(w, t), state, w)
    w = optax.apply_updates(w, updates)
    return (w, state), w

  _, ws = jax.lax.scan(step, (w0, optimizer.init(w0)), jnp.arange(num_steps))
  return jnp.concatenate([w0[None], ws], axis=0)


def noisy_quadratic_grad(
  key: jax.Array, curvature: jax.Array, centre: jax.Array, noise: float
) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Stochastic gradients of `1/2 sum_j a_j (w_j - c_j)^2` plus noise.

  Args:
    key: the PRNG key of the noise; step `t` uses `fold_in(key, t)`.
    curvature: `a` `[P]`, positive.
    centre: `c` `[P]`.
    noise: the standard deviation of the additive gradient noise.

  Returns:
    `grad_fn(w, t) -> [P]` for `optimizer_trajectory`.
  """

  def grad_fn(w, t):
    eps = jax.random.normal(jax.random.fold_in(key, t), w.shape, w.dtype)
    return curvature * (w - centre) + noise * eps

  return grad_fn


class GapRow(NamedTuple):
  """One row of the Adam -> AdaGrad table."""

  b2: float
  max_gap: float  # max_t ||w_adam_t - w_adagrad_t||_inf
  relative_gap: float  # max_gap / max_t ||w_adagrad_t - w_0||_inf


def adam_adagrad_gap(
  b2s: tuple[float, ...] = (0.9, 0.99, 0.999, 0.9999),
  *,
  eta0: float = 0.5,
  num_steps: int = 200,
  dim: int = 8,
  noise: float = 1.0,
  adam_eps: float = 0.0,
  adagrad_eps: float = 0.0,
  adagrad_initial_accumulator: float = 0.0,
  seed: int = 0,
) -> list[GapRow]:
  """How far Adam(b1=0, b2, eta0/sqrt(t)) lands from AdaGrad(eta0).

  Both optimisers descend the same noisy quadratic (the gradient noise of
  step `t` is shared), each from its own iterates, so the gap is the
  optimisers' alone. With all stabilisers at 0 it shrinks to 0 as
  `b2 -> 1`; with optax's defaults (`adam_eps=1e-8`, `adagrad_eps=1e-7`,
  `adagrad_initial_accumulator=0.1`) it stalls at the accumulator's effect.

  Args:
    b2s: the second-moment decays to compare.
    eta0: the AdaGrad step size.
    num_steps: the trajectory length.
    dim: the number of parameters.
    noise: the gradient noise standard deviation.
    adam_eps: optax Adam's `eps`.
    adagrad_eps: optax AdaGrad's `eps`.
    adagrad_initial_accumulator: optax AdaGrad's `initial_accumulator_value`.
    seed: for the problem and the noise.

  Returns:
    One `GapRow` per `b2`.

  Raises:
    ValueError: if a `b2` is outside (0, 1) or `num_steps < 1`.
  """
  if not b2s or not all(0.0 < b < 1.0 for b in b2s):
    raise ValueError(f"every b2 must be in (0, 1), got {b2s}.")
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  k_a, k_c, k_w, k_n = jax.random.split(jax.random.key(seed), 4)
  curvature = jnp.exp(jax.random.uniform(k_a, (dim,), minval=-2, maxval=1))
  centre = jax.random.normal(k_c, (dim,))
  w0 = centre + 3.0 * jax.random.normal(k_w, (dim,))
  grad_fn = noisy_quadratic_grad(k_n, curvature, centre, noise)
  adagrad = optax.adagrad(
    eta0,
    initial_accumulator_value=adagrad_initial_accumulator,
    eps=adagrad_eps,
  )

  @jax.jit
  def trajectories(b2_values):
    reference = optimizer_trajectory(adagrad, grad_fn, w0, num_steps)

    def adam_run(b2):
      adam = adam_as_adagrad(eta0, b2, eps=adam_eps)
      return optimizer_trajectory(adam, grad_fn, w0, num_steps)

    # One compile for every b2: the decay is a traced value under vmap.
    return reference, jax.vmap(adam_run)(b2_values)

  dtype = w0.dtype
  reference, runs = trajectories(jnp.asarray(b2s, dtype))
  scale = float(jnp.max(jnp.abs(reference - w0[None])))
  rows = []
  for b2, ws in zip(b2s, runs, strict=True):
    gap = float(jnp.max(jnp.abs(ws - reference)))
    rows.append(GapRow(b2=b2, max_gap=gap, relative_gap=gap / scale))
  return rows


class RmsPropState(NamedTuple):
  """The running mean of squared gradients `r` of RMSProp."""

  r: PyTree


def rmsprop(
  learning_rate: float, decay: float = 0.9, eps: float = 1e-8
) -> optax.GradientTransformation:
  """RMSProp (Tieleman & Hinton 2012, lecture 6e).

  `r_l = rho r_{l-1} + (1 - rho) g_l^2`,
  `theta_l = theta_{l-1} - eta / sqrt(r_l + eps) * g_l`, with `r_0 = 0`.
  Equal to `optax.rmsprop(eta, decay=rho, eps=eps)`.

  Args:
    learning_rate: `eta`, positive.
    decay: `rho` in [0, 1).
    eps: inside the root, positive.

  Returns:
    An optax `GradientTransformation`.

  Raises:
    ValueError: for an argument out of range.
  """
  _check_number("learning_rate", learning_rate, minimum=0, strict_minimum=True)
  _check_number("decay", decay, minimum=0, maximum=1, strict_maximum=True)
  _check_number("eps", eps, minimum=0, strict_minimum=True)

  def init(params):
    return RmsPropState(r=jax.tree.map(jnp.zeros_like, params))

  def update(grads, state, params=None):
    del params
    r = jax.tree.map(
      lambda r, g: decay * r + (1.0 - decay) * g**2, state.r, grads
    )
    updates = jax.tree.map(
      lambda r, g: -learning_rate * g / jnp.sqrt(r + eps), r, grads
    )
    return updates, RmsPropState(r=r)

  return optax.GradientTransformation(init, update)


def robbins_monro_schedule(c0: float, c1: float) -> optax.Schedule:
  """`alpha_k = C0 / (C1 + k)` for `k = 0, 1, ...`.

  It meets the Robbins-Monro conditions `sum_k alpha_k = inf` and
  `sum_k alpha_k^2 < inf`. With `C0 = C1 = 1`, SGD on
  `1/2 (w - x_k)^2` computes the running mean of the samples exactly.

  Args:
    c0: positive.
    c1: positive (so that `alpha_0` is finite).

  Returns:
    An optax schedule of the step count `k`.

  Raises:
    ValueError: if `c0` or `c1` is not positive.
  """
  _check_number("c0", c0, minimum=0, strict_minimum=True)
  _check_number("c1", c1, minimum=0, strict_minimum=True)
  return lambda count: c0 / (c1 + count)
