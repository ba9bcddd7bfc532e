"""equivlab.nn.export: a trained G-CNN as a plain CNN with the same logits.

The group networks are trained for a few Adam steps (so the parameters and
the batch statistics are far from their initial values), exported, and
their eval-mode logits compared: to float error in float32, to 1e-12 in
float64.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from equivlab import gconv, testing
from equivlab.nn import export, layers, models

_NAMES = ["p4cnn", "p4cnn_rotpool", "p4mcnn"]


def _key(seed):
  return jax.random.key(seed, impl="rbg")  # compiles faster on CPU


def _images(seed, n=3, size=28):
  x = np.random.default_rng(seed).standard_normal((n, size, size, 1))
  return np.abs(x).astype(np.float32)


def _train(model, x, steps=3):
  """A few Adam steps on random labels; returns the variables."""
  variables = _init(model, x)
  tx = optax.adam(3e-2)
  labels = jnp.arange(x.shape[0]) % model.num_classes

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
def trained():
  x = _images(0)
  nets = {}
  for name in _NAMES:
    model = models.get_model(name, features=4, num_classes=5)
    nets[name] = (model, _train(model, x))
  return x, nets


def _init(model, x):
  return jax.jit(functools.partial(model.init, train=False))(_key(0), x)


@pytest.mark.parametrize("name", _NAMES)
def test_same_logits_in_float32(trained, name):
  x, nets = trained
  model, variables = nets[name]
  moved = jax.tree.map(
    lambda a, b: float(jnp.max(jnp.abs(a - b))), _init(model, x), variables
  )
  assert min(jax.tree.leaves(moved)) > 0  # every leaf moved by training
  plain, plain_vars = export.export_p4cnn(model, variables, check_on=x)
  x_new = _images(1)  # not the training batch
  want = model.apply(variables, x_new, train=False)
  got = jax.jit(plain.apply)(plain_vars, x_new)
  assert got.shape == want.shape == (3, 5) and got.dtype == jnp.float32
  assert testing.relative_error(got, want) < 1e-5
  # The exported network is a plain CNN: nothing of the group is left.
  kinds = {type(m).__name__ for m in _submodules(plain, plain_vars, x_new)}
  assert kinds == {"Conv"}


def _submodules(module, variables, x):
  modules = []

  def record(next_fun, args, kwargs, context):
    if type(context.module) is not type(module):
      modules.append(context.module)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    module.apply(variables, x)
  return modules


def _last_conv(model):
  return "LiftingConv_6" if model.rotation_pooling else "GroupConv_5"


@pytest.mark.parametrize("name", _NAMES)
def test_same_logits_in_float64(trained, name):
  x, nets = trained
  model, variables = nets[name]
  with jax.enable_x64(True):
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x64 = jnp.asarray(_images(2), jnp.float64)
    # P4CNN casts its logits to float32: take its last convolution's
    # float64 output instead and pool it as P4CNN does.
    _, state = model.apply(
      v64,
      x64,
      train=False,
      capture_intermediates=True,
      mutable=["intermediates"],
    )
    (last,) = state["intermediates"][_last_conv(model)]["__call__"]
    assert last.dtype == jnp.float64
    want = jnp.mean(gconv.group_pool(last, "max"), axis=(1, 2))
    plain, plain_vars = export.export_p4cnn(model, v64, check_on=x64)
    got = plain.clone(output_dtype=None).apply(plain_vars, x64)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_exported_p4mcnn_is_invariant_to_rotations_and_mirrors(trained):
  x, nets = trained
  model, variables = nets["p4mcnn"]
  plain, plain_vars = export.export_p4cnn(model, variables)
  apply = jax.jit(functools.partial(plain.apply, plain_vars))
  testing.assert_invariant(apply, x, group="p4m", rtol=1e-5)


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


def test_error_not_a_p4cnn():
  with pytest.raises(TypeError, match="layers.P4CNN or P4MCNN .* got Z2CNN"):
    export.export_p4cnn(models.get_model("z2cnn"), {})


def test_error_variables_that_do_not_match(trained):
  _, nets = trained
  model, variables = nets["p4cnn"]
  with pytest.raises(ValueError, match="must hold 'batch_stats'"):
    export.export_p4cnn(model, {"params": variables["params"]})
  rotpool, _ = nets["p4cnn_rotpool"]
  with pytest.raises(ValueError, match=r"lacks \['LiftingConv_1'"):
    export.export_p4cnn(rotpool, variables)
  with pytest.raises(ValueError, match=r"axis 3\) of size 8"):
    export.export_p4cnn(nets["p4mcnn"][0], variables)


def test_check_on_catches_a_layout_change(trained, monkeypatch):
  x, nets = trained
  model, variables = nets["p4cnn"]
  monkeypatch.setattr(export, "_POOL_AFTER", 2)  # a P4CNN that moved on
  with pytest.raises(RuntimeError, match="logits differ .* layout changed"):
    export.export_p4cnn(model, variables, check_on=x)


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
