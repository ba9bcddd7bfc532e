"""Tests of equivlab.analysis.probes: gradient norms, saturation, shifts.

The depth-study probes are checked against computations written here by
hand: slopes and saturation counts of each activation from their closed
forms, and per-layer gradient norms from `jax.grad` of the networks
written out in plain jax.numpy (not through the flax modules).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.analysis import probes
from equivlab.nn import models


class _TwoDense(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(3)(x))
    return nn.Dense(2)(x)


# ---------------------------------------------------------------------------
# Activation slopes and saturation, against closed forms and hand counts.
# ---------------------------------------------------------------------------

_Z = np.array([-10.0, -4.0, -3.0, -1.0, 0.0, 0.5, 2.0, 3.0, 10.0], np.float32)


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


# act'(z) in closed form, in float64 NumPy.
_SLOPES = {
  "sigmoid": lambda z: _sigmoid(z) * (1.0 - _sigmoid(z)),
  "tanh": lambda z: 1.0 - np.tanh(np.asarray(z, np.float64)) ** 2,
  "relu": lambda z: (np.asarray(z) > 0).astype(np.float64),
  "linear": lambda z: np.ones(np.shape(z)),
}
# Saturated entries of _Z (act'(z) < 0.1 act'(0+)), counted by hand:
# sigmoid' < 0.025 for |z| > 3.64: -10, -4, 10.
# tanh' < 0.1 for |z| > 1.82: -10, -4, -3, 2, 3, 10.
# relu' = 0 for z <= 0: -10, -4, -3, -1, 0.
_SATURATED = {"sigmoid": 3, "tanh": 6, "relu": 5, "linear": 0}


@pytest.mark.parametrize("activation", sorted(_SATURATED))
def test_saturated_fraction_hand_counted(activation):
  fraction = probes.saturated_fraction(_Z, activation)
  np.testing.assert_allclose(float(fraction), _SATURATED[activation] / 9)
  # The same entries, as a [3, 3] map.
  fraction = probes.saturated_fraction(_Z.reshape(3, 3), activation)
  np.testing.assert_allclose(float(fraction), _SATURATED[activation] / 9)


@pytest.mark.parametrize("activation", sorted(_SLOPES))
def test_slopes_match_the_closed_forms(activation):
  slope = probes.activation_slope(_Z.reshape(3, 3), activation)
  np.testing.assert_allclose(
    slope, _SLOPES[activation](_Z).reshape(3, 3), rtol=1e-3, atol=1e-7
  )
  np.testing.assert_allclose(
    float(probes.mean_slope(_Z, activation)),
    np.mean(_SLOPES[activation](_Z)),
    rtol=1e-5,
  )


def test_slope_at_origin_hand_computed():
  assert probes.slope_at_origin("sigmoid") == 0.25
  assert probes.slope_at_origin("tanh") == 1.0
  assert probes.slope_at_origin("relu") == 1.0  # its active side
  assert probes.slope_at_origin("linear") == 1.0


def test_saturation_threshold_moves_the_count():
  # tanh' < 0.5 for |z| > 0.8814: -10, -4, -3, -1, 2, 3, 10.
  fraction = probes.saturated_fraction(_Z, "tanh", threshold=0.5)
  np.testing.assert_allclose(float(fraction), 7 / 9)


@pytest.mark.parametrize(
  ("call", "error", "message"),
  [
    (lambda: probes.saturated_fraction(_Z, "gelu"), ValueError, "activation"),
    (lambda: probes.mean_slope(np.zeros(0, np.float32), "tanh"), ValueError,
     "at least one value"),
    (lambda: probes.saturated_fraction(_Z, "tanh", threshold=0), ValueError,
     "threshold must be a finite number > 0"),
    (lambda: probes.activation_slope(np.arange(3), "relu"), TypeError,
     "floating-point"),
  ],
)  # fmt: skip
def test_bad_probe_inputs_are_named(call, error, message):
  with pytest.raises(error, match=message):
    call()


# ---------------------------------------------------------------------------
# Per-layer probes of DeepMLP / DeepCNN, against the networks by hand.
# ---------------------------------------------------------------------------

_HAND_ACT = {
  "sigmoid": lambda z: 1.0 / (1.0 + jnp.exp(-z)),
  "tanh": jnp.tanh,
  "relu": lambda z: jnp.where(z > 0, z, 0.0),
}


def _hand_forward(p, x, depth, activation, residual, batch_norm, conv):
  """The deep network written out; returns (logits, [z_0, ..., z_{L-1}])."""
  h = x if conv else x.reshape(x.shape[0], -1)
  zs = []
  for i in range(depth):
    layer = p[f"layer_{i:02d}"]
    if conv:
      z = jax.lax.conv_general_dilated(
        h,
        layer["kernel"],
        (2, 2) if i == 0 else (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
      )
    else:
      z = h @ layer["kernel"]
    z = z + layer["bias"].reshape((1,) * (z.ndim - 1) + (-1,))
    if batch_norm:
      axes = tuple(range(z.ndim - 1))
      mean = jnp.mean(z, axis=axes, keepdims=True)
      var = jnp.mean(jnp.square(z - mean), axis=axes, keepdims=True)
      bn = p[f"bn_{i:02d}"]
      shape = mean.shape
      z = (z - mean) / jnp.sqrt(var + 1e-5) * bn["scale"].reshape(shape)
      z = z + bn["bias"].reshape(shape)
    zs.append(z)
    a = _HAND_ACT[activation](z)
    h = h + a if residual and i > 0 else a
  if conv:
    h = jnp.mean(h, axis=(1, 2))
  return h @ p["output"]["kernel"] + p["output"]["bias"][None, :], zs


def _hand_loss(p, x, labels, *spec):
  logits, _ = _hand_forward(p, x, *spec)
  picked = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - picked)


_CASES = [
  # (depth, activation, residual, batch_norm, conv)
  (3, "sigmoid", False, True, False),
  (3, "tanh", True, False, False),
  (3, "relu", True, True, False),
  (2, "tanh", False, False, True),
  (3, "relu", True, True, True),
]


def _deep_model(depth, activation, residual, batch_norm, conv):
  name = "deep_cnn" if conv else "deep_mlp"
  model = models.get_model(
    name,
    depth=depth,
    width=5,
    activation=activation,
    residual=residual,
    batch_norm=batch_norm,
  )
  x = jax.random.normal(jax.random.key(1), (6, 6, 6, 1))
  labels = jnp.array([0, 1, 2, 3, 4, 0])
  variables = jax.jit(model.init)(jax.random.key(2), x)
  # Large weights and scales: some units saturate, so the counts matter.
  variables = jax.tree_util.tree_map(lambda v: 3.0 * np.asarray(v), variables)
  return model, variables, x, labels


@pytest.mark.parametrize("case", _CASES)
def test_probe_against_the_network_by_hand(case):
  model, variables, x, labels = _deep_model(*case)
  out = jax.device_get(probes.make_probe(model)(variables, x, labels))
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  hand_grad = jax.jit(jax.grad(_hand_loss), static_argnums=(3, 4, 5, 6, 7))
  grads = hand_grad(params, x, labels, *case)
  expected = {
    name: np.sqrt(np.sum(np.square(layer["kernel"])))
    for name, layer in grads.items()
    if "kernel" in layer
  }
  assert list(out["grad_norms"]) == sorted(expected)
  for name, norm in expected.items():
    assert norm > 0, name
    np.testing.assert_allclose(out["grad_norms"][name], norm, rtol=2e-4)

  _, zs = _hand_forward(params, x, *case)
  activation = case[1]
  names = [f"layer_{i:02d}" for i in range(case[0])]
  assert list(out["saturation"]) == names
  for name, z in zip(names, zs, strict=True):
    z = np.asarray(z, np.float64)
    slope = _SLOPES[activation](z)
    origin = {"sigmoid": 0.25, "tanh": 1.0, "relu": 1.0}[activation]
    # Up to one unit may sit on the threshold within float error.
    np.testing.assert_allclose(
      out["saturation"][name], np.mean(slope < 0.1 * origin), atol=1 / z.size
    )
    np.testing.assert_allclose(
      out["mean_slope"][name], np.mean(slope), rtol=1e-3, atol=1e-6
    )
  # The fixture exercises the count: some units saturate, not all.
  assert 0 < max(out["saturation"].values()) < 1


def test_pre_activations_read_the_norm_when_there_is_one():
  for case in (_CASES[0], _CASES[1]):
    model, variables, x, _ = _deep_model(*case)
    zs = probes.pre_activations(
      model, variables, x, train=True, mutable=["batch_stats"]
    )
    params = jax.tree_util.tree_map(np.asarray, variables["params"])
    _, hand = _hand_forward(params, x, *case)
    assert list(zs) == ["layer_00", "layer_01", "layer_02"]
    for z, expected in zip(zs.values(), hand, strict=True):
      np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5)


def test_probe_rejects_models_without_named_layers():
  model = _TwoDense()
  x = jnp.ones((2, 5))
  variables = model.init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="activation must be given"):
    probes.make_probe(model)
  with pytest.raises(ValueError, match="layer_00, layer_01"):
    probes.pre_activations(model, variables, x)
  with pytest.raises(ValueError, match="activation must be one of"):
    probes.make_probe(model, "gelu")


# ---------------------------------------------------------------------------
# layer_gradient_norms and intermediates.
# ---------------------------------------------------------------------------


def test_layer_gradient_norms_hand_computed():
  grads = {
    "Dense_10": {"kernel": jnp.array([[3.0, 4.0]]), "bias": jnp.ones(2)},
    "Dense_2": {"kernel": jnp.array([[1.0], [2.0], [2.0]])},
    "block": {"Conv_0": {"kernel": jnp.full((2, 2), 0.5)}},
  }
  norms = probes.layer_gradient_norms(grads)
  assert list(norms) == ["Dense_2", "Dense_10", "block/Conv_0"]
  np.testing.assert_allclose(
    [float(v) for v in norms.values()], [3.0, 5.0, 1.0], rtol=1e-6
  )
  with_bias = probes.layer_gradient_norms(grads, leaf=None)
  np.testing.assert_allclose(
    float(with_bias["Dense_10"]), np.sqrt(27.0), rtol=1e-6
  )


def test_layer_gradient_norms_jit_on_real_grads_by_hand():
  model = _TwoDense()
  x = jax.random.normal(jax.random.key(3), (4, 5))
  params = model.init(jax.random.key(0), x)["params"]

  @jax.jit
  def norms(params):
    grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x)))(params)
    return probes.layer_gradient_norms(grads)

  out = jax.device_get(norms(params))
  # f = sum_n sum_k (relu(x_n W0 + b0) W1 + b1)_k, so
  # df/dW1[j, k] = sum_n relu(h_n)_j and
  # df/dW0[i, j] = sum_n x_ni [h_nj > 0] sum_k W1[j, k].
  w0, b0 = np.asarray(params["Dense_0"]["kernel"]), params["Dense_0"]["bias"]
  w1 = np.asarray(params["Dense_1"]["kernel"])
  h = np.asarray(x) @ w0 + np.asarray(b0)[None, :]
  d_w1 = np.repeat(np.maximum(h, 0).sum(0)[:, None], 2, axis=1)
  d_w0 = np.asarray(x).T @ ((h > 0) * w1.sum(1)[None, :])
  np.testing.assert_allclose(
    [out["Dense_0"], out["Dense_1"]],
    [np.linalg.norm(d_w0), np.linalg.norm(d_w1)],
    rtol=1e-5,
  )


def test_layer_gradient_norms_rejects_empty():
  with pytest.raises(ValueError, match="non-empty mapping"):
    probes.layer_gradient_norms({})


def test_layer_gradient_norms_rejects_missing_leaf():
  with pytest.raises(ValueError, match="no parameter named 'kernel'"):
    probes.layer_gradient_norms({"BatchNorm_0": {"scale": jnp.ones(2)}})


def test_intermediates_in_call_order():
  model = _TwoDense()
  x = jax.random.normal(jax.random.key(4), (4, 5))
  variables = model.init(jax.random.key(0), x)
  out = probes.intermediates(model, variables, x)
  assert list(out) == ["Dense_0", "Dense_1", "output"]
  p = variables["params"]
  hidden = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"][None, :]
  np.testing.assert_allclose(out["Dense_0"], hidden, rtol=1e-5, atol=1e-6)
  logits = jnp.maximum(hidden, 0) @ p["Dense_1"]["kernel"]
  logits = logits + p["Dense_1"]["bias"][None, :]
  np.testing.assert_allclose(out["Dense_1"], logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["output"], logits, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# shift_equivariance_error.
# ---------------------------------------------------------------------------


def test_shift_error_zero_for_a_roll_and_finds_the_shift():
  f_x = jax.random.normal(jax.random.key(1), (2, 6, 5, 3))
  error, t = probes.shift_equivariance_error(
    f_x, jnp.roll(f_x, (2, 4), axis=(1, 2))
  )
  np.testing.assert_allclose(float(error), 0.0, atol=1e-6)
  np.testing.assert_array_equal(t, [2, 4])


def test_shift_error_given_output_shift_hand_computed():
  f_x = jnp.zeros((1, 2, 2, 1)).at[0, 0, 0, 0].set(1.0)
  f_shifted = jnp.zeros((1, 2, 2, 1)).at[0, 0, 1, 0].set(1.0)
  error, _ = probes.shift_equivariance_error(f_x, f_shifted, (0, 0))
  np.testing.assert_allclose(float(error), np.sqrt(2.0), rtol=1e-6)
  error, _ = probes.shift_equivariance_error(f_x, f_shifted, (0, 1))
  np.testing.assert_allclose(float(error), 0.0, atol=1e-7)


def test_shift_error_of_vectors_is_invariance_error():
  f_x = jnp.array([[3.0, 4.0]])
  error, t = probes.shift_equivariance_error(f_x, jnp.array([[3.0, 5.0]]))
  np.testing.assert_allclose(float(error), 0.2, rtol=1e-6)
  np.testing.assert_array_equal(t, [0, 0])


def test_shift_error_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="one shape"):
    probes.shift_equivariance_error(jnp.ones((1, 4, 4, 2)), jnp.ones((1, 4, 4)))


def test_shift_error_rejects_rank_three():
  with pytest.raises(ValueError, match=r"\[N, D\]"):
    probes.shift_equivariance_error(jnp.ones((2, 4, 4)), jnp.ones((2, 4, 4)))


def test_loss_gradients_and_residual_bytes_use_the_engines_loss(monkeypatch):
  from equivlab.training import steps  # noqa: PLC0415

  calls = []
  original = steps.training_loss

  def spy(*args, **kwargs):
    calls.append(kwargs.get("spec"))
    return original(*args, **kwargs)

  monkeypatch.setattr(steps, "training_loss", spy)
  model = models.get_model("mlp", hidden_sizes=(4,))
  variables = models.init_model(jax.random.key(0), model)
  x, y = jnp.zeros((2, 28, 28, 1)), jnp.zeros((2,), jnp.int32)
  probes.loss_gradients(model, variables, x, y)
  probes.residual_bytes(model, variables, x, y, compute_dtype="bfloat16")
  assert calls[0] is None  # the defaults: softmax cross-entropy, float32
  assert calls[1].compute_dtype == "bfloat16"
