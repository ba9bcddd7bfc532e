"""Every flax layer is equivariant; P4CNN/P4MCNN logits are invariant.

Cohen & Welling (ICML 2016). The checks are
`equivlab.testing`'s (group actions applied in NumPy on the host, so only
the layers get compiled), with explicit tolerances on the relative error
`max |f(g x) - g f(x)| / max |g f(x)|`.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.flatten_util import ravel_pytree

from equivlab import groups, testing
from equivlab.nn import layers


def _key(seed):
  # XLA's RngBitGenerator: its inits compile faster than threefry's on CPU,
  # and compiling them dominates these tests' run time.
  return jax.random.key(seed, impl="rbg")


def _normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _action(a, group):
  """How a group element acts on `a`: "image" or the group's map action."""
  return "image" if np.ndim(a) == 4 else group


class LayerEquivarianceTest(chex.TestCase):
  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(group=["p4", "p4m"], size=[7, 8])
  def test_every_layer(self, group, size):
    order = groups.group_order(group)
    x = _normal(0, (2, size, size, 3))
    f = _normal(1, (2, size, size, 3, order))
    # An exact spatial pool for each parity: 2x2/2 on even, 3x3/2 on odd.
    pool = (
      layers.SpatialMaxPool(2)
      if size % 2 == 0
      else layers.SpatialMaxPool(3, strides=2)
    )
    cases = [
      (layers.LiftingConv(4, group=group), x),
      (layers.GroupConv(4, group=group), f),
      (layers.GroupConv(4, kernel_size=2, padding="VALID", group=group), f),
      (layers.GroupBatchNorm(use_running_average=False), f),
      (layers.GroupPool("max"), f),
      (layers.GroupPool("mean"), f),
      (pool, f),
    ]
    for module, inp in cases:
      variables = jax.jit(module.init)(_key(2), inp)
      if "params" in variables:  # random biases and scales, not zeros/ones
        variables = dict(variables)
        variables["params"] = jax.tree.map(
          lambda p: p + 0.1 * jnp.arange(p.size).reshape(p.shape),
          variables["params"],
        )
      apply = self.variant(
        lambda v, a, module=module: module.apply(v, a, mutable=["batch_stats"])[
          0
        ]
      )
      out = apply(variables, inp)
      testing.assert_equivariant(
        functools.partial(apply, variables),
        inp,
        group=group,
        input=_action(inp, group),
        output=_action(out, group),
        rtol=1e-5,
      )


def _deep_stack(group):
  class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = layers.LiftingConv(4, group=group)(x)
      for _ in range(6):
        h = layers.GroupBatchNorm(use_running_average=False)(h)
        h = nn.relu(h)
        h = layers.GroupConv(4, group=group)(h)
      return h

  return Stack()


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_deep_stack_is_equivariant_to_1e_12_in_float64(group):
  with jax.enable_x64(True):
    x = np.random.default_rng(3).standard_normal((2, 9, 9, 2))
    model = _deep_stack(group)
    variables = jax.jit(model.init)(_key(4), x)
    variables = jax.tree.map(lambda p: p.astype(jnp.float64), variables)
    apply = jax.jit(lambda v, a: model.apply(v, a, mutable=["batch_stats"])[0])
    assert apply(variables, x).dtype == jnp.float64
    errors = testing.assert_equivariant(
      functools.partial(apply, variables),
      x,
      group=group,
      output=group,
      rtol=1e-12,
    )
    assert len(errors) == groups.group_order(group) - 1


@pytest.fixture(scope="module")
def digits():
  # Smooth random blobs stand in for digits: 28x28, one channel.
  x = _normal(5, (2, 28, 28, 1))
  return np.abs(x).astype(np.float32)


@pytest.mark.parametrize(
  "model",
  [
    layers.P4CNN(),
    layers.P4CNN(rotation_pooling=True),
    layers.P4MCNN(features=6),
    layers.P4GapCNN(features=(4, 6), dilations=(1, 4)),
  ],
  ids=["p4cnn", "p4cnn_rotpool", "p4mcnn", "p4cnn_gap"],
)
def test_logits_are_invariant_at_init_and_after_training(model, digits):
  # Batch statistics and running averages, before and after two Adam steps
  # (which also move the running averages off their initial values).
  errors = testing.assert_module_equivariant(
    model, digits, group=model.group, output="invariant", steps=2, rtol=1e-5
  )
  assert len(errors) == 4


def test_plain_cnn_logits_are_not_invariant(digits):
  """Control: the same pipeline with p4 replaced by nothing is not."""

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Conv(8, (3, 3), padding="VALID")(x))
      h = nn.Conv(10, (3, 3), padding="VALID")(h)
      return jnp.mean(h, axis=(1, 2))

  model = Plain()
  variables = jax.jit(model.init)(_key(7), digits)
  apply = jax.jit(functools.partial(model.apply, variables))
  testing.assert_not_equivariant(
    apply, digits, output="invariant", elements=[1], min_error=1e-3
  )


def _eval_logits(model, digits, seed):
  """The evaluation-mode logits of a freshly initialised `model`."""
  variables = jax.jit(functools.partial(model.init, train=False))(
    _key(seed), digits
  )
  return jax.jit(functools.partial(model.apply, variables, train=False))


# A circular shift, and the same shift followed by a rotation.
_SHIFTED = [groups.Element(0, 0, (5, -3)), groups.Element(1, 0, (5, -3))]


def test_p4_gap_cnn_is_invariant_to_circular_shifts_and_rotations(digits):
  model = layers.P4GapCNN(features=(4, 6, 6), dilations=(1, 2, 4))
  errors = testing.assert_invariant(
    _eval_logits(model, digits, seed=10),
    digits,
    elements=["rot 90"],
    shifts=[(5, -3)],
    rtol=1e-5,
  )
  assert list(errors) == [
    "rot 90",
    "shift (5, -3)",
    "rot 90 then shift (5, -3)",
  ]


def test_p4_gap_cnn_without_group_pooling_sees_orientation(digits):
  model = layers.P4GapCNN(features=(4, 6), dilations=(1, 4), pool_group=False)
  logits = _eval_logits(model, digits, seed=12)
  testing.assert_invariant(logits, digits, elements=_SHIFTED[:1], rtol=1e-5)
  testing.assert_not_equivariant(
    logits, digits, output="invariant", elements=_SHIFTED[1:], min_error=1e-2
  )


def test_valid_p4cnn_is_not_shift_invariant(digits):
  """Control: Cohen & Welling's VALID P4CNN maps 28x28 to 1x1."""
  testing.assert_not_equivariant(
    _eval_logits(layers.P4CNN(features=4), digits, seed=11),
    digits,
    output="invariant",
    elements=_SHIFTED,
    min_error=1e-2,
    every=True,
  )


def test_p4_gap_cnn_parameters_and_errors(digits):
  shapes = jax.eval_shape(layers.P4GapCNN().init, _key(8), digits)
  count = sum(p.size for p in jax.tree.leaves(shapes["params"]))
  # Lifting 9*8+8, group convs 9*8*4*16+16 and 2 x (9*16*4*16+16), group
  # batch norm 2*(8+16+16+16), dense 16*10+10.
  assert count == 80 + 4_624 + 2 * 9_232 + 112 + 170
  with pytest.raises(ValueError, match="one length"):
    layers.P4GapCNN(features=(4, 4), dilations=(1,)).init(_key(0), digits)


def test_p4cnn_has_about_25k_parameters(digits):
  shapes = jax.eval_shape(layers.P4CNN().init, _key(8), digits)
  count = sum(p.size for p in jax.tree.leaves(shapes["params"]))
  assert 24_000 <= count <= 26_000, count


def test_gradients_rotate_with_the_input(digits):
  model = layers.P4CNN(features=6)
  variables = jax.jit(model.init)(_key(9), digits)
  labels = jnp.array([1, 7])

  def loss(params, x):
    logits, _ = model.apply(
      {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
    )
    picked = jnp.take_along_axis(
      jax.nn.log_softmax(logits), labels[:, None], axis=1
    )
    return -jnp.mean(picked)

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  params = variables["params"]
  # The input gradient rotates with the input ...
  testing.assert_equivariant(
    lambda x: grad(params, x)[1], digits, output="image", rtol=1e-4
  )
  # ... and the parameter gradients do not move at all. (Some are zero in
  # exact arithmetic, e.g. biases before batch norm: compare all together.)
  testing.assert_invariant(
    lambda x: ravel_pytree(grad(params, x)[0])[0], digits, rtol=1e-4
  )


def test_shapes_biases_and_he_init():
  f = _normal(10, (1, 5, 5, 16, 4))
  params = jax.jit(layers.GroupConv(64).init)(_key(11), f)
  params = params["params"]
  assert params["kernel"].shape == (3, 3, 16, 4, 64)
  assert params["bias"].shape == (64,)  # one per G-channel
  np.testing.assert_array_equal(params["bias"], 0.0)
  fan_in = 3 * 3 * 16 * 4  # the input group axis counts
  np.testing.assert_allclose(
    np.std(params["kernel"]), np.sqrt(2.0 / fan_in), rtol=0.05
  )
  x = _normal(12, (1, 5, 5, 16))
  lift = jax.jit(layers.LiftingConv(64, group="p4m").init)(_key(13), x)
  assert lift["params"]["kernel"].shape == (3, 3, 16, 64)
  np.testing.assert_allclose(
    np.std(lift["params"]["kernel"]), np.sqrt(2.0 / (3 * 3 * 16)), rtol=0.05
  )
  out = layers.LiftingConv(2, group="p4m", use_bias=False).apply(
    {"params": {"kernel": lift["params"]["kernel"][..., :2]}}, x
  )
  assert out.shape == (1, 5, 5, 2, 8)


def test_group_batch_norm_shares_statistics_over_the_group():
  f = 3.0 + 2.0 * _normal(14, (4, 5, 5, 3, 4))
  f[..., 0] += 5.0  # a group-dependent offset must not be normalised away
  bn = layers.GroupBatchNorm(momentum=0.9)
  variables = bn.init(_key(15), f, use_running_average=True)
  assert variables["params"]["scale"].shape == (3,)
  assert variables["batch_stats"]["mean"].shape == (3,)
  out, updates = bn.apply(
    variables, f, use_running_average=False, mutable=["batch_stats"]
  )
  axes = (0, 1, 2, 4)
  np.testing.assert_allclose(np.mean(out, axis=axes), 0.0, atol=1e-5)
  np.testing.assert_allclose(np.var(out, axis=axes), 1.0, rtol=1e-3)
  assert np.mean(out[..., 0]) > np.mean(out[..., 1:]) + 1.0
  np.testing.assert_allclose(
    updates["batch_stats"]["mean"], 0.1 * np.mean(f, axis=axes), rtol=1e-5
  )
  frozen = bn.apply(variables, f, use_running_average=True)
  np.testing.assert_allclose(frozen, f / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_bfloat16_compute_keeps_float32_parameters():
  x = _normal(16, (1, 6, 6, 2))
  model = layers.LiftingConv(3, dtype=jnp.bfloat16)
  variables = model.init(_key(17), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  assert model.apply(variables, x).dtype == jnp.bfloat16


def test_error_unknown_group():
  with pytest.raises(ValueError, match=r"\['p4', 'p4m'\], got 'p6'"):
    layers.LiftingConv(2, group="p6").init(
      _key(0), np.zeros((1, 5, 5, 1), np.float32)
    )


def test_error_group_axis_of_wrong_size():
  with pytest.raises(ValueError, match=r"\[N, H, W, C, 8\], got shape"):
    layers.GroupConv(2, group="p4m").init(
      _key(0), np.zeros((1, 5, 5, 1, 4), np.float32)
    )


def test_error_images_of_wrong_rank():
  with pytest.raises(ValueError, match=r"\[N, H, .*got shape \(5, 5, 1\)"):
    layers.P4CNN().init(_key(0), np.zeros((5, 5, 1), np.float32))


# --- dtypes by name, integer inputs -----------------------------------------


@pytest.mark.parametrize("alias", ["bf16", "bfloat16", "BF16", jnp.bfloat16])
def test_dtype_names_and_aliases_are_accepted(alias):
  x = np.ones((1, 5, 5, 1), np.float32)
  conv = layers.LiftingConv(2, dtype=alias, param_dtype="float32")
  variables = conv.init(_key(0), x)
  assert variables["params"]["kernel"].dtype == jnp.float32
  f = conv.apply(variables, x)
  assert f.dtype == jnp.bfloat16
  group = layers.GroupConv(2, dtype=alias, param_dtype="f32")
  assert group.init_with_output(_key(1), f)[0].dtype == jnp.bfloat16
  norm = layers.Normalization("layer", dtype=alias, param_dtype="fp32")
  assert norm.init_with_output(_key(2), f)[0].dtype == jnp.bfloat16
  model = layers.P4CNN(features=2, dtype=alias)
  logits, _ = model.init_with_output(_key(3), np.ones((1, 28, 28, 1)))
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize(
  "make",
  [
    lambda: layers.LiftingConv(2, dtype="int32"),
    lambda: layers.GroupConv(2, param_dtype=jnp.int8),
    lambda: layers.Normalization(dtype="bool"),
    lambda: layers.GroupBatchNorm(param_dtype="complex64"),
    lambda: layers.P4CNN(dtype="float33"),
    lambda: layers.P4GapCNN(dtype=3),
  ],
)
def test_non_float_dtypes_are_refused_at_construction(make):
  with pytest.raises(TypeError, match=r"\.(param_)?dtype must be a float"):
    make()


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.bool_])
def test_integer_inputs_are_cast_not_rescaled(dtype):
  pixels = np.arange(2 * 5 * 5).reshape(2, 5, 5, 1) % 3
  x_int, x_float = pixels.astype(dtype), pixels.astype(dtype).astype(np.float32)
  conv = layers.LiftingConv(2)
  variables = conv.init(_key(4), x_float)
  f = conv.apply(variables, x_int)
  assert f.dtype == jnp.float32
  np.testing.assert_array_equal(f, conv.apply(variables, x_float))
  f_int = np.asarray(f).round().astype(np.int32)
  gconv_ = layers.GroupConv(2)
  g_vars = gconv_.init(_key(5), f_int.astype(np.float32))
  np.testing.assert_array_equal(
    gconv_.apply(g_vars, f_int), gconv_.apply(g_vars, f_int.astype(np.float32))
  )
  # Normalisation of an integer input is float, not truncated back to int.
  norm = layers.GroupBatchNorm(use_running_average=False)
  y, _ = norm.init_with_output(_key(6), f_int)
  assert y.dtype == jnp.float32
  np.testing.assert_allclose(np.mean(np.asarray(y)), 0.0, atol=1e-5)
  logits, _ = layers.P4CNN(features=2).init_with_output(
    _key(7), np.zeros((1, 28, 28, 1), dtype)
  )
  assert logits.dtype == jnp.float32


def test_complex_inputs_are_refused():
  x = np.ones((1, 5, 5, 1), np.complex64)
  with pytest.raises(TypeError, match="expects real images"):
    layers.LiftingConv(2).init(_key(0), x)
  with pytest.raises(TypeError, match="expects real group maps"):
    layers.GroupConv(2).init(_key(0), np.ones((1, 5, 5, 1, 4), np.complex64))


@pytest.mark.parametrize("partitionable", [True, False])
def test_default_kernels_equal_jaxs_own_he_initialiser(partitionable):
  # The fast flat draw changes no value: a P4CNN initialises as it would
  # with jax's variance_scaling, eagerly and in the engine's jitted path.
  x = np.zeros((1, 7, 7, 1), np.float32)
  f = np.zeros((1, 7, 7, 2, 4), np.float32)
  he = functools.partial(
    jax.nn.initializers.variance_scaling, 2.0, "fan_in", "truncated_normal"
  )
  with jax.threefry_partitionable(partitionable):
    for make, axes, inputs in (
      (layers.LiftingConv, (0, 1, 2), x),
      (layers.GroupConv, (0, 1, 2, 3), f),
    ):
      ours = make(3).init(_key(8), inputs)
      theirs = make(3, kernel_init=he(in_axis=axes)).init(_key(8), inputs)
      chex.assert_trees_all_equal(ours, theirs)


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_group_pool_values_are_the_max_or_mean_over_the_group(reduce):
  # Invariance alone would pass a sum or a min as well: pin the values.
  f = np.asarray(_normal(9, (2, 3, 3, 2, 8)))
  got = layers.GroupPool(reduce).apply({}, f)
  want = f.max(axis=-1) if reduce == "max" else f.mean(axis=-1)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
