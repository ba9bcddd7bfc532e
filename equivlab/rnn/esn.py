"""Echo-state networks: a fixed random reservoir and a trained readout.

The recurrent weights W and U are what makes an RNN hard to train
(gradients through many steps vanish or explode; Bengio, Simard & Frasconi
1994); an echo-state
network (Jaeger 2001) fixes them at random, scales W to a chosen spectral
radius below ~1 so the state fades the past smoothly ("echo state
property"), and trains only the readout V, a convex problem solved here in
closed form (ridge regression) or by gradient descent on a softmax readout.
"""

import functools
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from equivlab import checks
from equivlab.rnn import cells
from equivlab.rnn.scan import unroll

#: An echo-state network's parameters, its arrays by name.
Params = dict[str, jax.Array]


def compute_spectral_radius(w: jax.Array) -> float:
  """The largest eigenvalue modulus of a square matrix (computed on host)."""
  return float(np.max(np.abs(np.linalg.eigvals(np.asarray(w, np.float64)))))


def init_esn(
  key: chex.PRNGKey,
  input_size: int,
  reservoir_size: int,
  *,
  spectral_radius: float = 0.9,
  input_scale: float = 1.0,
  density: float = 1.0,
  leak: float = 1.0,
  dtype: Any = jnp.float32,
) -> Params:
  """A random reservoir whose recurrent matrix has a given spectral radius.

  Args:
    key: a PRNG key.
    input_size: D.
    reservoir_size: N.
    spectral_radius: the target largest `abs(eigenvalue)` of `W`.
    input_scale: the input weights are uniform in [-input_scale, input_scale].
    density: the fraction of non-zero recurrent weights.
    leak: the leak rate a in `h' = (1 - a) h + a tanh(...)`, in (0, 1].
    dtype: the parameter dtype, a float dtype or its name ("float32",
      "bf16", ...).

  Returns:
    A dict with `W_in (N, D)`, `W (N, N)`, `b (N,)` and the scalar `leak`.

  Raises:
    TypeError: for sizes that are not ints, rates that are not numbers or
      a dtype that is not a float.
    ValueError: for sizes below 1, a non-positive radius, density or leak
      out of range.
  """
  checks.check_int("input_size", input_size, minimum=1)
  checks.check_int("reservoir_size", reservoir_size, minimum=1)
  for name, value in (
    ("spectral_radius", spectral_radius),
    ("input_scale", input_scale),
    ("density", density),
    ("leak", leak),
  ):
    checks.check_number(name, value)
  if not spectral_radius > 0:
    raise ValueError(
      f"spectral_radius must be positive, got {spectral_radius}."
    )
  if not 0 < density <= 1 or not 0 < leak <= 1:
    raise ValueError(
      f"density and leak must lie in (0, 1], got {density} and {leak}."
    )
  dtype = cells.float_dtype(dtype)
  w, w_in, b = _draw(key, input_size, reservoir_size, density, dtype)
  radius = compute_spectral_radius(w)
  return {
    "W_in": input_scale * w_in,
    "W": (w * (spectral_radius / max(radius, 1e-12))).astype(dtype),
    "b": 0.1 * b,
    "leak": jnp.asarray(leak, dtype),
  }


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw(key, input_size, reservoir_size, density, dtype):
  """Unscaled random reservoir, input weights in [-1, 1] and biases."""
  k_in, k_w, k_mask, k_b = jax.random.split(key, 4)
  w = jax.random.normal(k_w, (reservoir_size, reservoir_size), dtype)
  if density < 1:
    w = w * jax.random.bernoulli(k_mask, density, w.shape)
  w_in = jax.random.uniform(k_in, (reservoir_size, input_size), dtype, -1, 1)
  b = jax.random.uniform(k_b, (reservoir_size,), dtype, -1.0, 1.0)
  return w, w_in, b


def esn_cell(
  params: Params, h: jax.Array, x: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One leaky reservoir step `h' = (1-a) h + a tanh(W_in x + W h + b)`."""
  new = jnp.tanh(params["W_in"] @ x + params["W"] @ h + params["b"])
  h = (1 - params["leak"]) * h + params["leak"] * new
  return h, h


def esn_states(
  params: Params,
  xs: jax.Array,
  *,
  lengths: jax.Array | None = None,
  time_major: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Drives the reservoir from a zero state.

  Args:
    params: from `init_esn`.
    xs: [T, D], or batched [B, T, D] (or [T, B, D] when `time_major`).
    lengths: optional valid lengths [B].
    time_major: layout of a batched `xs`.

  Returns:
    `(last_state, states)` as `equivlab.rnn.unroll`.
  """
  size = params["W"].shape[0]
  if jnp.ndim(xs) == 2:
    batch_shape = ()
  else:
    batch_shape = (jnp.shape(xs)[1 if time_major else 0],)
  h0 = jnp.zeros((*batch_shape, size), params["W"].dtype)
  return unroll(
    esn_cell, params, xs, h0, lengths=lengths, time_major=time_major
  )


def _with_bias(features: jax.Array) -> jax.Array:
  ones = jnp.ones(features.shape[:-1] + (1,), features.dtype)
  return jnp.concatenate([features, ones], axis=-1)


def ridge_readout(
  features: jax.Array, targets: jax.Array, l2: float = 1e-6
) -> jax.Array:
  """The closed-form ridge regression readout `V = Y^T X (X^T X + l2 I)^-1`.

  Args:
    features: [M, N] reservoir states (a bias column is appended).
    targets: [M, K] regression targets (one-hot classes for classification).
    l2: the ridge penalty (> 0 keeps the system well posed).

  Returns:
    The readout `V` [K, N + 1]; predict with `readout_apply`.

  Raises:
    TypeError: if `l2` is not a number.
    ValueError: for mismatched shapes or a negative penalty.
  """
  checks.check_number("l2", l2)
  if jnp.ndim(features) != 2 or jnp.ndim(targets) != 2:
    raise ValueError(
      f"features and targets must be [M, N] and [M, K], got "
      f"{jnp.shape(features)} and {jnp.shape(targets)}."
    )
  if jnp.shape(features)[0] != jnp.shape(targets)[0]:
    raise ValueError(
      f"features and targets must have the same M, got "
      f"{jnp.shape(features)[0]} and {jnp.shape(targets)[0]}."
    )
  if l2 < 0:
    raise ValueError(f"l2 must be non-negative, got {l2}.")
  return _ridge_solve(features, targets, l2)


@jax.jit
def _ridge_solve(features, targets, l2):
  x = _with_bias(features)
  gram = x.T @ x + l2 * jnp.eye(x.shape[1], dtype=x.dtype)
  return jnp.linalg.solve(gram, x.T @ targets).T


def readout_apply(readout: jax.Array, features: jax.Array) -> jax.Array:
  """`V [x; 1]`: [K, N + 1], [..., N] -> [..., K]."""
  return _with_bias(features) @ readout.T


def gradient_readout(
  key: chex.PRNGKey,
  features: jax.Array,
  labels: jax.Array,
  num_classes: int,
  *,
  num_steps: int = 500,
  learning_rate: float = 1e-2,
) -> tuple[jax.Array, jax.Array]:
  """A softmax readout trained by Adam on the cross-entropy (full batch).

  Args:
    key: a PRNG key for the initial readout.
    features: [M, N] reservoir states.
    labels: [M] integer classes.
    num_classes: K.
    num_steps: full-batch Adam steps.
    learning_rate: Adam's step size.

  Returns:
    `(readout [K, N + 1], losses [num_steps])`.

  Raises:
    TypeError: for a non-int `num_classes` / `num_steps` or a non-number
      learning rate.
    ValueError: for float labels, a label outside [0, num_classes), shapes
      that disagree, or a non-positive class count, step count or rate.
  """
  if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
    raise ValueError(
      f"labels must be integers, got dtype {jnp.result_type(labels)}."
    )
  checks.check_int("num_classes", num_classes, minimum=1)
  checks.check_int("num_steps", num_steps, minimum=1)
  checks.check_number(
    "learning_rate", learning_rate, minimum=0.0, strict_minimum=True
  )
  checks.check_rank("features", features, 2, "[M, N]")
  if jnp.shape(labels) != jnp.shape(features)[:1]:
    raise ValueError(
      f"labels must be [M] = {jnp.shape(features)[:1]} to match features, "
      f"got {jnp.shape(labels)}."
    )
  checks.check_labels("labels", labels, num_classes)
  return _fit_readout(
    key, features, labels, num_classes, num_steps, learning_rate
  )


@functools.partial(jax.jit, static_argnums=(3, 4, 5))
def _fit_readout(key, features, labels, num_classes, num_steps, learning_rate):
  size = jnp.shape(features)[1]
  readout = 0.01 * jax.random.normal(
    key, (num_classes, size + 1), features.dtype
  )
  optimizer = optax.adam(learning_rate)

  def loss_fn(v):
    logits = readout_apply(v, features)
    return jnp.mean(
      optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    )

  def step(state, _):
    v, opt_state = state
    loss, grad = jax.value_and_grad(loss_fn)(v)
    updates, opt_state = optimizer.update(grad, opt_state, v)
    return (optax.apply_updates(v, updates), opt_state), loss

  (readout, _), losses = jax.lax.scan(
    step, (readout, optimizer.init(readout)), None, length=num_steps
  )
  return readout, losses
