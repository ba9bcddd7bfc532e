"""Weight initialisation studies: He, Xavier, naive N(0, 1) and zeros.

- He et al. 2015, "Delving Deep into Rectifiers":
  `Var[y_l] = n_l Var[w_l] E[x_l^2]` and
  `E[x_l^2] = Var[y_{l-1}] / 2` under ReLU, so `Var[w] = 2 / fan_in` keeps
  the pre-activation variance constant with depth.
- Glorot & Bengio 2010: `Var[w] = 2 / (fan_in + fan_out)`; LeCun's rule
  `N(0, 1 / fan_in)` (LeCun et al. 1998, "Efficient BackProp") coincides
  with it for equal widths. It is derived in tanh's linear regime; beyond
  it the variance still decays, as a power of depth, which the mean-field
  recursion `q_{l+1} = sigma_w^2 E[tanh(sqrt(q_l) z)^2]` predicts.
- Zero initialisation (Goodfellow, Bengio & Courville 2016, section 8.4):
  with every weight at zero the ReLU regression network's weight gradients
  are all zero, so only the output bias ever moves.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivlab.nn.initializers import (
  ACTIVATIONS,
  weight_std,
)

PyTree = Any


def init_dense_stack(
  key: jax.Array, widths: tuple[int, ...], scheme: str
) -> list[dict]:
  """A stack of dense layers from `widths[0]` to `widths[-1]`, zero biases.

  Args:
    key: a PRNG key.
    widths: the layer widths, input first (at least two entries).
    scheme: see `weight_std`.

  Returns:
    A list of `{"w": [fan_in, fan_out], "b": [fan_out]}`.

  Raises:
    ValueError: for fewer than two widths or a bad scheme.
  """
  if len(widths) < 2:
    raise ValueError(f"widths needs at least two entries, got {widths}.")
  params = []
  for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
    std = weight_std(scheme, n_in, n_out)
    w = std * jax.random.normal(jax.random.fold_in(key, i), (n_in, n_out))
    params.append({"w": w, "b": jnp.zeros((n_out,))})
  return params


def layer_statistics(
  params: list[dict], x: jax.Array, activation: str, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """Forward and backward variances layer by layer.

  Args:
    params: from `init_dense_stack`.
    x: inputs `[B, widths[0]]`.
    activation: "relu", "tanh" or "linear".
    key: for the random projection of the output that defines the loss
      `sum(r * h_L)` whose gradients are measured.

  Returns:
    `(forward, backward)`, each `[L]`: the variance of the pre-activations
    `z_l` and of `dLoss/dz_l`.

  Raises:
    ValueError: for an unknown activation.
  """
  if activation not in ACTIVATIONS:
    raise ValueError(
      f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}."
    )
  act = ACTIVATIONS[activation]

  def forward(shifts):
    h, zs = x, []
    for layer, shift in zip(params, shifts, strict=True):
      z = h @ layer["w"] + layer["b"][None, :] + shift
      zs.append(z)
      h = act(z)
    return h, zs

  zeros = [jnp.zeros((x.shape[0], p["b"].shape[0])) for p in params]
  out, zs = forward(zeros)
  r = jax.random.normal(key, out.shape)
  grads = jax.grad(lambda s: jnp.sum(r * forward(s)[0]))(zeros)
  return (
    jnp.stack([jnp.var(z) for z in zs]),
    jnp.stack([jnp.var(g) for g in grads]),
  )


def depth_study(
  key: jax.Array,
  scheme: str,
  activation: str,
  *,
  width: int = 256,
  depth: int = 20,
  batch: int = 64,
  num_nets: int = 8,
  input_std: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
  """Layer variances of deep equal-width nets, averaged over initialisations.

  He's and Glorot's arguments are about expectations over the weights; the
  average over a few independent networks removes most of the finite-width
  noise. The layers run as a `lax.scan`, so the depth costs no compile time.

  Args:
    key: a PRNG key.
    scheme: see `weight_std`.
    activation: "relu", "tanh" or "linear".
    width: the width of every layer.
    depth: the number of layers.
    batch: inputs per network.
    num_nets: independent networks to average over.
    input_std: the standard deviation of the Gaussian inputs.

  Returns:
    `(forward, backward)` variances `[depth]` as in `layer_statistics`,
    averaged over the networks.

  Raises:
    ValueError: for an unknown scheme or activation.
  """
  if activation not in ACTIVATIONS:
    raise ValueError(
      f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}."
    )
  std = weight_std(scheme, width, width)
  return _depth_study(
    key,
    jnp.float32(std),
    jnp.float32(input_std),
    activation=activation,
    shape=(width, depth, batch, num_nets),
  )


@functools.partial(jax.jit, static_argnames=("activation", "shape"))
def _depth_study(key, std, input_std, *, activation, shape):
  # One compile per activation and shape: the schemes differ only in `std`.
  act = ACTIVATIONS[activation]
  width, depth, batch, num_nets = shape

  def one(k):
    k_w, k_x, k_r = jax.random.split(k, 3)
    ws = std * jax.random.normal(k_w, (depth, width, width))
    x = input_std * jax.random.normal(k_x, (batch, width))

    def forward(shifts):
      def layer(h, w_shift):
        w, shift = w_shift
        z = h @ w + shift
        return act(z), z

      return jax.lax.scan(layer, x, (ws, shifts))

    shifts = jnp.zeros((depth, batch, width))
    out, zs = forward(shifts)
    r = jax.random.normal(k_r, out.shape)
    grads = jax.grad(lambda s: jnp.sum(r * forward(s)[0]))(shifts)
    return jnp.var(zs, axis=(1, 2)), jnp.var(grads, axis=(1, 2))

  fwd, bwd = jax.vmap(one)(jax.random.split(key, num_nets))
  return jnp.mean(fwd, axis=0), jnp.mean(bwd, axis=0)


def mean_field_tanh_variance(
  q0: float, sigma_w2: float, depth: int, num_points: int = 101
) -> np.ndarray:
  """The mean-field pre-activation variances of a deep tanh network.

  `q_1 = sigma_w^2 q0` and
  `q_{l+1} = sigma_w^2 E_{z~N(0,1)}[tanh(sqrt(q_l) z)^2]` (Poole et al.
  2016), by Gauss-Hermite quadrature.

  Args:
    q0: the input variance.
    sigma_w2: `fan_in * Var[w]` (1 for Xavier at equal widths).
    depth: the number of layers.
    num_points: quadrature points.

  Returns:
    `[depth]` float64.
  """
  z, weights = np.polynomial.hermite_e.hermegauss(num_points)
  weights = weights / weights.sum()
  q = [sigma_w2 * q0]
  for _ in range(depth - 1):
    q.append(
      sigma_w2 * float(np.sum(weights * np.tanh(np.sqrt(q[-1]) * z) ** 2))
    )
  return np.asarray(q)


# ---------------------------------------------------------------------------
# The ReLU regression network: Z = W x + b1, H = ReLU(Z), f = C^T H + b2.
# ---------------------------------------------------------------------------


def relu_regression_init(key: jax.Array, d: int, d_h: int, scheme: str) -> dict:
  """Parameters `{"W": [d_h, d], "b1": [d_h], "C": [d_h], "b2": []}`.

  Args:
    key: a PRNG key.
    d: the input size.
    d_h: the hidden width.
    scheme: see `weight_std`; "zero" sets every parameter to zero.

  Returns:
    The parameters (biases zero).
  """
  k_w, k_c = jax.random.split(key)
  return {
    "W": weight_std(scheme, d, d_h) * jax.random.normal(k_w, (d_h, d)),
    "b1": jnp.zeros((d_h,)),
    "C": weight_std(scheme, d_h, 1) * jax.random.normal(k_c, (d_h,)),
    "b2": jnp.zeros(()),
  }


def relu_regression_predict(params: dict, x: jax.Array) -> jax.Array:
  """`f(x) = C^T ReLU(W x + b1) + b2` for a batch `x` `[N, d]` -> `[N]`."""
  h = jax.nn.relu(x @ params["W"].T + params["b1"][None, :])
  return h @ params["C"] + params["b2"]


def relu_regression_loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  """The mean of `(y - f(x))^2` over the batch."""
  return jnp.mean((y - relu_regression_predict(params, x)) ** 2)
