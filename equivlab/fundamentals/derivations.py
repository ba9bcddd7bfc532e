"""Hand-derived forward and backward passes, written out to be checked.

Every backward pass here is the chain rule applied by hand (backpropagation,
Rumelhart, Hinton & Williams 1986; Goodfellow, Bengio & Courville, "Deep
Learning" (2016) section 6.5), and never a call of `jax.grad`: the tests
compare each one with `jax.grad` and with central finite differences
(`equivlab.fundamentals.gradcheck`) in float64.

- Convolution output shapes: `floor((n + 2p - k) / s) + 1` per spatial
  axis (a floor, never a ceiling), and the channel change.
- The 3-D cross-correlation `conv3d_forward` (layout `[C_in, D, H, W]`,
  kernels `[C_out, C_in, kd, kh, kw]`) and its
  backward pass `conv3d_backward` (these two and the shapes live in
  `equivlab.fundamentals.conv_derivations` and are re-exported here).
- 1-D cross-correlation, forward, backward and one SGD step (on the
  worked example of the tests, `dL/dw_2` is 72).
- Batch normalisation forward and backward (Ioffe & Szegedy 2015), with
  the batch variance that squares the deviations.
- Softmax with cross-entropy: the gradient is `y_hat - y` for targets that
  sum to one, `y_hat * sum(y) - y` in general.
- A regression network with two sigmoid hidden layers, its deltas and
  gradients (backpropagation, Rumelhart, Hinton & Williams 1986), and the
  SGD step.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks
from equivlab.fundamentals.conv_derivations import (
  conv3d_backward,
  conv3d_forward,
  conv_output_shape,
  conv_output_size,
)

__all__ = [
  "batch_norm_backward",
  "batch_norm_forward",
  "batch_statistics",
  "conv1d",
  "conv1d_backward",
  "conv1d_loss",
  "conv3d_backward",
  "conv3d_forward",
  "conv_output_shape",
  "conv_output_size",
  "log_softmax",
  "sgd_step",
  "sigmoid_mlp_backward",
  "sigmoid_mlp_forward",
  "sigmoid_mlp_init",
  "sigmoid_mlp_loss",
  "softmax_cross_entropy",
  "softmax_cross_entropy_grad",
]

PyTree = Any


def _check_rank(**arrays: tuple[jax.Array, int]) -> None:
  for name, (array, rank) in arrays.items():
    if jnp.ndim(array) != rank:
      raise ValueError(
        f"{name} must have rank {rank}, got shape {jnp.shape(array)}."
      )


# ---------------------------------------------------------------------------
# 1-D cross-correlation.
# ---------------------------------------------------------------------------


def conv1d(x: jax.Array, w: jax.Array, b: jax.Array) -> jax.Array:
  """Valid 1-D cross-correlation, stride 1: `y_i = sum_j w_j x_{i+j} + b`.

  Args:
    x: the input `[n]`.
    w: the kernel `[k]`, `k <= n`.
    b: a scalar bias.

  Returns:
    `[n - k + 1]`.

  Raises:
    ValueError: for wrong ranks or a kernel longer than the input.
  """
  _check_rank(x=(x, 1), w=(w, 1), b=(b, 0))
  n, k = x.shape[0], w.shape[0]
  if k > n:
    raise ValueError(f"kernel length {k} must not exceed input length {n}.")
  windows = x[jnp.arange(n - k + 1)[:, None] + jnp.arange(k)[None, :]]
  return windows @ w + b


def conv1d_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """`L = 1/2 ||y - conv1d(x, w, b)||^2` with `params = {"w", "b"}`."""
  y_hat = conv1d(x, params["w"], params["b"])
  return 0.5 * jnp.sum((y - y_hat) ** 2)


def conv1d_backward(
  params: dict, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, dict]:
  """The backward pass of `conv1d_loss`, by hand.

  With `r = y_hat - y`: `dL/dw_j = sum_i r_i x_{i+j}` (the cross-correlation
  of the input with the residual) and `dL/db = sum_i r_i`.

  Args:
    params: `{"w": [k], "b": []}`.
    x: `[n]`.
    y: the targets `[n - k + 1]`.

  Returns:
    `(loss, grads)` with `grads` shaped like `params`.

  Raises:
    ValueError: if `y` does not have length `n - k + 1`.
  """
  w, b = params["w"], params["b"]
  _check_rank(x=(x, 1), w=(w, 1), b=(b, 0), y=(y, 1))
  n, k = x.shape[0], w.shape[0]
  if y.shape != (n - k + 1,):
    raise ValueError(
      f"y must have shape ({n - k + 1},) for n={n}, k={k}, got {y.shape}."
    )
  residual = conv1d(x, w, b) - y
  loss = 0.5 * jnp.sum(residual**2)
  # dL/dw_j = sum_i r_i x_{i+j}: correlate x with r (a "kernel" of n-k+1).
  grad_w = conv1d(x, residual, jnp.zeros((), x.dtype))
  return loss, {"w": grad_w, "b": jnp.sum(residual)}


def sgd_step(params: PyTree, grads: PyTree, learning_rate: float) -> PyTree:
  """`theta - learning_rate * grad`: a gradient step descends, never ascends.

  Args:
    params: the parameters, any pytree of arrays.
    grads: their gradients, a pytree of the same structure and shapes.
    learning_rate: the step size, a finite number > 0 (a traced value is
      not checked).

  Returns:
    The updated parameters.

  Raises:
    ValueError: if `learning_rate` is not finite and positive (a negative
      step ascends the loss), or `grads` differs from `params` in structure
      or shapes.
    TypeError: if `learning_rate` is not a real number.
  """
  if checks.is_concrete(learning_rate):
    if isinstance(learning_rate, jax.Array | np.ndarray):
      if learning_rate.ndim == 0:
        learning_rate = learning_rate.item()
    checks.check_number(
      "learning_rate", learning_rate, minimum=0, strict_minimum=True
    )
  p_def, g_def = jax.tree.structure(params), jax.tree.structure(grads)
  if p_def != g_def:
    raise ValueError(
      f"grads must have the structure of params, got {g_def} for {p_def}."
    )
  for p, g in zip(jax.tree.leaves(params), jax.tree.leaves(grads), strict=True):
    if np.shape(p) != np.shape(g):
      raise ValueError(
        f"grads must have the shapes of params, got {np.shape(g)} for a "
        f"parameter of shape {np.shape(p)}."
      )
  return jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)


# ---------------------------------------------------------------------------
# Batch normalisation (Ioffe & Szegedy 2015).
# ---------------------------------------------------------------------------


def batch_statistics(z: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The mini-batch mean and (biased) variance over axis 0.

  `sigma^2 = 1/M sum_i (z_i - mu)^2`: the deviations are squared (their
  plain sum is identically zero).

  Args:
    z: `[M, D]`.

  Returns:
    `(mu, var)`, each `[D]`.

  Raises:
    ValueError: if `z` is not rank 2.
  """
  _check_rank(z=(z, 2))
  mu = jnp.mean(z, axis=0)
  var = jnp.mean((z - mu[None, :]) ** 2, axis=0)
  return mu, var


def batch_norm_forward(
  x: jax.Array, gamma: jax.Array, beta: jax.Array, eps: float = 1e-5
) -> tuple[jax.Array, dict]:
  """Batch norm in training mode (Ioffe & Szegedy 2015).

  Args:
    x: `[M, D]`, statistics over the batch axis 0.
    gamma: the scale `[D]`.
    beta: the shift `[D]`.
    eps: added to the variance.

  Returns:
    `(y, cache)`: `y = gamma * x_hat + beta` `[M, D]`, and the cache the
    backward pass needs.

  Raises:
    ValueError: for wrong ranks or `gamma`/`beta` not shaped `[D]`.
  """
  _check_rank(x=(x, 2), gamma=(gamma, 1), beta=(beta, 1))
  if gamma.shape != x.shape[1:] or beta.shape != x.shape[1:]:
    raise ValueError(
      f"gamma and beta must have shape {x.shape[1:]}, got {gamma.shape} "
      f"and {beta.shape}."
    )
  mu, var = batch_statistics(x)
  x_hat = (x - mu[None, :]) / jnp.sqrt(var + eps)[None, :]
  y = gamma[None, :] * x_hat + beta[None, :]
  cache = {"x": x, "mu": mu, "var": var, "x_hat": x_hat, "gamma": gamma}
  return y, cache | {"eps": eps}


def batch_norm_backward(dy: jax.Array, cache: dict) -> dict:
  """The six derivatives of batch norm (Ioffe & Szegedy 2015), step by step.

  Args:
    dy: `dl/dy` `[M, D]`.
    cache: from `batch_norm_forward`.

  Returns:
    A dict with `dx_hat` `[M, D]`, `dvar` `[D]`, `dmean` `[D]`, `dx`
    `[M, D]`, `dgamma` `[D]` and `dbeta` `[D]`. `dvar` holds `x` and `mu`
    fixed; `dmean` is the total derivative through `x_hat` and the variance.

  Raises:
    ValueError: if `dy` is not shaped like the cached input.
  """
  x, mu, var = cache["x"], cache["mu"], cache["var"]
  x_hat, gamma, eps = cache["x_hat"], cache["gamma"], cache["eps"]
  if dy.shape != x.shape:
    raise ValueError(f"dy must have shape {x.shape}, got {dy.shape}.")
  m = x.shape[0]
  centred = x - mu[None, :]
  inv_std = 1.0 / jnp.sqrt(var + eps)
  dx_hat = dy * gamma[None, :]
  dvar = jnp.sum(dx_hat * centred, axis=0) * -0.5 * (var + eps) ** -1.5
  dmean = (
    jnp.sum(dx_hat * -inv_std[None, :], axis=0)
    + dvar * jnp.sum(-2.0 * centred, axis=0) / m
  )
  dx = (
    dx_hat * inv_std[None, :]
    + dvar[None, :] * 2.0 * centred / m
    + dmean[None, :] / m
  )
  return {
    "dx_hat": dx_hat,
    "dvar": dvar,
    "dmean": dmean,
    "dx": dx,
    "dgamma": jnp.sum(dy * x_hat, axis=0),
    "dbeta": jnp.sum(dy, axis=0),
  }


# ---------------------------------------------------------------------------
# Softmax and cross-entropy.
# ---------------------------------------------------------------------------


def log_softmax(logits: jax.Array) -> jax.Array:
  """`z - logsumexp(z)` with the maximum subtracted first (stable at 1e4)."""
  shifted = logits - jnp.max(logits, axis=-1, keepdims=True)
  return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """`-sum_k y_k log softmax(z)_k` for one example (batch with vmap).

  Args:
    logits: `[K]`.
    labels: a one-hot or soft label distribution `[K]`.

  Returns:
    A scalar.

  Raises:
    ValueError: if `logits` is not rank 1 or `labels` differs in shape.
  """
  _check_rank(logits=(logits, 1))
  if labels.shape != logits.shape:
    raise ValueError(
      f"labels must have the logits' shape {logits.shape}, got {labels.shape}."
    )
  return -jnp.sum(labels * log_softmax(logits))


def softmax_cross_entropy_grad(
  logits: jax.Array, labels: jax.Array
) -> jax.Array:
  """`dL/dz = y_hat - y` for a label distribution, by hand.

  In general `dL/dz = y_hat * sum(y) - y`, which is `y_hat - y` whenever the
  labels are a distribution (one-hot or soft); the general form is returned
  so unnormalised targets are still differentiated correctly.

  Args:
    logits: `[K]`.
    labels: `[K]`.

  Returns:
    `[K]`.

  Raises:
    ValueError: if `logits` is not rank 1 or `labels` differs in shape.
  """
  _check_rank(logits=(logits, 1))
  if labels.shape != logits.shape:
    raise ValueError(
      f"labels must have the logits' shape {logits.shape}, got {labels.shape}."
    )
  y_hat = jnp.exp(log_softmax(logits))
  return y_hat * jnp.sum(labels) - labels


# ---------------------------------------------------------------------------
# A regression network: two sigmoid hidden layers, squared loss.
# ---------------------------------------------------------------------------


def sigmoid_mlp_init(key: jax.Array, d: int, d_h: int) -> dict:
  """Random parameters of the sigmoid network (column-vector convention).

  Args:
    key: a PRNG key.
    d: the input size.
    d_h: the hidden width.

  Returns:
    A dict of "W1" `[d_h, d]`, "b1" `[d_h]`, "W2" `[d_h, d_h]`, "b2"
    `[d_h]`, "W3" `[1, d_h]` and "b3" `[1]`, with LeCun-normal weights and
    zero biases.
  """
  k1, k2, k3 = jax.random.split(key, 3)
  return {
    "W1": jax.random.normal(k1, (d_h, d)) / jnp.sqrt(d),
    "b1": jnp.zeros((d_h,)),
    "W2": jax.random.normal(k2, (d_h, d_h)) / jnp.sqrt(d_h),
    "b2": jnp.zeros((d_h,)),
    "W3": jax.random.normal(k3, (1, d_h)) / jnp.sqrt(d_h),
    "b3": jnp.zeros((1,)),
  }


def sigmoid_mlp_forward(params: dict, x: jax.Array) -> dict:
  """`Z1 = W1 x + b1, H1 = sigma(Z1), Z2 = W2 H1 + b2, H2 = sigma(Z2),
  f = W3 H2 + b3`.

  Args:
    params: see `sigmoid_mlp_init`.
    x: one input `[d]`.

  Returns:
    The activations `{"Z1", "H1", "Z2", "H2", "f"}`; `f` is a scalar.

  Raises:
    ValueError: if `x` is not rank 1.
  """
  _check_rank(x=(x, 1))
  z1 = params["W1"] @ x + params["b1"]
  h1 = jax.nn.sigmoid(z1)
  z2 = params["W2"] @ h1 + params["b2"]
  h2 = jax.nn.sigmoid(z2)
  f = (params["W3"] @ h2 + params["b3"])[0]
  return {"Z1": z1, "H1": h1, "Z2": z2, "H2": h2, "f": f}


def sigmoid_mlp_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """`rho = (y - f(x; theta))^2` for one example."""
  return (y - sigmoid_mlp_forward(params, x)["f"]) ** 2


def sigmoid_mlp_backward(
  params: dict, x: jax.Array, y: jax.Array
) -> tuple[jax.Array, dict, dict]:
  """Backpropagation by hand: the deltas and every parameter gradient.

  `delta4 = 2 (f - y)`; `delta3 = W3^T delta4 * sigma'(Z2)`;
  `delta2 = W2^T delta3 * sigma'(Z1)`; the bias gradients are the deltas and
  the weight gradients their outer products with the layer inputs.

  Args:
    params: see `sigmoid_mlp_init`.
    x: `[d]`.
    y: a scalar target.

  Returns:
    `(loss, grads, deltas)`: `grads` shaped like `params`; `deltas` holds
    `delta4` `[]`, `delta3` `[d_h]` and `delta2` `[d_h]`.
  """
  acts = sigmoid_mlp_forward(params, x)
  h1, h2, f = acts["H1"], acts["H2"], acts["f"]
  delta4 = 2.0 * (f - y)
  # sigma'(z) = sigma(z) (1 - sigma(z)), read off the stored activations.
  delta3 = params["W3"][0] * delta4 * h2 * (1.0 - h2)
  delta2 = (params["W2"].T @ delta3) * h1 * (1.0 - h1)
  grads = {
    "W3": (delta4 * h2)[None, :],
    "b3": delta4[None],
    "W2": jnp.outer(delta3, h1),
    "b2": delta3,
    "W1": jnp.outer(delta2, x),
    "b1": delta2,
  }
  deltas = {"delta4": delta4, "delta3": delta3, "delta2": delta2}
  return (y - f) ** 2, grads, deltas
