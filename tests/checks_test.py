"""Tests of the shared argument checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import checks


def test_is_int_rejects_bools_and_floats():
  assert checks.is_int(3) and checks.is_int(np.int64(3))
  assert not checks.is_int(True) and not checks.is_int(3.0)


@pytest.mark.parametrize(
  "value, error, fragment",
  [
    (0, ValueError, "an int >= 1, got 0"),
    (2.5, TypeError, "got 2.5"),
    (True, TypeError, "got True"),
    ("3", TypeError, "got '3'"),
  ],
)
def test_check_int_names_argument_expectation_and_value(value, error, fragment):
  with pytest.raises(error, match="num_epochs must be") as info:
    checks.check_int("num_epochs", value, minimum=1)
  assert fragment in str(info.value)


def test_check_int_range_and_none():
  checks.check_int("k", None, minimum=0, allow_none=True)
  checks.check_int("k", 3, minimum=0, maximum=3)
  with pytest.raises(ValueError, match=r"in \[0, 3\]"):
    checks.check_int("k", 4, minimum=0, maximum=3)


def test_check_ints():
  checks.check_ints("depths", (1, 2))
  with pytest.raises(ValueError, match="at least one"):
    checks.check_ints("depths", ())
  with pytest.raises(ValueError, match=r"depths\[1\] must be an int >= 1"):
    checks.check_ints("depths", (1, 0), minimum=1)
  with pytest.raises(TypeError, match="sequence of ints"):
    checks.check_ints("depths", "12")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 0.0, -1.0])
def test_check_number_rejects_nonfinite_and_out_of_range(value):
  with pytest.raises(ValueError, match="learning_rate must be a finite number"):
    checks.check_number("learning_rate", value, minimum=0, strict_minimum=True)


def test_check_number_bounds_and_types():
  checks.check_number(
    "momentum", 0.0, minimum=0, maximum=1, strict_maximum=True
  )
  with pytest.raises(ValueError, match=r">= 0 and < 1, got 1.0"):
    checks.check_number(
      "momentum", 1.0, minimum=0, maximum=1, strict_maximum=True
    )
  with pytest.raises(TypeError, match="got 'x'"):
    checks.check_number("momentum", "x")


def test_check_choice():
  checks.check_choice("norm", None, (None, "batch"))
  with pytest.raises(
    ValueError, match=r"norm must be one of \(None, 'batch'\)"
  ):
    checks.check_choice("norm", "bach", (None, "batch"))
  with pytest.raises(ValueError, match="got \\[1\\]"):
    checks.check_choice("norm", [1], {"a": 1})


def test_check_rank():
  checks.check_rank("x", np.zeros((2, 3)), (2, 4), "[N, D]")
  with pytest.raises(ValueError, match=r"x must be \[N, H, W, C\], got shape"):
    checks.check_rank("x", np.zeros((2, 3)), 4, "[N, H, W, C]")


def test_check_labels_names_first_bad_label():
  checks.check_labels("ys", np.array([0, 2]), 3)
  with pytest.raises(ValueError, match=r"got -1 at index 2 \(1 of 3"):
    checks.check_labels("ys", np.array([0, 2, -1]), 3)
  with pytest.raises(ValueError, match=r"at index \(1, 0\)"):
    checks.check_labels("ys", np.array([[0, 1], [3, 0]]), 3)
  with pytest.raises(TypeError, match="integer class labels"):
    checks.check_labels("ys", np.array([0.0]), 3)


def test_check_labels_skips_tracers():
  jax.jit(lambda y: checks.check_labels("ys", y, 3) or y)(jnp.array([7]))


def test_check_floating():
  checks.check_floating("x", jnp.zeros(2, jnp.bfloat16))
  with pytest.raises(TypeError, match="floating-point dtype.*int32"):
    checks.check_floating("x", jnp.zeros(2, jnp.int32))
