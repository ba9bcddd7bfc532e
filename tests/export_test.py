"""equivlab.nn.export: any network of equivlab layers as plain convolutions.

The group networks take a few Adam steps in train mode (so parameters and
batch statistics are far from their initial values), are exported, and
their eval-mode logits compared: to float error in float32, to 1e-10 in
float64. The user modules here are not in `models.py`.
"""

import functools
import os
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from equivlab import export as pinned
from equivlab import gconv, testing
from equivlab.nn import export, layers, models


def _key(seed):
  return jax.random.key(seed, impl="rbg")  # compiles faster on CPU


def _images(seed, n=3, size=15, dtype=np.float32):
  x = np.random.default_rng(seed).standard_normal((n, size, size, 1))
  return x.astype(dtype)


class UserNet(nn.Module):
  """Lifting conv, group BN, strided group conv, group pooling, spatial
  mean and Dense: a network that models.py does not have."""

  group: str = "p4"
  padding: str = "SAME"
  dtype: object = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    opts = dict(
      group=self.group, dtype=self.dtype, param_dtype=self.dtype or jnp.float32
    )
    h = layers.LiftingConv(3, 3, padding=self.padding, **opts)(x)
    h = layers.GroupBatchNorm(
      use_running_average=not train, param_dtype=opts["param_dtype"]
    )(h)
    h = nn.relu(h)
    h = layers.GroupConv(4, 3, strides=2, padding="VALID", **opts)(h)
    h = layers.GroupBatchNorm(
      use_running_average=not train, param_dtype=opts["param_dtype"]
    )(h)
    h = nn.relu(h)
    h = layers.GroupConv(
      4, 3, kernel_dilation=2, padding="CIRCULAR", use_bias=False, **opts
    )(h)
    h = layers.GroupPool("max")(h)
    h = jnp.mean(h, axis=(1, 2))
    return nn.Dense(5, dtype=self.dtype, param_dtype=opts["param_dtype"])(h)


class Residual(nn.Module):
  """A conv whose output is also used besides the batch norm after it."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = layers.LiftingConv(2, 3)(x)
    y = layers.GroupBatchNorm(use_running_average=not train)(h)
    return jnp.mean(y + h, axis=(1, 2, 4))


class OwnGroupLayer(nn.Module):
  @nn.compact
  def __call__(self, f):
    w = self.param("w", nn.initializers.ones, (f.shape[-1],))
    return f * w.reshape(1, 1, 1, 1, -1)


class WithOwnLayer(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = layers.LiftingConv(2, 3)(x)
    h = OwnGroupLayer(name="scaled")(h)
    return jnp.mean(h, axis=(1, 2, 3, 4))


def _train(model, x, steps=3):
  """A few Adam steps on random labels, train mode; returns the variables."""
  variables = jax.jit(functools.partial(model.init, train=False))(_key(0), x)
  tx = optax.adam(3e-2)
  labels = jnp.arange(x.shape[0]) % 2

  @jax.jit
  def step(params, stats, opt_state):
    def loss(p):
      logits, new = model.apply(
        {"params": p, **stats}, x, train=True, mutable=["batch_stats"]
      )
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return jnp.mean(ce), new

    (_, new), grads = jax.value_and_grad(loss, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new, opt_state

  params, stats = variables["params"], {"batch_stats": variables["batch_stats"]}
  opt_state = tx.init(params)
  for _ in range(steps):
    params, stats, opt_state = step(params, stats, opt_state)
  return {"params": params, **stats}


@pytest.fixture(scope="module")
def user_net():
  model = UserNet()
  return model, _train(model, jnp.asarray(_images(0)))


def _layer_types(module, variables, x):
  kinds = []

  def record(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and context.module.path:
      kinds.append(type(context.module).__name__)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    module.apply(variables, x)
  return kinds


def test_user_module_gives_the_same_logits(user_net):
  model, variables = user_net
  plain, plain_vars = pinned.export(model, variables)
  assert pinned.export is export.export
  # Both batch norms are folded into the convolution before them.
  assert plain.folded == ("GroupBatchNorm_0", "GroupBatchNorm_1")
  assert set(plain_vars) == {"params"}
  kernels = {k: v["kernel"].shape for k, v in plain_vars["params"].items()}
  assert kernels == {
    "LiftingConv_0": (3, 3, 1, 12),
    "GroupConv_0": (3, 3, 12, 16),
    "GroupConv_1": (3, 3, 16, 16),
    "Dense_0": (4, 5),
  }
  x = _images(1, n=4)  # not the training batch
  want = model.apply(variables, x)
  got = jax.jit(plain.apply)(plain_vars, x)
  assert got.shape == want.shape == (4, 5)
  assert testing.relative_error(got, want) < 1e-5
  # Breaking the fold (the batch norm's shift dropped) is caught.
  broken = jax.tree.map(lambda a: a, plain_vars)
  broken["params"]["GroupConv_0"]["bias"] = (
    0 * broken["params"]["GroupConv_0"]["bias"]
  )
  assert testing.relative_error(plain.apply(broken, x), want) > 1e-3


@pytest.mark.parametrize("padding", ["VALID", ((2, 1), (2, 1))])
def test_p4m_and_other_paddings(padding):
  model = UserNet(group="p4m", padding=padding)
  variables = _train(model, jnp.asarray(_images(0)), steps=1)
  plain, plain_vars = export.export(
    model, variables, input_shape=(1, 15, 15, 1)
  )
  x = _images(2)
  np.testing.assert_allclose(
    plain.apply(plain_vars, x), model.apply(variables, x), rtol=1e-5, atol=1e-5
  )


def test_same_logits_in_float64():
  with jax.enable_x64(True):
    model = UserNet(dtype=jnp.float64)
    x = jnp.asarray(_images(0, dtype=np.float64))
    variables = _train(model, x, steps=1)
    plain, plain_vars = export.export(model, variables)
    x2 = jnp.asarray(_images(3, dtype=np.float64))
    got = plain.apply(plain_vars, x2)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(
      got, model.apply(variables, x2), rtol=1e-10, atol=1e-12
    )


def test_a_conv_output_used_twice_is_not_folded():
  model = Residual()
  x = jnp.asarray(_images(0))
  variables = _train_stats_only(model, x)
  plain, plain_vars = export.export(model, variables)
  assert plain.folded == ()
  assert set(plain_vars["params"]["GroupBatchNorm_0"]) == {"mul", "add"}
  np.testing.assert_allclose(
    plain.apply(plain_vars, x), model.apply(variables, x), rtol=1e-5, atol=1e-6
  )


def _train_stats_only(model, x):
  variables = model.init(_key(0), x)
  _, stats = model.apply(variables, x, train=True, mutable=["batch_stats"])
  return {**variables, **stats}


def test_export_p4cnn_is_a_case_of_export(monkeypatch):
  model = models.get_model("p4cnn", features=2, num_classes=3)
  x = jnp.asarray(_images(0, n=2, size=28))
  variables = _train_stats_only(model, x)
  plain, plain_vars = export.export_p4cnn(model, variables, check_on=x)
  assert isinstance(plain, export.ExportedNetwork) and len(plain.folded) == 6
  assert _layer_types(plain, plain_vars, x)[:2] == [
    "LiftingConv",
    "GroupBatchNorm",
  ]

  def no_bank(*args, **kwargs):
    raise AssertionError("the exported network expanded a filter bank")

  # No filter bank is expanded and no group convolution runs at inference.
  from equivlab.gconv import conv as gconv_conv  # noqa: PLC0415

  want = model.apply(variables, x)
  monkeypatch.setattr(gconv_conv, "lifting_filter_bank", no_bank)
  monkeypatch.setattr(gconv_conv, "group_filter_bank", no_bank)
  got = plain.apply(plain_vars, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  testing.assert_invariant(functools.partial(plain.apply, plain_vars), x)


# --------------------------------------------------------------------------
# The pure functions, against the definitions.


@pytest.mark.parametrize("group", ["p4", "p4m"])
def test_layer_params_are_the_group_convolutions(group):
  order = 4 if group == "p4" else 8
  rng = np.random.default_rng(3)
  x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
  f = rng.standard_normal((2, 6, 6, 3, order)).astype(np.float32)
  wl = rng.standard_normal((3, 3, 3, 2)).astype(np.float32)
  wg = rng.standard_normal((3, 3, 3, order, 2)).astype(np.float32)
  b = rng.standard_normal(2).astype(np.float32)
  conv = functools.partial(
    jax.lax.conv_general_dilated,
    window_strides=(1, 1),
    padding="VALID",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  lifting = {"p4": gconv.lifting_conv, "p4m": gconv.lifting_conv_p4m}[group]
  group_conv = {"p4": gconv.group_conv, "p4m": gconv.group_conv_p4m}[group]
  kernel, bias = export.lifting_layer_params(wl, b, group)
  want = lifting(x, wl, padding="VALID") + b.reshape(1, 1, 1, 2, 1)
  np.testing.assert_allclose(
    conv(x, kernel) + bias[None, None, None],
    want.reshape(2, 4, 4, -1),
    rtol=1e-5,
    atol=1e-5,
  )
  kernel, bias = export.group_layer_params(wg, None, group)
  np.testing.assert_array_equal(bias, 0.0)
  want = group_conv(f, wg, padding="VALID").reshape(2, 4, 4, -1)
  got = conv(f.reshape(2, 6, 6, -1), kernel)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_fold_batch_norm_is_the_eval_mode_formula():
  rng = np.random.default_rng(4)
  kernel = rng.standard_normal((3, 3, 2, 2 * 4))
  bias = rng.standard_normal(8)
  norm = {"scale": rng.uniform(0.5, 2, 2), "bias": rng.standard_normal(2)}
  stats = {"mean": rng.standard_normal(2), "var": rng.uniform(0.1, 3, 2)}
  k2, b2 = export.fold_batch_norm(
    kernel, bias, norm, stats, order=4, epsilon=1e-5
  )
  x = rng.standard_normal((1, 5, 5, 2))
  with jax.enable_x64(True):
    conv = functools.partial(
      jax.lax.conv_general_dilated,
      window_strides=(1, 1),
      padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = (conv(x, kernel) + bias[None, None, None]).reshape(1, 3, 3, 2, 4)
    bn = layers.GroupBatchNorm(use_running_average=True)
    want = bn.apply({"params": norm, "batch_stats": stats}, y)
    got = (conv(x, k2) + b2[None, None, None]).reshape(1, 3, 3, 2, 4)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# Bad input.


def test_error_a_layer_it_cannot_export():
  model = WithOwnLayer()
  x = jnp.asarray(_images(0))
  variables = model.init(_key(0), x)
  with pytest.raises(TypeError, match="'scaled' of type OwnGroupLayer"):
    export.export(model, variables)
  with pytest.raises(TypeError, match="flax.linen Module, got str"):
    export.export("p4cnn", variables)
  with pytest.raises(TypeError, match="layers.P4CNN or P4MCNN .* got Z2CNN"):
    export.export_p4cnn(models.get_model("z2cnn"), {})


def test_error_variables_that_do_not_match(user_net):
  model, variables = user_net
  with pytest.raises(ValueError, match="do not match the model.*batch_stats"):
    export.export(model, {"params": variables["params"]})
  wider = UserNet(group="p4m")  # kernels of group axis 8, not 4
  with pytest.raises(ValueError, match="variables do not match the model"):
    export.export(wider, variables, input_shape=(1, 15, 15, 1))
  negative = jax.tree.map(lambda a: a, variables)
  negative["batch_stats"]["GroupBatchNorm_1"]["var"] = -negative["batch_stats"][
    "GroupBatchNorm_1"
  ]["var"]
  with pytest.raises(ValueError, match="'GroupBatchNorm_1'.* variance must"):
    export.export(model, negative)
  with pytest.raises(ValueError, match="input_shape"):
    export.export(model, variables, input_shape=(1, 0, 15, 1))


def test_error_exported_variables_from_another_network(user_net):
  model, variables = user_net
  plain, plain_vars = export.export(model, variables)
  other = Residual()
  x = jnp.asarray(_images(0))
  o_plain, o_vars = export.export(other, _train_stats_only(other, x))
  with pytest.raises(ValueError, match="'LiftingConv_0' do not match"):
    plain.apply(o_vars, x)
  del o_plain


def test_error_batch_norm_in_train_mode():
  class AlwaysTrain(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = layers.LiftingConv(2, 3)(x)
      return layers.GroupBatchNorm(use_running_average=False)(h)

  model = AlwaysTrain()
  x = jnp.asarray(_images(0))
  variables = model.init(_key(0), x)
  with pytest.raises(ValueError, match="needs eval mode"):
    export.export(model, variables)


def test_batch_norm_affine_errors():
  norm = {"scale": np.ones(2), "bias": np.zeros(2)}
  with pytest.raises(ValueError, match=r"lack \['var'\]"):
    export.batch_norm_affine(norm, {"mean": np.zeros(2)}, epsilon=1e-5)
  with pytest.raises(ValueError, match="one length"):
    export.batch_norm_affine(
      norm, {"mean": np.zeros(3), "var": np.ones(3)}, epsilon=1e-5
    )
  with pytest.raises(ValueError, match="variance must be finite and >= 0"):
    export.batch_norm_affine(
      norm, {"mean": np.zeros(2), "var": np.array([1.0, -0.5])}, epsilon=1e-5
    )


# --------------------------------------------------------------------------
# The deployable artifact.

_LOADER = textwrap.dedent(
  """
  import sys
  import numpy as np
  import jax
  x = np.load(sys.argv[2])
  exported = jax.export.deserialize(bytearray(open(sys.argv[1], "rb").read()))
  np.save(sys.argv[3], np.asarray(exported.call(x)))
  banned = [m for m in sys.modules if m.split(".")[0] in ("equivlab", "flax")]
  assert not banned, banned
  """
)


def test_saved_inference_runs_with_jax_and_numpy_only(user_net, tmp_path):
  model, variables = user_net
  path = tmp_path / "net.jax"
  pinned.save_inference(model, variables, path, input_shape=(2, 15, 15, 1))
  x = _images(4, n=5)  # another batch size: the batch is symbolic
  want = np.asarray(model.apply(variables, x))
  np.testing.assert_allclose(
    pinned.load_inference(path)(x), want, rtol=1e-5, atol=1e-6
  )
  np.save(tmp_path / "x.npy", x)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  subprocess.run(
    [
      sys.executable,
      "-c",
      _LOADER,
      str(path),
      str(tmp_path / "x.npy"),
      str(tmp_path / "y.npy"),
    ],
    check=True,
    cwd=tmp_path,
    env=env,
    timeout=300,
  )
  np.testing.assert_allclose(
    np.load(tmp_path / "y.npy"), want, rtol=1e-5, atol=1e-6
  )


def test_saved_inference_with_a_fixed_batch(user_net, tmp_path):
  model, variables = user_net
  path = tmp_path / "fixed.jax"
  exported = export.save_inference(
    model, variables, path, input_shape=(2, 15, 15, 1), batch_polymorphic=False
  )
  assert exported.in_avals[0].shape == (2, 15, 15, 1)
  infer = export.load_inference(path)
  assert infer.exported.in_avals[0].shape == (2, 15, 15, 1)
  with pytest.raises(ValueError, match="input_shape"):
    export.save_inference(model, variables, path, input_shape=(2, 0, 15, 1))
  (tmp_path / "bad.jax").write_bytes(b"not an artifact")
  with pytest.raises(ValueError, match="not a jax.export artifact"):
    export.load_inference(tmp_path / "bad.jax")


def test_benchmark_export_smoke():
  from benchmarks import gconv as bench  # noqa: PLC0415

  results = bench.run_export(batch=2, repeats=1, names=("p4cnn",))
  assert set(results["ratios"]) == {"(d) p4cnn exported / group"}
  assert results["ratios"]["(d) p4cnn exported / group"] > 0


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--size=14"], "need --size >= 28, got 14"),
    (["--batch=0"], "--batch must be >= 1, got 0"),
  ],
)
def test_benchmark_refuses_bad_sizes_before_timing(
  monkeypatch, capsys, argv, message
):
  from benchmarks import gconv as bench  # noqa: PLC0415

  monkeypatch.setattr("sys.argv", ["gconv", *argv])
  with pytest.raises(SystemExit):
    bench.main()
  assert message in capsys.readouterr().err


def test_other_normalisations_and_no_train_argument_run_as_they_are():
  class LayerNormNet(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = layers.LiftingConv(2, 3, group="p4m")(x)
      h = layers.Normalization(kind="layer")(h)
      h = layers.SpatialMaxPool(2)(nn.relu(h))
      return nn.Dense(3)(jnp.max(h, axis=(1, 2, 4)))

  model = LayerNormNet()
  x = jnp.asarray(_images(0, size=16))
  variables = model.init(_key(0), x)
  plain, plain_vars = export.export(model, variables)
  assert plain.call_kwargs == ()
  assert set(plain_vars["params"]["Normalization_0"]) == {"scale", "bias"}
  np.testing.assert_allclose(
    plain.apply(plain_vars, x), model.apply(variables, x), rtol=1e-5, atol=1e-6
  )
