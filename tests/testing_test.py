"""equivlab.testing: checks pass on equivariant code AND fail on broken code.

A property test that cannot fail proves nothing, so every assertion here
has a broken counterpart that must raise, with the message checked.
Expected errors are computed independently with NumPy's rot90/flip/roll.
"""

import functools
import os
import pathlib
import re
import subprocess
import sys

import flax.linen as nn
import hypothesis
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import strategies as st

from equivlab import gconv, groups, testing
from equivlab.nn import layers
from equivlab.testing import strategies

_README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
_HEADING = "## Test your own model's equivariance in CI"


def _normal(seed, shape, dtype=np.float32):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


_X = _normal(0, (2, 7, 7, 3))
_W = _normal(1, (3, 3, 3, 4)) / 5
_WG = _normal(2, (3, 3, 3, 4, 2)) / 10
_LIFT = jax.jit(lambda a: gconv.lifting_conv(a, _W))
_LIFT_P4M = jax.jit(lambda a: gconv.lifting_conv_p4m(a, _W))


def _plain_conv(a):
  """A plain convolution: equivariant to nothing but (interior) shifts."""
  out = jax.lax.conv_general_dilated(
    a, _W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )
  return jnp.stack([out] * 4, axis=-1)


# --------------------------------------------------------------------------
# Names and the actions: what each element does, written independently.


def test_element_names_follow_the_order_of_application():
  names = [testing.element_name(g) for g in groups.elements("p4m")]
  assert names == [
    "identity",
    "rot 90",
    "rot 180",
    "rot 270",
    "mirror",
    "mirror then rot 90",
    "mirror then rot 180",
    "mirror then rot 270",
  ]
  assert testing.element_name(groups.Element(0, 0, (2, 3))) == "shift (2, 3)"
  assert (
    testing.element_name(groups.Element(5, 1, (-1, 0)))
    == "mirror then rot 90 then shift (-1, 0)"
  )


def test_errors_equal_an_independent_numpy_computation():
  x = _X
  y = np.asarray(_LIFT(x))
  errors = testing.equivariance_error(
    _LIFT, x, elements=["rot 90", 3], shifts=[(2, 3)]
  )
  assert list(errors) == [
    "rot 90",
    "rot 270",
    "shift (2, 3)",
    "rot 90 then shift (2, 3)",
    "rot 270 then shift (2, 3)",
  ]

  def rotate_map(f, k):  # DESIGN.md: roll(rot90(f, k), k, axis=-1)
    return np.roll(np.rot90(f, k, axes=(1, 2)), k, axis=-1)

  def expected_error(moved_x, moved_y):
    got = np.asarray(_LIFT(moved_x), np.float64)
    return np.max(np.abs(got - moved_y)) / np.max(np.abs(moved_y))

  roll = functools.partial(np.roll, shift=(2, 3), axis=(1, 2))
  cases = {
    "rot 90": (np.rot90(x, 1, axes=(1, 2)), rotate_map(y, 1)),
    "rot 270": (np.rot90(x, 3, axes=(1, 2)), rotate_map(y, 3)),
    "shift (2, 3)": (roll(x), roll(y)),
    "rot 90 then shift (2, 3)": (
      roll(np.rot90(x, 1, axes=(1, 2))),
      roll(rotate_map(y, 1)),
    ),
  }
  for name, (mx, my) in cases.items():
    np.testing.assert_allclose(
      errors[name], expected_error(mx, my), rtol=1e-6, atol=1e-12
    )
  assert max(errors[k] for k in ("rot 90", "rot 270")) < 1e-5
  assert errors["shift (2, 3)"] > 1e-1  # SAME padding: not circular


def test_p4m_map_action_matches_the_group_law():
  # A p4m lifting conv passes under every element; with the group axis
  # read in the wrong order (rotation-major instead of mirror-major) the
  # same convolution fails: the action really permutes the group axis.
  testing.assert_equivariant(_LIFT_P4M, _X, group="p4m", output="p4m")

  def transposed(a):
    y = _LIFT_P4M(a)
    return y.reshape(*y.shape[:-1], 2, 4).swapaxes(-1, -2).reshape(y.shape)

  errors = testing.assert_not_equivariant(
    transposed, _X, group="p4m", output="p4m"
  )
  assert errors["rot 90"] > 1e-1 and errors["mirror"] > 1e-1


def test_jax_inputs_reach_fn_as_jax_arrays_and_numpy_as_numpy():
  seen = []

  def fn(a):
    seen.append(type(a))
    return jnp.sum(a, axis=(1, 2))

  testing.assert_invariant(fn, jnp.asarray(_X), elements=[1])
  testing.assert_invariant(fn, _X, elements=[1])
  assert all(issubclass(t, jax.Array) for t in seen[:2])
  assert all(t is np.ndarray for t in seen[2:])


# --------------------------------------------------------------------------
# Every assertion fails on broken code, and says where.


def test_assert_equivariant_fails_on_a_plain_conv_naming_the_worst():
  errors = testing.equivariance_error(_plain_conv, _X)
  name, err = max(errors.items(), key=lambda kv: kv[1])
  with pytest.raises(AssertionError) as info:
    testing.assert_equivariant(_plain_conv, _X)
  msg = str(info.value)
  assert f"worst element {name!r} has relative error {err:.3e}" in msg
  assert "> rtol 1.0e-04 (default for float32)" in msg
  assert "not p4-equivariant (input 'image', output 'p4')" in msg
  assert "3 of 3 elements fail" in msg


def test_assert_equivariant_fails_on_one_broken_element_only():
  # Transposing (H, W) commutes with rot 180 but not with rot 90 / 270.
  def transpose(a):
    return jnp.swapaxes(a, 1, 2)

  with pytest.raises(AssertionError, match=r"2 of 3 elements fail"):
    testing.assert_equivariant(transpose, _X, output="image")
  errors = testing.assert_equivariant(
    transpose, _X, output="image", elements=["rot 180"], rtol=0.0
  )
  assert errors == {"rot 180": 0.0}
  testing.assert_not_equivariant(transpose, _X, output="image")
  with pytest.raises(AssertionError, match=r"'rot 180' has relative error"):
    testing.assert_not_equivariant(transpose, _X, output="image", every=True)


def test_assert_invariant_fails_on_a_corner_pixel():
  testing.assert_invariant(lambda a: jnp.mean(a, axis=(1, 2)), _X, group="p4m")
  with pytest.raises(AssertionError) as info:
    testing.assert_invariant(lambda a: a[:, 0, 0], _X, group="p4m")
  assert "not p4m-invariant (input 'image')" in str(info.value)
  # The transpose ("mirror then rot 90") keeps the corner pixel in place.
  assert "6 of 7 elements fail" in str(info.value)
  with pytest.raises(AssertionError, match="'mirror' has relative error"):
    testing.assert_invariant(
      lambda a: a[:, 0, 0], _X, group="p4m", elements=[4]
    )


def test_assert_not_equivariant_fails_on_an_equivariant_fn():
  testing.assert_not_equivariant(_plain_conv, _X, min_error=0.1, every=True)
  with pytest.raises(AssertionError) as info:
    testing.assert_not_equivariant(_LIFT, _X)
  msg = str(info.value)
  assert "negative control passed" in msg
  assert "within min_error 1.0e-02" in msg
  nan = lambda a: jnp.full((2, 7, 7, 1, 4), jnp.nan)  # noqa: E731
  with pytest.raises(AssertionError, match="gave NaN"):
    testing.assert_not_equivariant(nan, _X)


def test_shifts_fail_with_zero_padding_and_pass_when_circular():
  conv = jax.jit(lambda a: gconv.lifting_conv(a, _W, padding="CIRCULAR"))
  errors = testing.assert_equivariant(conv, _X, shifts=[(2, 3), (-1, 5)])
  assert len(errors) == 3 + 2 + 2 * 3
  with pytest.raises(AssertionError, match=r"'(rot \d+ then )?shift \("):
    testing.assert_equivariant(_LIFT, _X, elements=(), shifts=[(2, 3)])
  # Bitwise: circular shifts of a circular conv move nothing else.
  testing.assert_equivariant(conv, _X, elements=(), shifts=[(2, 3)], rtol=0)


def test_nan_and_zero_outputs_fail():
  nan = lambda a: a.at[:, 0, 0].set(jnp.nan)  # noqa: E731
  with pytest.raises(AssertionError, match="relative error nan"):
    testing.assert_equivariant(nan, jnp.asarray(_X), output="image")
  zero = lambda a: jnp.zeros((2, 3))  # noqa: E731
  with pytest.raises(AssertionError, match="zero everywhere"):
    testing.assert_invariant(zero, _X)


# --------------------------------------------------------------------------
# Tolerances follow the dtype.


def _noisy(scale):
  """Equivariant up to a fixed perturbation of relative size `scale`."""

  def fn(a):
    noise = jnp.asarray(_normal(9, a.shape), a.dtype)
    return a + scale * noise * jnp.max(jnp.abs(a))

  return fn


def test_default_tolerance_is_tight_in_float64_and_loose_in_float32():
  assert testing.default_rtol(np.float64) == 1e-10
  assert testing.default_rtol(np.float32, np.float64) == 1e-4
  assert testing.default_rtol(jnp.bfloat16) == 5e-2
  assert testing.default_rtol(np.int32) == 0.0
  fn = _noisy(1e-6)
  testing.assert_equivariant(fn, _X, output="image")  # float32: passes
  with jax.enable_x64(True):
    x64 = jnp.asarray(_X, jnp.float64)
    with pytest.raises(AssertionError, match=r"rtol 1\.0e-10 \(default for"):
      testing.assert_equivariant(fn, x64, output="image")
    testing.assert_equivariant(fn, x64, output="image", rtol=1e-5)  # given
  with pytest.raises(AssertionError, match=r"> rtol 1\.0e-08 \(given\)"):
    testing.assert_equivariant(fn, _X, output="image", rtol=1e-8)


def test_bfloat16_default_tolerance():
  x = jnp.asarray(_X, jnp.bfloat16)
  conv = jax.jit(lambda a: gconv.lifting_conv(a, _W.astype(jnp.bfloat16)))
  testing.assert_equivariant(conv, x)
  with pytest.raises(AssertionError, match=r"rtol 5\.0e-02 \(default for"):
    testing.assert_equivariant(_noisy(0.2), x, output="image")


# --------------------------------------------------------------------------
# Bad arguments: a clear error naming what was expected and what came.


@pytest.mark.parametrize(
  "kwargs, x, match",
  [
    ({"group": "p6"}, _X, r"group must be one of \('p4', 'p4m'\), got 'p6'"),
    ({"input": "invariant"}, _X, r"input must be one of .* got 'invariant'"),
    ({"output": "vector"}, _X, r"output must be one of .* got 'vector'"),
    ({}, _X[:, :, :5], r"x must be square .* \(2, 7, 5, 3\)"),
    ({}, _X[0], r"x must be \[N, H, W, C\] .* got shape \(7, 7, 3\)"),
    ({"input": "p4"}, _X, r"\[N, H, W, C, 4\] .* got shape \(2, 7, 7, 3\)"),
    (
      {"input": "p4m"},
      np.zeros((1, 5, 5, 2, 4)),
      r"group axis \(last\) of size 8 .* \(1, 5, 5, 2, 4\)",
    ),
    (
      {"group": "p4m", "output": "p4"},
      _X,
      r"output='p4' maps .* cannot be mirrored.*'mirror'",
    ),
    ({"elements": ["rot 45"]}, _X, r"unknown element name 'rot 45' for p4"),
    ({"elements": [groups.Element(1, 1)]}, _X, r"mirrors, so it is not in p4"),
    ({"elements": [9]}, _X, r"index must be in 0..3 for p4, got 9"),
    ({"elements": (), "shifts": ()}, _X, r"nothing to check"),
    ({"shifts": [(1, 2, 3)]}, _X, r"shifts\[0\] must be a pair"),
  ],
)
def test_error_bad_arguments(kwargs, x, match):
  with pytest.raises(ValueError, match=match):
    testing.equivariance_error(_LIFT, x, **kwargs)


def test_error_wrong_kinds():
  with pytest.raises(TypeError, match="fn must be callable, got 3"):
    testing.equivariance_error(3, _X)
  with pytest.raises(TypeError, match="fn must return one array, got tuple"):
    testing.equivariance_error(lambda a: (a, a), _X)
  with pytest.raises(TypeError, match=r"shifts\[0\]\[1\] must be an int"):
    testing.equivariance_error(_LIFT, _X, shifts=[(1, 0.5)])
  with pytest.raises(TypeError, match="elements must be a sequence"):
    testing.equivariance_error(_LIFT, _X, elements=groups.Element(1))
  with pytest.raises(ValueError, match=r"fn\(x\) \(the output\) must be"):
    testing.equivariance_error(lambda a: a[..., 0], _X)  # rank 3, not p4
  with pytest.raises(ValueError, match="rtol must be a finite number >= 0"):
    testing.assert_equivariant(_LIFT, _X, rtol=-1.0)
  with pytest.raises(ValueError, match="assert_invariant checks output="):
    testing.assert_invariant(_LIFT, _X, output="p4")


# --------------------------------------------------------------------------
# Flax modules: at initialisation and after training, train and eval mode.


class _Block(nn.Module):
  """A p4 block; `bad_norm` puts flax's BatchNorm on the group axis."""

  bad_norm: bool = False
  scale_free: bool = False

  @nn.compact
  def __call__(self, f, train: bool = False):
    h = layers.GroupConv(2)(f)
    if self.bad_norm:  # one scale, shift and statistic per orientation
      norm = nn.BatchNorm(
        use_running_average=not train,
        use_scale=not self.scale_free,
        use_bias=not self.scale_free,
      )
    else:
      norm = layers.GroupBatchNorm(use_running_average=not train)
    return nn.relu(norm(h))


_F = _normal(3, (2, 5, 5, 2, 4))


def test_module_check_passes_in_every_stage_and_mode():
  errors = testing.assert_module_equivariant(
    _Block(), _F, input="p4", output="p4", steps=2
  )
  assert list(errors) == [
    "init, train mode",
    "init, eval mode",
    "after 2 steps, train mode",
    "after 2 steps, eval mode",
  ]
  for per_element in errors.values():
    assert list(per_element) == ["rot 90", "rot 180", "rot 270"]
    assert max(per_element.values()) < 1e-5


def test_module_check_catches_what_only_training_breaks():
  # Per-orientation scales start at one: equivariant at init, not after.
  # Stages and modes are checked in order, so a failure "after 3 steps"
  # means both init checks passed.
  with pytest.raises(AssertionError) as info:
    testing.assert_module_equivariant(
      _Block(bad_norm=True), _F, input="p4", output="p4"
    )
  assert str(info.value).startswith(
    "_Block (after 3 steps, train mode) is not p4-equivariant"
  )


def test_module_check_updates_batch_statistics_in_train_mode():
  # No per-orientation parameters, only per-orientation running averages:
  # train mode (batch statistics) stays equivariant; eval mode breaks only
  # once the training steps have moved the running averages.
  measured = testing.module_equivariance_errors(
    _Block(bad_norm=True, scale_free=True), _F, input="p4", output="p4"
  )
  for key in ("init, train mode", "init, eval mode", "after 3 steps, train"):
    key = key if key.endswith("mode") else key + " mode"
    assert max(measured[key].errors.values()) < 1e-5, key
  assert max(measured["after 3 steps, eval mode"].errors.values()) > 1e-3


def test_module_check_with_one_mode_and_a_custom_optimizer():
  conv = layers.LiftingConv(3, group="p4m")  # no `train` argument
  errors = testing.assert_module_equivariant(
    conv,
    _X,
    group="p4m",
    output="p4m",
    optimizer=optax.sgd(0.1),
    loss_fn=lambda y: jnp.sum(y[..., 0] ** 3),
  )
  assert list(errors) == ["init, apply mode", "after 3 steps, apply mode"]


def test_module_check_errors():
  with pytest.raises(TypeError, match="flax.linen Module, got function"):
    testing.assert_module_equivariant(lambda a: a, _X)
  with pytest.raises(ValueError, match="steps must be an int >= 1, got 0"):
    testing.assert_module_equivariant(_Block(), _F, input="p4", steps=0)
  with pytest.raises(ValueError, match=r"modes\[0\] must be one of"):
    testing.assert_module_equivariant(_Block(), _F, input="p4", modes=["x"])
  with pytest.raises(ValueError, match=r"\[N, H, W, C, 4\]"):
    testing.assert_module_equivariant(_Block(), _X, input="p4")
  with pytest.raises(AssertionError, match="left every parameter unchanged"):
    testing.assert_module_equivariant(
      _Block(), _F, input="p4", loss_fn=lambda y: 0.0 * jnp.sum(y)
    )


def test_options_that_do_not_apply_are_refused():
  conv = layers.LiftingConv(3)  # no `train` argument, so one mode
  with pytest.raises(ValueError, match="takes no 'train' argument"):
    testing.module_equivariance_errors(conv, _X, modes=("eval",))

  class NoParams(nn.Module):
    @nn.compact
    def __call__(self, x):
      return gconv.group_pool(x, "max")

  with pytest.raises(ValueError, match="no parameters, so there is no"):
    testing.module_equivariance_errors(
      NoParams(), _F, input="p4", output="image", optimizer=optax.sgd(0.1)
    )
  with pytest.raises(ValueError, match=r"shifts\[1\] is \(0, 0\)"):
    testing.equivariance_error(_LIFT, _X, shifts=[(1, 0), (0, 0)])


# --------------------------------------------------------------------------
# Strategies.


@hypothesis.settings(max_examples=20)
@hypothesis.given(
  strategies.conv_shapes(exact=True), strategies.conv_shapes(exact=False)
)
def test_conv_shapes_are_exact_or_not_as_asked(good, bad):
  assert gconv.is_exactly_equivariant(*good)
  assert not gconv.is_exactly_equivariant(*bad)
  for shape in (good, bad):
    (lo, hi), _ = gconv.padding_amounts(*shape)
    assert shape.size + lo + hi >= gconv.effective_kernel(
      shape.kernel, shape.dilation
    )


@hypothesis.settings(max_examples=20)
@hypothesis.given(
  strategies.group_elements("p4m", identity=False, max_shift=2),
  strategies.group_elements("p4"),
  strategies.images(size=(2, 5), dtype=np.float64),
  strategies.group_maps("p4m", batch=1, channels=st.just(2)),
)
def test_elements_images_and_maps(g, h, x, f):
  assert g != groups.identity() and max(map(abs, g.translation)) <= 2
  assert h.mirror == 0 and h.translation == (0, 0)
  assert x.dtype == np.float64 and x.shape[1] == x.shape[2]
  assert 1 <= x.shape[0] <= 2 and 2 <= x.shape[1] <= 5
  assert f.shape[0] == 1 and f.shape[3:] == (2, 8) and f.dtype == np.float32


def test_strategy_argument_errors():
  with pytest.raises(TypeError, match="size must be an int, an inclusive"):
    strategies.images(size="big")
  with pytest.raises(ValueError, match=r"group must be one of"):
    strategies.group_elements("p6")


def test_import_works_without_hypothesis():
  code = (
    "import sys; sys.modules['hypothesis'] = None\n"
    "import equivlab.testing as t\n"
    "assert callable(t.assert_equivariant)\n"
    "try:\n"
    "  t.strategies\n"
    "except ImportError as e:\n"
    "  print('ImportError:', e)\n"
  )
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    env=env,
    cwd=_README.parent,
  )
  assert (
    "ImportError: equivlab.testing.strategies needs hypothesis: pip "
    'install "equivlab[test]"' in out.stdout
  )


# --------------------------------------------------------------------------
# The README section runs, and its failure message is the real one.


def _readme_blocks():
  text = _README.read_text(encoding="utf-8")
  section = text.split(_HEADING, 1)[1].split("\n## ", 1)[0]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  shown = re.search(r"```text\n(.*?)```", section, re.S).group(1).strip()
  return code, shown


def test_readme_snippet_runs():
  code, _ = _readme_blocks()
  # About ten lines of code; ruff's blank lines around the class not counted.
  assert sum(1 for line in code.splitlines() if line.strip()) <= 12
  exec(compile(code, "README.md", "exec"), {})  # raises if the check fails


def test_readme_failure_message_is_what_the_broken_block_gives():
  code, shown = _readme_blocks()
  broken = code.replace("layers.GroupBatchNorm(", "nn.BatchNorm(")
  assert broken != code
  with pytest.raises(AssertionError) as info:
    exec(compile(broken, "README.md", "exec"), {})
  got = f"AssertionError: {info.value}"

  def mask(s):  # the last digits and the ranking may move across machines
    return re.sub(r"rot \d+", "rot k", re.sub(r"\d\.\d+e[-+]\d+", "<e>", s))

  assert mask(got) == mask(shown)
  assert got.startswith("AssertionError: P4ResBlock (after 3 steps, train")
