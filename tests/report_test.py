"""equivlab.testing.equivariance_report: where a network loses its symmetry.

Cohen & Welling (ICML 2016): a G-CNN is equivariant layer by layer, so the
first layer whose output is not is where the symmetry is lost.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import testing
from equivlab.analysis import viz
from equivlab.nn import layers, models


def _key(seed=0):
  return jax.random.key(seed, impl="rbg")


def _images(n=2, size=16, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return rng.standard_normal((n, size, size, 1)).astype(dtype)


class PlainInTheMiddle(nn.Module):
  """A plain nn.Conv between two group layers."""

  @nn.compact
  def __call__(self, x):
    h = layers.LiftingConv(2, 3)(x)
    n, height, width = h.shape[:3]
    h = nn.Conv(8, (3, 3))(h.reshape(n, height, width, 8))
    h = layers.GroupConv(2, 3)(h.reshape(n, height, width, 2, 4))
    return jnp.mean(layers.GroupPool()(h), axis=(1, 2, 3))


class Strided(nn.Module):
  """VALID convolutions with a stride-2 group conv in the middle."""

  dtype: object = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    opts = dict(padding="VALID", dtype=self.dtype)
    pdt = self.dtype or jnp.float32
    h = layers.LiftingConv(2, 3, param_dtype=pdt, **opts)(x)
    h = layers.GroupBatchNorm(use_running_average=not train)(h)
    h = nn.relu(h)
    h = layers.GroupConv(3, 3, strides=2, param_dtype=pdt, **opts)(h)
    h = layers.GroupConv(2, 3, param_dtype=pdt, **opts)(h)
    return jnp.mean(layers.GroupPool()(h), axis=(1, 2))


def _init(model, x, **kwargs):
  return jax.jit(lambda k: model.init(k, x, **kwargs))(_key())


@pytest.mark.parametrize("name", ["p4cnn", "p4mcnn"])
def test_group_cnns_are_within_float_error_everywhere(name):
  model = models.get_model(name, features=2, num_classes=3)
  x = _images(size=28)
  variables = _init(model, x, train=False)
  group = "p4m" if name == "p4mcnn" else "p4"
  report = testing.equivariance_report(model, variables, x, group=group)
  assert report.first_break is None and report.why is None
  assert all(r.error <= 1e-4 for r in report if r.error is not None)
  assert report.paths[0] == "LiftingConv_0" and report.paths[-1] == ""
  assert report["LiftingConv_0"].action == group
  assert report["LiftingConv_0"].exact_expected is True
  assert report[""].action == "invariant"
  assert report.forward_passes == 1 + (7 if group == "p4m" else 3)
  assert "within float error" in str(report)


def test_a_plain_conv_between_group_layers_is_the_first_break():
  model = PlainInTheMiddle()
  x = _images()
  report = testing.equivariance_report(model, _init(model, x), x)
  assert report.broken.path == "Conv_0"
  assert report.broken.action == "image"
  assert report.broken.error > 1e-2
  assert report["LiftingConv_0"].error < 1e-5
  assert "plain flax convolution" in report.why
  text = str(report)
  assert "first break: Conv_0 (Conv)" in text
  assert text.splitlines()[0].split()[:4] == ["#", "path", "layer", "action"]


@pytest.mark.parametrize(("size", "breaks"), [(16, True), (15, False)])
def test_stride_2_on_an_even_input_is_named_and_predicted(size, breaks):
  model = Strided()
  x = _images(size=size)
  report = testing.equivariance_report(model, _init(model, x), x)
  row = report["GroupConv_0"]
  assert row.exact_expected is (not breaks)
  if breaks:  # 16 -> 14, and a stride-2 window cannot centre on 14
    assert report.broken is row
    assert "stride 2 on an even input (14x14" in report.why
    assert row.reason == report.why
  else:
    assert report.first_break is None and row.reason is None


def test_works_under_jit_and_without():
  model = PlainInTheMiddle()
  x = _images()
  variables = _init(model, x)
  a = testing.equivariance_report(model, variables, x, jit=True)
  b = testing.equivariance_report(model, variables, x, jit=False)
  assert a.paths == b.paths and a.first_break == b.first_break
  np.testing.assert_allclose(
    [r.error for r in a], [r.error for r in b], rtol=1e-3, atol=1e-6
  )


def test_float64_has_the_float64_tolerance():
  with jax.enable_x64(True):
    model = Strided(dtype=jnp.float64)
    x = _images(size=15, dtype=np.float64)
    variables = _init(model, jnp.asarray(x))
    report = testing.equivariance_report(model, variables, x)
    assert report.dtype == "float64" and report.rtol == 1e-10
    assert report.first_break is None
    assert max(r.error for r in report) < 1e-12
    even = _images(size=16, dtype=np.float64)
    assert testing.equivariance_report(model, variables, even).broken.path == (
      "GroupConv_0"
    )


def test_train_mode_with_batch_statistics():
  model = Strided()
  x = _images(n=3, size=15)
  variables = _init(model, x)
  report = testing.equivariance_report(model, variables, x, train=True)
  assert report.first_break is None
  norm = report["GroupBatchNorm_0"]
  assert norm.action == "p4" and norm.error < 1e-4
  # Train mode normalises with the batch's statistics, not the running
  # ones (zeros and ones at init): the outputs differ.
  eval_ = testing.equivariance_report(model, variables, x)
  assert eval_.first_break is None
  with pytest.raises(ValueError, match="takes no 'train' argument"):
    testing.equivariance_report(
      PlainInTheMiddle(), _init(PlainInTheMiddle(), x), x, train=True
    )


def test_one_forward_pass_per_element():
  calls = []

  class Counting(nn.Module):
    @nn.compact
    def __call__(self, x):
      calls.append(1)
      return layers.LiftingConv(2, 3)(x)

  model = Counting()
  x = _images()
  variables = model.init(_key(), x)
  calls.clear()
  report = testing.equivariance_report(
    model, variables, x, group="p4m", jit=False
  )
  assert len(calls) == report.forward_passes == 8


def test_overrides_shifts_and_json():
  model = PlainInTheMiddle()
  x = _images()
  variables = _init(model, x)
  report = testing.equivariance_report(
    model, variables, x, shifts=[(1, 2)], actions={"": "none"}
  )
  assert report[""].error is None and report[""].action == "none"
  assert "shift (1, 2)" in report.elements
  # Zero padding does not commute with circular shifts: the lifting conv
  # breaks first, and the report says so.
  assert report.broken.path == "LiftingConv_0"
  assert "shift" in report.broken.element and "CIRCULAR" in report.why
  data = json.loads(json.dumps(report.to_dict()))
  assert data["first_break_path"] == "LiftingConv_0"
  assert [r["path"] for r in data["rows"]] == report.paths


def test_errors():
  model = PlainInTheMiddle()
  x = _images()
  variables = _init(model, x)
  with pytest.raises(
    ValueError, match=r"paths the model does not have: \['Nope'\]"
  ):
    testing.equivariance_report(model, variables, x, actions={"Nope": "p4"})
  with pytest.raises(ValueError, match="actions\\['Conv_0'\\]"):
    testing.equivariance_report(model, variables, x, actions={"Conv_0": "z2"})
  with pytest.raises(ValueError, match="cannot be mirrored"):
    testing.equivariance_report(
      model, variables, x, group="p4m", actions={"Conv_0": "p4"}
    )
  with pytest.raises(TypeError, match="flax.linen Module"):
    testing.equivariance_report(lambda a: a, variables, x)
  with pytest.raises(ValueError, match="square"):
    testing.equivariance_report(model, variables, x[:, :, :-1])
  with pytest.raises(TypeError, match="train must be a bool"):
    testing.equivariance_report(model, variables, x, train="yes")


def test_why_inexact_names_the_cause():
  assert "stride 2 on an even input (28x28" in testing.why_inexact(
    28, 3, 2, "VALID"
  )
  assert testing.why_inexact(27, 3, 2, "VALID") is None
  assert testing.why_inexact(8, 3, 1, ((0, 1), (0, 1))).startswith(
    "asymmetric padding (0, 1)"
  )


def test_plot_draws_the_report(tmp_path):
  model = PlainInTheMiddle()
  x = _images()
  report = testing.equivariance_report(model, _init(model, x), x)
  path = viz.plot_equivariance_report(report, tmp_path / "r.png")
  assert (tmp_path / "r.png").stat().st_size > 1000
  viz.plot_equivariance_report(report.to_dict(), tmp_path / "d.png")
  assert path.endswith("r.png")


def test_the_compiled_forward_is_reused_across_shapes():
  # One compiled forward per model; each input shape keeps its own rows.
  model = Strided()
  breaks = []
  for size in (16, 15, 16):
    x = _images(size=size)
    report = testing.equivariance_report(model, _init(model, x), x)
    breaks.append(report.first_break is not None)
    assert report["LiftingConv_0"].shape[1] == size - 2
  assert breaks == [True, False, True]


class P4mBroken(nn.Module):
  """p4m layers, then a plain conv: rows of every action."""

  @nn.compact
  def __call__(self, x):
    h = layers.LiftingConv(2, 3, group="p4m", padding="CIRCULAR")(x)
    h = layers.GroupConv(2, 3, group="p4m", padding="CIRCULAR")(h)
    h = nn.Conv(3, (3, 3))(h.reshape(*h.shape[:3], 16))
    return jnp.mean(h, axis=(1, 2))


def test_errors_match_equivariance_error_on_each_output():
  model = P4mBroken()
  x = _images(size=9)
  variables = _init(model, x)
  report = testing.equivariance_report(
    model, variables, x, group="p4m", shifts=[(2, -1)]
  )

  def output(path, a):
    _, state = model.apply(
      variables, a, capture_intermediates=True, mutable=["intermediates"]
    )
    tree = state["intermediates"]
    for part in path.split("/") if path else []:
      tree = tree[part]
    return tree["__call__"][0]

  for row in report:
    want = testing.equivariance_error(
      lambda a, p=row.path: output(p, a),
      x,
      group="p4m",
      output=row.action,
      shifts=[(2, -1)],
    )
    name, err = testing.worst(want)
    np.testing.assert_allclose(row.error, err, rtol=1e-3, atol=1e-7)
  assert [r.action for r in report] == ["p4m", "p4m", "image", "invariant"]
  assert report.broken.path == "Conv_0"


def test_a_block_on_group_maps():
  class Block(nn.Module):
    @nn.compact
    def __call__(self, f):
      h = layers.GroupConv(2, 3, group="p4m")(f)
      return nn.relu(layers.Normalization(kind="layer")(h))

  f = np.random.default_rng(1).standard_normal((2, 7, 7, 3, 8))
  f = f.astype(np.float32)
  model = Block()
  report = testing.equivariance_report(
    model, _init(model, f), f, group="p4m", input="p4m"
  )
  assert report.paths == ["GroupConv_0", "Normalization_0", ""]
  assert [r.action for r in report] == ["p4m"] * 3
  assert report.first_break is None
  with pytest.raises(ValueError, match="group axis"):
    testing.equivariance_report(model, _init(model, f), f, input="p4")
