"""Tests of dropout, L2 vs weight decay, ensembles and normalisation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from equivlab.nn import normalization
from equivlab.training import regularization as reg

# ---------------------------------------------------------------------------
# Dropout.
# ---------------------------------------------------------------------------


def test_inverted_dropout_keeps_the_expectation():
  x = np.linspace(0.5, 2.0, 8, dtype=np.float32)
  keys = jax.random.split(jax.random.key(0), 20_000)
  out = np.asarray(
    jax.vmap(lambda k: reg.dropout(k, jnp.asarray(x), 0.3))(keys)
  )
  # Mean over 20,000 masks; the standard error is 0.5% of x.
  np.testing.assert_allclose(out.mean(0), x, rtol=0.025)
  np.testing.assert_allclose((out == 0).mean(), 0.3, atol=0.005)
  # Kept units are scaled by 1 / (1 - rate).
  assert np.all((out == 0) | np.isclose(out, x / 0.7, rtol=1e-6))
  # A mask without the rescaling shrinks the expectation by p = 0.7.
  masks = jax.vmap(lambda k: jax.random.bernoulli(k, 0.7, x.shape))(keys)
  np.testing.assert_allclose((np.asarray(masks) * x).mean(0), 0.7 * x, 0.025)


def test_dropout_is_off_at_eval_and_at_rate_zero():
  x = jnp.arange(6.0)
  key = jax.random.key(1)
  np.testing.assert_array_equal(reg.dropout(key, x, 0.5, deterministic=True), x)
  np.testing.assert_array_equal(reg.dropout(key, x, 0.0), x)


def test_dropout_bad_rate():
  with pytest.raises(ValueError, match=r"rate must be in \[0, 1\), got 1.0"):
    reg.dropout(jax.random.key(0), jnp.ones(3), 1.0)


# ---------------------------------------------------------------------------
# L2 penalty vs decoupled weight decay.
# ---------------------------------------------------------------------------


def _loss(params, x, y):
  pred = (jnp.tanh(x @ params["w"]) @ params["v"])[:, 0]
  return jnp.mean((pred - y) ** 2)


def _problem():
  kx, kw, kv = jax.random.split(jax.random.key(2), 3)
  x = jax.random.normal(kx, (32, 3))
  y = jnp.sin(x[:, 0]) - x[:, 1]
  params = {
    "w": jax.random.normal(kw, (3, 8)),
    "v": 0.3 * jax.random.normal(kv, (8, 1)),
  }
  return params, x, y


def _run(optimizer, loss_fn, steps=60):
  params, x, y = _problem()

  @jax.jit
  def train(params):
    def step(carry, _):
      p, s = carry
      g = jax.grad(loss_fn)(p, x, y)
      u, s = optimizer.update(g, s, p)
      return (optax.apply_updates(p, u), s), None

    return jax.lax.scan(step, (params, optimizer.init(params)), length=steps)

  return train(params)[0][0]


def _assert_trees_close(a, b):
  jax.tree.map(
    lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6), a, b
  )


def test_l2_penalty_and_decoupled_decay_coincide_under_sgd():
  lr, l2 = 0.1, 0.01
  coupled = _run(optax.sgd(lr), reg.with_l2_penalty(_loss, l2))
  decoupled = _run(reg.decoupled_weight_decay(optax.sgd(lr), lr, l2), _loss)
  _assert_trees_close(coupled, decoupled)


def test_l2_penalty_and_decoupled_decay_differ_under_adam():
  lr, l2 = 0.05, 0.05
  coupled = _run(optax.adam(lr), reg.with_l2_penalty(_loss, l2))
  decoupled = _run(reg.decoupled_weight_decay(optax.adam(lr), lr, l2), _loss)
  adamw = _run(optax.adamw(lr, weight_decay=l2, mask=reg.weight_mask), _loss)
  _assert_trees_close(decoupled, adamw)
  gaps = jax.tree.map(lambda a, b: jnp.max(jnp.abs(a - b)), coupled, decoupled)
  gap = max(float(g) for g in jax.tree.leaves(gaps))
  assert gap > 0.05


def test_l2_penalty_value_and_bad_input():
  # Only weights (ndim >= 2) count: 0.5 * 0.5 * (1 + 4), not the bias.
  params = {"kernel": jnp.array([[1.0, 2.0]]), "bias": jnp.array([3.0])}
  np.testing.assert_allclose(reg.l2_penalty(params, 0.5), 1.25)
  grads = jax.grad(reg.l2_penalty)(params, 0.5)
  np.testing.assert_allclose(grads["kernel"], 0.5 * params["kernel"])
  np.testing.assert_allclose(grads["bias"], 0.0)
  with pytest.raises(ValueError, match="l2 must be >= 0"):
    reg.with_l2_penalty(_loss, -1.0)
  with pytest.raises(ValueError, match="weight_decay must be >= 0"):
    reg.decoupled_weight_decay(optax.sgd(0.1), 0.1, -0.1)


# ---------------------------------------------------------------------------
# Ensembles average predictions (Goodfellow, Bengio & Courville 2016, 7.11).
# ---------------------------------------------------------------------------


def _mlp(params, x):
  h = jnp.tanh(x @ params["w1"] + params["b1"][None, :])
  return h @ params["w2"] + params["b2"]


def _fit(params, x, y, steps=400):
  @jax.jit
  def train(params):
    def step(p, _):
      g = jax.grad(lambda p: jnp.mean((_mlp(p, x) - y) ** 2))(p)
      return jax.tree.map(lambda a, b: a - 0.1 * b, p, g), None

    return jax.lax.scan(step, params, None, length=steps)[0]

  return train(params)


def _ensemble_setup():
  kx, k1, k2 = jax.random.split(jax.random.key(3), 3)
  x = jnp.linspace(-2.0, 2.0, 64)[:, None]
  y = jnp.sin(2.0 * x[:, 0])
  params = {
    "w1": jax.random.normal(k1, (1, 16)),
    "b1": jax.random.normal(kx, (16,)),
    "w2": 0.5 * jax.random.normal(k2, (16,)),
    "b2": jnp.array(0.1),
  }
  return params, x, y


def _mse(pred, y):
  return float(jnp.mean((pred - y) ** 2))


def test_averaging_parameters_is_worse_than_averaging_predictions():
  # Net B starts from net A's initialisation with every hidden unit's sign
  # flipped. tanh is odd, so A and B compute the same function and gradient
  # descent keeps them mirrored: B = -A in w1, b1, w2 after training too.
  params, x, y = _ensemble_setup()
  mirrored = {k: (v if k == "b2" else -v) for k, v in params.items()}
  net_a, net_b = _fit(params, x, y), _fit(mirrored, x, y)
  np.testing.assert_allclose(_mlp(net_a, x), _mlp(net_b, x), atol=1e-5)
  ensemble = reg.ensemble_predict(_mlp, [net_a, net_b], x)
  averaged = reg.average_parameters([net_a, net_b])
  # Their parameter average is the constant function b2.
  np.testing.assert_allclose(averaged["w2"], 0.0, atol=1e-6)
  mse_ens, mse_avg = _mse(ensemble, y), _mse(_mlp(averaged, x), y)
  assert mse_ens < 0.05
  assert mse_avg > 0.4  # about Var[sin(2x)] on the grid.
  assert mse_avg > 10.0 * mse_ens


def test_averaging_permuted_twins_is_worse_than_either():
  # Permuting hidden units is the other symmetry: same function, and an
  # average of parameters that mixes unrelated units.
  params, x, y = _ensemble_setup()
  perm = jnp.roll(jnp.arange(16), 5)
  twin = {
    "w1": params["w1"][:, perm],
    "b1": params["b1"][perm],
    "w2": params["w2"][perm],
    "b2": params["b2"],
  }
  net_a, net_b = _fit(params, x, y), _fit(twin, x, y)
  ensemble = reg.ensemble_predict(_mlp, [net_a, net_b], x)
  averaged = _mlp(reg.average_parameters([net_a, net_b]), x)
  assert _mse(averaged, y) > 5.0 * _mse(ensemble, y)


def test_ensemble_bad_input():
  with pytest.raises(ValueError, match="at least one member"):
    reg.ensemble_predict(_mlp, [], jnp.ones((1, 1)))
  with pytest.raises(ValueError, match="at least one member"):
    reg.average_parameters([])


# ---------------------------------------------------------------------------
# Normalisation layers.
# ---------------------------------------------------------------------------


def _maps():
  key = jax.random.key(4)
  scale = 1.0 + jnp.arange(6.0)[None, None, None, :]
  return 3.0 + scale * jax.random.normal(key, (4, 5, 5, 6))


@pytest.mark.parametrize(
  "kind, axes, stat_shape",
  [
    ("batch", (0, 1, 2), (1, 1, 1, 6)),
    ("layer", (1, 2, 3), (4, 1, 1, 1)),
    ("instance", (1, 2), (4, 1, 1, 6)),
  ],
)
def test_norm_statistics_shapes_and_normalised_moments(kind, axes, stat_shape):
  x = _maps()
  mean, var = normalization.norm_statistics(x, kind)
  assert mean.shape == var.shape == stat_shape
  np.testing.assert_allclose(mean, x.mean(axis=axes, keepdims=True), 1e-5)
  np.testing.assert_allclose(var, x.var(axis=axes, keepdims=True), 1e-4)
  y = normalization.normalize(x, kind, eps=0.0)
  assert y.shape == x.shape
  np.testing.assert_allclose(y.mean(axis=axes), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=axes), 1.0, rtol=1e-4)


def test_group_norm_interpolates_layer_and_instance_norm():
  x = _maps()
  np.testing.assert_allclose(
    normalization.normalize(x, "group", num_groups=1),
    normalization.normalize(x, "layer"),
    atol=1e-5,
  )
  np.testing.assert_allclose(
    normalization.normalize(x, "group", num_groups=6),
    normalization.normalize(x, "instance"),
    atol=1e-5,
  )
  y = normalization.normalize(x, "group", num_groups=2).reshape(4, 5, 5, 2, 3)
  np.testing.assert_allclose(y.mean(axis=(1, 2, 4)), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.var(axis=(1, 2, 4)), 1.0, rtol=1e-4)


def test_normalize_matches_flax_layers():
  x = _maps()
  scale = jnp.linspace(0.5, 1.5, 6)
  bias = jnp.linspace(-1.0, 1.0, 6)
  cases = {
    "batch": nn.BatchNorm(use_running_average=False, epsilon=1e-5),
    "layer": nn.LayerNorm(epsilon=1e-5, reduction_axes=(1, 2, 3)),
    "instance": nn.InstanceNorm(epsilon=1e-5),
    "group": nn.GroupNorm(num_groups=3, epsilon=1e-5),
  }
  for kind, module in cases.items():
    variables = module.init(jax.random.key(0), x)
    params = dict(variables["params"])
    if kind == "layer":  # flax keeps one scale per normalised element.
      params = {
        "scale": jnp.ones_like(params["scale"]) * scale,
        "bias": jnp.ones_like(params["bias"]) * bias,
      }
    else:
      params = {"scale": scale, "bias": bias}
    variables = {**variables, "params": params}
    want, _ = module.apply(variables, x, mutable=["batch_stats"])
    got = normalization.normalize(x, kind, num_groups=3, scale=scale, bias=bias)
    np.testing.assert_allclose(got, want, atol=1e-4, err_msg=kind)


def test_batch_norm_couples_examples_and_layer_norm_does_not():
  x = _maps()
  changed = x.at[1:].multiply(10.0)
  for kind, coupled in (("batch", True), ("layer", False), ("instance", False)):
    a = normalization.normalize(x, kind)[0]
    b = normalization.normalize(changed, kind)[0]
    assert (not np.allclose(a, b, atol=1e-3)) == coupled, kind


def test_normalize_bad_input():
  x = _maps()
  with pytest.raises(ValueError, match=r"x must be \[N, C\], \[N, H, W, C\]"):
    normalization.norm_statistics(x[0], "batch")
  with pytest.raises(ValueError, match="kind must be one of"):
    normalization.norm_statistics(x, "weight")
  with pytest.raises(ValueError, match="num_groups must divide the 6"):
    normalization.norm_statistics(x, "group", num_groups=4)
  with pytest.raises(ValueError, match=r"scale must have shape \(6,\)"):
    normalization.normalize(x, "batch", scale=jnp.ones(3))


def test_group_maps_share_statistics_over_the_group_axis():
  f = jax.random.normal(jax.random.key(5), (3, 4, 4, 6, 4)) + 2.0
  mean, var = normalization.norm_statistics(f, "batch")
  # Independently: channels last, every other axis pooled.
  flat = np.moveaxis(np.asarray(f), 3, -1).reshape(-1, 6)
  np.testing.assert_allclose(mean.reshape(6), flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(var.reshape(6), flat.var(0), rtol=1e-4)
  assert mean.shape == (1, 1, 1, 6, 1)
  # Layer norm of a group map: one pair per example over H, W, C and G.
  mean, _ = normalization.norm_statistics(f, "layer")
  np.testing.assert_allclose(
    mean.reshape(3), np.asarray(f).reshape(3, -1).mean(1), rtol=1e-5
  )
  y = normalization.normalize(
    f, "batch", scale=jnp.full(6, 2.0), bias=jnp.ones(6)
  )
  np.testing.assert_allclose(
    np.moveaxis(np.asarray(y), 3, -1).reshape(-1, 6).mean(0), 1.0, atol=1e-5
  )


def test_features_batch_and_layer_statistics():
  x = jax.random.normal(jax.random.key(6), (8, 5))
  mean, var = normalization.norm_statistics(x, "batch")
  np.testing.assert_allclose(mean[0], np.asarray(x).mean(0), rtol=1e-5)
  mean, var = normalization.norm_statistics(x, "layer")
  np.testing.assert_allclose(var[:, 0], np.asarray(x).var(1), rtol=1e-5)
  with pytest.raises(ValueError, match="instance norm needs spatial axes"):
    normalization.norm_statistics(x, "instance")


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 3, 4), (2, 3, 3, 4, 8)])
def test_channel_affine_is_the_broadcast_formula_with_its_gradients(shape):
  # Group maps go through [N*H*W, C*G] columns; values and gradients must
  # be those of broadcasting per-channel vectors.
  rng = np.random.default_rng(len(shape))
  c = shape[3] if len(shape) == 5 else shape[-1]
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal(shape))
    vectors = [jnp.asarray(rng.standard_normal(c)) for _ in range(3)]

    def want(x, shift, scale, bias):
      per = lambda v: normalization.per_channel(v, x.ndim)  # noqa: E731
      return (x - per(shift)) * per(scale) + per(bias)

    np.testing.assert_allclose(
      normalization.channel_affine(x, *vectors), want(x, *vectors), rtol=1e-14
    )
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    got = jax.grad(loss(normalization.channel_affine), argnums=(0, 1, 2, 3))(
      x, *vectors
    )
    expected = jax.grad(loss(want), argnums=(0, 1, 2, 3))(x, *vectors)
    for g, e in zip(got, expected, strict=True):
      np.testing.assert_allclose(g, e, rtol=1e-12)
    only_bias = normalization.channel_affine(x, bias=vectors[2])
    np.testing.assert_allclose(
      only_bias, want(x, jnp.zeros(c), jnp.ones(c), vectors[2])
    )


def test_group_batch_moments_and_their_gradient_match_the_axis_reduction():
  rng = np.random.default_rng(9)
  with jax.enable_x64(True):
    f = jnp.asarray(rng.standard_normal((3, 4, 4, 5, 4)) + 1.5)

    def want(f):
      mean = jnp.mean(f, axis=(0, 1, 2, 4))
      var = jnp.mean(
        (f - normalization.per_channel(mean, 5)) ** 2, axis=(0, 1, 2, 4)
      )
      return mean, var

    def got(f):
      mean, var = normalization.norm_statistics(f, "batch")
      return mean.reshape(5), var.reshape(5)

    for a, b in zip(got(f), want(f), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-13)
    score = lambda m: lambda f: jnp.sum(m(f)[0] * m(f)[1])  # noqa: E731
    np.testing.assert_allclose(
      jax.grad(score(got))(f), jax.grad(score(want))(f), rtol=1e-11
    )
