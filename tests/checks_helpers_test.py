"""Tests of the argument-check helpers `float_dtype`, `concrete_int` and
`check_index` of equivlab.checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import checks


@pytest.mark.parametrize(
  ("given", "expected"),
  [
    ("float32", "float32"),
    ("f32", "float32"),
    ("fp32", "float32"),
    ("single", "float32"),
    ("bfloat16", "bfloat16"),
    ("bf16", "bfloat16"),
    (" BF16 ", "bfloat16"),
    ("float16", "float16"),
    ("fp16", "float16"),
    ("half", "float16"),
    ("float64", "float64"),
    ("double", "float64"),
    (jnp.float32, "float32"),
    (jnp.bfloat16, "bfloat16"),
    (np.float16, "float16"),
    (np.dtype("float64"), "float64"),
  ],
)
def test_float_dtype_accepts_names_aliases_and_types(given, expected):
  assert checks.float_dtype("dtype", given) == jnp.dtype(expected)


@pytest.mark.parametrize(
  ("given", "shown"),
  [
    ("int32", "the int32 dtype"),
    (jnp.uint8, "the uint8 dtype"),
    ("bool", "the bool dtype"),
    ("complex64", "the complex64 dtype"),
    ("float33", "'float33'"),
    (3, "3"),
    (None, "None"),
    ([jnp.float32], r"\[<class"),
  ],
)
def test_float_dtype_refuses_everything_else_naming_it(given, shown):
  with pytest.raises(
    TypeError, match=rf"param_dtype must be a float .*{shown}"
  ):
    checks.float_dtype("param_dtype", given)


def test_float_dtype_may_allow_none():
  assert checks.float_dtype("dtype", None, allow_none=True) is None


def test_concrete_int_takes_ints_and_0d_int_arrays_and_passes_tracers():
  assert checks.concrete_int("i", 3) == 3
  assert checks.concrete_int("i", np.int64(-2)) == -2
  assert checks.concrete_int("i", jnp.array(5)) == 5
  assert checks.concrete_int("i", np.array(1, np.uint8)) == 1
  seen = []
  jax.jit(lambda i: seen.append(checks.concrete_int("i", i)) or i)(1)
  assert seen == [None]
  for bad in (1.0, True, jnp.array([1]), jnp.array(1.0), "1", None):
    with pytest.raises(TypeError, match="i must be an integer scalar"):
      checks.concrete_int("i", bad)


def test_check_index_bounds_and_message():
  checks.check_index("target", 0, 3)
  checks.check_index("target", jnp.int32(2), 3)
  with pytest.raises(ValueError, match=r"target must be in \[0, 2\] \(3 cl"):
    checks.check_index("target", 3, 3, "classes")
  with pytest.raises(ValueError, match=r"row must be in \[0, 4\], got -1"):
    checks.check_index("row", -1, 5)
  jax.jit(lambda i: checks.check_index("i", i, 2) or i)(7)  # Traced: passes.
