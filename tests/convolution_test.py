"""equivlab.ops.convolution: the CPU path equals one XLA convolution."""

import json
import os

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from equivlab import gconv
from equivlab.nn import layers, models
from equivlab.ops import convolution

_DN = ("NHWC", "HWIO", "NHWC")


def _reference(x, k, stride, padding, dilation):
  return lax.conv_general_dilated(
    x, k, stride, padding, rhs_dilation=dilation, dimension_numbers=_DN
  )


def _loss(conv):
  return lambda x, k: jnp.sum(jnp.sin(conv(x, k)))


# Channels 3 take XLA's filter gradient (3 * 3 * 3 < 256), 30 and 40 the
# im2col products; each shape meets every padding kind, stride and dilation.
_SETTINGS = [
  ((1, 1), (1, 1), "VALID"),
  ((2, 2), (1, 1), "SAME"),
  ((1, 1), (2, 2), ((2, 1), (0, 3))),
  ((2, 1), (2, 2), "VALID"),
]
_CASES = [
  (shape, *setting)
  for shape in [
    (3, 9, 11, 3, 2, 3, 3),
    (2, 12, 12, 40, 2, 3, 3),
    (3, 10, 7, 30, 4, 2, 3),
  ]
  for setting in _SETTINGS
]


@pytest.mark.parametrize("shape, stride, dilation, padding", _CASES)
def test_cpu_path_equals_xla_in_values_and_gradients(
  shape, stride, dilation, padding
):
  n, h, w, cin, cout, kh, kw = shape
  rng = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)))
    k = jnp.asarray(rng.standard_normal((kh, kw, cin, cout)))

    def ours(x, k):
      return convolution.conv2d(
        x, k, stride=stride, padding=padding, dilation=dilation, impl="cpu"
      )

    def ref(x, k):
      return _reference(x, k, stride, padding, dilation)

    np.testing.assert_allclose(ours(x, k), ref(x, k), rtol=1e-12, atol=1e-12)
    got = jax.grad(_loss(ours), (0, 1))(x, k)
    want = jax.grad(_loss(ref), (0, 1))(x, k)
    for a, b in zip(got, want, strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-11)


def test_filter_gradient_in_chunks_with_a_ragged_last_chunk(monkeypatch):
  # 5 images in chunks of 2 leave a last chunk padded with a zero image,
  # which must add nothing. A chunk's column shifts are rows * W' * kw * Cin
  # float64 values per image: 6 * 4 * 3 * 32 * 8 bytes.
  monkeypatch.setattr(convolution, "_CHUNK_BYTES", 2 * 6 * 4 * 3 * 32 * 8)
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x = jnp.asarray(rng.standard_normal((5, 6, 6, 32)))
    dy = jnp.asarray(rng.standard_normal((5, 4, 4, 7)))
    k = jnp.zeros((3, 3, 32, 7))
    got = convolution.filter_gradient(
      x, dy, k.shape, (1, 1), ((0, 0), (0, 0)), (1, 1)
    )
    _, vjp = jax.vjp(lambda k: _reference(x, k, (1, 1), "VALID", (1, 1)), k)
    np.testing.assert_allclose(got, vjp(dy)[0], rtol=1e-12, atol=1e-13)


def test_float32_cpu_path_agrees_to_rounding_and_traces_once():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, 12, 12, 40)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 40, 16)), jnp.float32) / 19

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grads(x, k):
    conv = lambda x, k: convolution.conv2d(x, k, impl="cpu")  # noqa: E731
    return jax.grad(_loss(conv), (0, 1))(x, k)

  for _ in range(2):
    got = grads(x, k)
  plain = lambda x, k: _reference(x, k, (1, 1), "VALID", (1, 1))  # noqa: E731
  want = jax.grad(_loss(plain), (0, 1))(x, k)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_vmap_of_grad_passes_the_custom_vjp():
  rng = np.random.default_rng(3)
  xs = jnp.asarray(rng.standard_normal((3, 2, 8, 8, 32)), jnp.float32)
  k = jnp.asarray(rng.standard_normal((3, 3, 32, 4)), jnp.float32)

  def grad_k(impl):
    conv = lambda x, k: convolution.conv2d(x, k, impl=impl)  # noqa: E731
    return jax.vmap(lambda x: jax.grad(_loss(conv), 1)(x, k))(xs)

  np.testing.assert_allclose(grad_k("cpu"), grad_k("xla"), rtol=1e-4, atol=1e-5)


def test_forward_mode_needs_the_xla_path():
  x = jnp.ones((1, 12, 12, 32))  # 10x10 outputs: the custom-VJP path
  k = jnp.ones((3, 3, 32, 2))
  for impl in ("xla", "cpu"):
    conv = lambda k, impl=impl: convolution.conv2d(x, k, impl=impl)  # noqa: E731
    if impl == "xla":
      jax.jvp(conv, (k,), (k,))
    else:
      with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(conv, (k,), (k,))


def test_auto_picks_by_backend_dtype_and_environment(monkeypatch):
  monkeypatch.delenv(convolution.ENV_VAR, raising=False)
  assert jax.default_backend() == "cpu"
  assert convolution.resolve_impl("auto", jnp.float32) == "cpu"
  assert convolution.resolve_impl("auto", jnp.float64) == "cpu"
  assert convolution.resolve_impl("auto", jnp.bfloat16) == "xla"
  assert convolution.resolve_impl("xla", jnp.float32) == "xla"
  monkeypatch.setenv(convolution.ENV_VAR, "XLA")
  assert convolution.resolve_impl("auto", jnp.float32) == "xla"
  assert convolution.resolve_impl("cpu", jnp.float32) == "cpu"
  monkeypatch.setenv(convolution.ENV_VAR, "fast")
  with pytest.raises(ValueError, match="EQUIVLAB_CONV_IMPL must be"):
    convolution.resolve_impl("auto")
  with pytest.raises(ValueError, match="impl must be one of"):
    convolution.resolve_impl("gpu")


def test_flax_conv_through_the_drop_in_is_flax_conv():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((2, 9, 9, 30)))
  for kwargs in (
    dict(padding="VALID"),
    dict(padding="SAME", strides=2),
    dict(padding="CIRCULAR", kernel_dilation=2),
    dict(padding="SAME", feature_group_count=3),  # falls back to lax
  ):
    plain = nn.Conv(6, (3, 3), **kwargs)
    ours = models.Conv(6, (3, 3), **kwargs)
    variables = plain.init(jax.random.key(0), x)
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == (
      jax.tree.structure(variables)
    )
    np.testing.assert_allclose(
      ours.apply(variables, x), plain.apply(variables, x), rtol=1e-5
    )
    g1, g2 = (
      jax.grad(lambda v, m=m: jnp.sum(m.apply(v, x) ** 2))(variables)
      for m in (ours, plain)
    )
    chex.assert_trees_all_close(g1, g2, rtol=1e-4, atol=1e-4)


def test_group_conv_impls_agree_and_stay_equivariant():
  rng = np.random.default_rng(5)
  f = jnp.asarray(rng.standard_normal((2, 9, 9, 8, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 8, 4, 5)), jnp.float32)
  out = {
    impl: gconv.group_conv(f, w, padding="VALID", impl=impl)
    for impl in ("xla", "cpu")
  }
  np.testing.assert_allclose(out["cpu"], out["xla"], rtol=1e-5, atol=1e-5)
  turned = gconv.group_conv(gconv.rotate_p4(f, 1), w, padding="VALID")
  np.testing.assert_allclose(
    turned, gconv.rotate_p4(out["cpu"], 1), rtol=1e-5, atol=1e-5
  )
  with pytest.raises(ValueError, match="impl must be one of"):
    gconv.lifting_conv(f[..., 0], w[:, :, :, 0], impl="cuda")


@pytest.mark.parametrize(
  "field, value",
  [("features", 0), ("kernel_size", 0), ("features", -1), ("strides", 0)],
)
def test_group_conv_layers_check_their_sizes(field, value):
  for cls in (layers.LiftingConv, layers.GroupConv):
    kwargs = {"features": 4, field: value}
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field} must be"):
      cls(**kwargs)
  with pytest.raises(ValueError, match="impl must be one of"):
    layers.GroupConv(4, conv_impl="fast")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.int32, jnp.bool_])
@pytest.mark.parametrize("size", [8, 9])
def test_tiled_max_pool_equals_reduce_window(dtype, size):
  rng = np.random.default_rng(6)
  f = jnp.asarray(rng.integers(-5, 5, (2, size, size, 3, 4))).astype(dtype)
  identity = gconv.pool._max_identity(f.dtype)
  want = lax.reduce_window(
    f, identity, lax.max, (1, 2, 2, 1, 1), (1, 2, 2, 1, 1), "VALID"
  )
  np.testing.assert_array_equal(gconv.spatial_max_pool(f, 2), want)


def test_peer_benchmark_times_our_side_and_forms_ratios():
  from benchmarks import gconv_peers  # noqa: PLC0415

  for group, layer, _ in gconv_peers.LAYERS:
    for variant in ("default", "jaxlib"):
      got = gconv_peers.jax_side(group, layer, 2, 2, 8, 1, variant)
      assert got["side"] == f"equivlab/{variant}" and got["min_s"] > 0
      assert got["peak_rss_mib"] > 0
  best = {
    "default": {"min_s": 1.0, "peak_rss_mib": 300.0},
    "jaxlib": {"min_s": 2.0, "peak_rss_mib": 300.0},
    "escnn": {"min_s": 4.0, "peak_rss_mib": 600.0},
  }
  assert gconv_peers._ratios(best) == {
    "default / escnn time": 0.25,
    "default / escnn peak memory": 0.5,
    "jaxlib / escnn time": 0.5,
    "jaxlib / escnn peak memory": 0.5,
    "jaxlib / default time": 2.0,
  }


def test_train_step_benchmark_times_every_variant_and_checks_its_flags(
  tmp_path, capsys
):
  from benchmarks import train_step  # noqa: PLC0415

  out = tmp_path / "steps.json"
  before = os.environ.get(convolution.ENV_VAR)
  got = train_step.main(
    ["--models=cnn", "--batch=2", "--steps=1", "--rounds=1", f"--json={out}"]
  )
  row = got["models"]["cnn"]
  assert all(row[f"{v}_ms"] > 0 for v in train_step.VARIANTS)
  assert row["jaxlib_over_default"] > 0 and row["cpu_over_default"] > 0
  assert json.loads(out.read_text()) == got
  assert os.environ.get(convolution.ENV_VAR) == before  # restored
  assert "jaxlib / default" in capsys.readouterr().out
  only = train_step.main(["--models=cnn", "--variants=cpu", "--batch=2"])
  assert set(only["models"]["cnn"]) == {"cpu_ms"}
  for bad in (
    ["--models=resnet"],
    ["--models="],
    ["--batch=0"],
    ["--variants=gpu"],
    ["--variants=cpu,cpu"],
  ):
    with pytest.raises(SystemExit):
      train_step.main(bad)
  assert "expected a comma-separated list" in capsys.readouterr().err
