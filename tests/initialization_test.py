"""Tests of initialisation studies (He et al. 2015; Glorot & Bengio 2010)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.fundamentals import initialization as init
from equivlab.nn import initializers

# Small but deep: 20 layers of width 128, averaged over 8 networks.
_STUDY = {"width": 128, "depth": 20, "batch": 32, "num_nets": 8}


def test_he_keeps_relu_variance_within_factor_2_over_20_layers():
  fwd, bwd = init.depth_study(jax.random.key(0), "he", "relu", **_STUDY)
  # He: Var[z_1] = 2 Var[x], and every later layer keeps it.
  assert np.all(fwd > 2.0 / 2.0) and np.all(fwd < 2.0 * 2.0), fwd
  assert np.max(bwd) < 2.0 * np.min(bwd), bwd


def test_naive_and_lecun_relu_explode_and_vanish():
  naive, _ = init.depth_study(jax.random.key(0), "naive", "relu", **_STUDY)
  # N(0, 1): each layer multiplies the variance by fan_in / 2 = 64.
  assert naive[9] > 1e15
  assert not np.isfinite(naive[-1]) or naive[-1] > 1e30
  lecun, _ = init.depth_study(jax.random.key(0), "lecun", "relu", **_STUDY)
  # 1 / fan_in halves it per layer under ReLU: 2^-19 after 20 layers.
  assert lecun[-1] < 1e-4


def test_xavier_tanh_follows_mean_field_and_decays_only_polynomially():
  fwd, _ = init.depth_study(jax.random.key(1), "xavier", "tanh", **_STUDY)
  theory = init.mean_field_tanh_variance(1.0, 1.0, 20)
  np.testing.assert_allclose(fwd, theory, rtol=0.1)
  # Beyond tanh's linear regime the variance falls like 1 / (2 l): a power
  # of depth, not geometrically, but well past a factor 2 in 20 layers.
  assert fwd[-1] > 0.01 and fwd[0] / fwd[-1] > 20.0
  np.testing.assert_allclose(1.0 / theory[-1], 2.0 * 20, rtol=0.15)


def test_xavier_tanh_within_factor_2_in_the_linear_regime():
  # Glorot's derivation assumes tanh'(0) = 1; with inputs of std 0.1 it holds.
  fwd, _ = init.depth_study(
    jax.random.key(1), "xavier", "tanh", input_std=0.1, **_STUDY
  )
  assert np.max(fwd) < 2.0 * np.min(fwd), fwd
  np.testing.assert_allclose(fwd[0], 0.01, rtol=0.1)


def test_naive_tanh_saturates_and_its_gradients_explode():
  fwd, bwd = init.depth_study(jax.random.key(1), "naive", "tanh", **_STUDY)
  # Pre-activations of variance ~ fan_in: every unit sits at +-1 ...
  assert np.all(fwd > 0.5 * _STUDY["width"])
  # ... and backward through 20 layers the gradient variance blows up.
  assert bwd[0] > 1e6 * bwd[-1]


def test_weight_std_values_and_bad_input():
  assert initializers.weight_std("he", 50, 10) == pytest.approx(np.sqrt(2 / 50))
  assert initializers.weight_std("xavier", 50, 30) == pytest.approx(
    np.sqrt(2 / 80)
  )
  assert initializers.weight_std("lecun", 50, 30) == pytest.approx(
    np.sqrt(1 / 50)
  )
  assert initializers.weight_std("naive", 5, 3) == 1.0
  assert initializers.weight_std("zero", 5, 3) == 0.0
  with pytest.raises(ValueError, match="scheme must be one of"):
    initializers.weight_std("kaiming", 5, 5)
  with pytest.raises(ValueError, match="fan_in and fan_out must be >= 1"):
    initializers.weight_std("he", 0, 5)
  with pytest.raises(ValueError, match="activation must be one of"):
    init.depth_study(jax.random.key(0), "he", "gelu")
  with pytest.raises(ValueError, match="widths needs at least two"):
    init.init_dense_stack(jax.random.key(0), (4,), "he")


def test_init_dense_stack_shapes_and_std():
  params = init.init_dense_stack(jax.random.key(0), (300, 200, 10), "he")
  assert [p["w"].shape for p in params] == [(300, 200), (200, 10)]
  np.testing.assert_allclose(
    np.std(params[0]["w"]), np.sqrt(2 / 300), rtol=0.02
  )
  assert all(np.all(p["b"] == 0) for p in params)


def test_layer_statistics_on_an_unequal_he_stack():
  params = init.init_dense_stack(jax.random.key(5), (512, 256, 128), "he")
  x = jax.random.normal(jax.random.key(6), (64, 512))
  fwd, bwd = init.layer_statistics(params, x, "relu", jax.random.key(7))
  assert fwd.shape == bwd.shape == (2,)
  np.testing.assert_allclose(fwd, [2.0, 2.0], rtol=0.3)
  # The last layer's gradient is the random projection r ~ N(0, 1) times
  # ReLU'(z), which is 1 for about half of the units.
  np.testing.assert_allclose(bwd[-1], 0.5, rtol=0.2)
  with pytest.raises(ValueError, match="activation must be one of"):
    init.layer_statistics(params, x, "swish", jax.random.key(7))


def _regression_data():
  kx, kn = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (64, 3))
  y = jnp.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * jax.random.normal(kn, (64,))
  return x, y


def test_zero_init_weight_gradients_are_zero_forever():
  x, y = _regression_data()
  params = init.relu_regression_init(jax.random.key(3), 3, 16, "zero")
  grads = jax.grad(init.relu_regression_loss)(params, x, y)
  for name in ("W", "b1", "C"):
    np.testing.assert_array_equal(grads[name], 0.0)
  # The output bias is the one exception: dL/db2 = -2 mean(y - f) != 0.
  np.testing.assert_allclose(grads["b2"], -2.0 * jnp.mean(y), rtol=1e-5)

  @jax.jit
  def train(params):
    def step(p, _):
      g = jax.grad(init.relu_regression_loss)(p, x, y)
      return jax.tree.map(lambda a, b: a - 0.05 * b, p, g), None

    return jax.lax.scan(step, params, None, length=300)[0]

  trained = train(params)
  for name in ("W", "b1", "C"):
    np.testing.assert_array_equal(trained[name], 0.0)
  # It has learnt nothing but a constant, the mean of y.
  pred = init.relu_regression_predict(trained, x)
  np.testing.assert_allclose(pred, jnp.mean(y) * jnp.ones(64), rtol=1e-4)
  he = train(init.relu_regression_init(jax.random.key(3), 3, 16, "he"))
  zero_loss = init.relu_regression_loss(trained, x, y)
  assert init.relu_regression_loss(he, x, y) < 0.5 * zero_loss


@pytest.mark.parametrize("scheme", initializers.SCHEMES)
def test_kernel_initializer_draws_with_weight_std(scheme):
  # The one registry: what every model draws has the std weight_std says,
  # with flax's default fans (all axes but the last are fan-in).
  shape = (3, 3, 32, 48)
  kernel = initializers.kernel_initializer(scheme)(jax.random.key(0), shape)
  expected = initializers.weight_std(scheme, 3 * 3 * 32, 48 * 1)
  if scheme == "xavier":  # fan_avg over receptive field too, as Glorot.
    expected = initializers.weight_std(scheme, 3 * 3 * 32, 3 * 3 * 48)
  np.testing.assert_allclose(float(jnp.std(kernel)), expected, rtol=0.03)


def test_kernel_initializer_counts_the_given_fan_in_axes():
  shape = (3, 3, 8, 4, 16)  # A group conv kernel: the group axis feeds in.
  kernel = initializers.kernel_initializer("he", in_axis=(0, 1, 2, 3))(
    jax.random.key(1), shape
  )
  np.testing.assert_allclose(
    float(jnp.std(kernel)), np.sqrt(2 / (3 * 3 * 8 * 4)), rtol=0.03
  )
  with pytest.raises(ValueError, match="scheme must be one of"):
    initializers.kernel_initializer("orthogonal")


_JAX_SCHEMES = {
  "lecun": (1.0, "fan_in", "truncated_normal"),
  "he": (2.0, "fan_in", "truncated_normal"),
  "xavier": (1.0, "fan_avg", "uniform"),
}


def _jax_initializer(scheme, in_axis):
  if scheme in _JAX_SCHEMES:
    return jax.nn.initializers.variance_scaling(
      *_JAX_SCHEMES[scheme], in_axis=in_axis, out_axis=-1
    )
  if scheme == "zero":
    return jax.nn.initializers.zeros
  return jax.nn.initializers.normal(1.0 if scheme == "naive" else 0.01)


@pytest.mark.parametrize(
  "partitionable,key,dtype",
  [
    (True, jax.random.key(5), jnp.float32),
    (False, jax.random.PRNGKey(3), jnp.bfloat16),
  ],
)
def test_kernel_initializer_values_equal_jaxs_exactly(
  partitionable, key, dtype
):
  # The flat draw is a compile-time trick only: the numbers are jax's, for
  # either threefry implementation, typed and legacy keys, any float dtype.
  # jax's own partitionable draws over a rank-5 shape compile for many
  # seconds (the cost the flat draw avoids): that reference uses low ranks.
  cases = [((3, 3, 4, 4, 6), (0, 1, 2, 3)), ((3, 3, 1, 5), (0, 1, 2))]
  if partitionable:
    cases = [((2, 3, 1, 5), (0, 1, 2)), ((7, 5), -2)]
  with jax.threefry_partitionable(partitionable):
    for scheme in initializers.SCHEMES:
      for shape, in_axis in cases:
        got = initializers.kernel_initializer(scheme, in_axis=in_axis)(
          key, shape, dtype
        )
        want = _jax_initializer(scheme, in_axis)(key, shape, dtype)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(
          np.asarray(got, np.float32), np.asarray(want, np.float32)
        )


def test_kernel_initializer_values_equal_jaxs_under_jit():
  # The engine initialises under jit with the classic threefry.
  shape, in_axis = (3, 3, 4, 4, 5), (0, 1, 2, 3)
  key = jax.random.PRNGKey(7)
  with jax.threefry_partitionable(False):
    for scheme in ("he", "xavier", "normal"):
      mine = initializers.kernel_initializer(scheme, in_axis=in_axis)
      ref = _jax_initializer(scheme, in_axis)
      np.testing.assert_array_equal(
        jax.jit(lambda k, f=mine: f(k, shape))(key),
        jax.jit(lambda k, f=ref: f(k, shape))(key),
      )


def test_kernel_initializer_compiles_one_flat_program_per_size():
  # The root cause of slow eager inits: one rank-5 threefry program per
  # kernel shape. The draw is flat, so equal sizes share one program.
  initializers._unit_draw.clear_cache()
  init_fn = initializers.kernel_initializer("he", in_axis=(0, 1, 2, 3))
  init_fn(jax.random.key(0), (3, 3, 4, 4, 5))
  init_fn(jax.random.key(1), (3, 3, 5, 4, 4))  # Same size, other shape.
  assert initializers._unit_draw._cache_size() == 1


@pytest.mark.parametrize(
  "alias,expected",
  [
    ("float32", jnp.float32),
    ("f32", jnp.float32),
    ("bf16", jnp.bfloat16),
    ("BFloat16", jnp.bfloat16),
    ("fp16", jnp.float16),
    ("half", jnp.float16),
    (jnp.bfloat16, jnp.bfloat16),
    (np.float16, jnp.float16),
    (np.dtype("float32"), jnp.float32),
  ],
)
def test_kernel_initializer_takes_dtype_names_and_aliases(alias, expected):
  kernel = initializers.kernel_initializer("he")(
    jax.random.key(0), (3, 3, 2, 4), alias
  )
  assert kernel.dtype == expected


@pytest.mark.parametrize("dtype", ["int32", jnp.int8, "bool", "floaty", 3])
def test_kernel_initializer_refuses_non_float_dtypes(dtype):
  with pytest.raises(TypeError, match="dtype must be a float dtype"):
    initializers.kernel_initializer("lecun")(jax.random.key(0), (3, 4), dtype)


def test_kernel_initializer_refuses_fan_axes_outside_the_shape():
  init_fn = initializers.kernel_initializer("he", in_axis=(0, 1, 2, 3))
  with pytest.raises(ValueError, match="in_axis 3 is out of range"):
    init_fn(jax.random.key(0), (3, 3, 4))
