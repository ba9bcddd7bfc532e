"""equivlab.ops.xla_options: per-jit CPU compiler options, and "auto" under
them."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import gconv, train
from equivlab.ops import convolution, xla_options

# Big enough that jaxlib hands the convolution to YNNPACK by default.
_X = np.random.default_rng(0).standard_normal((4, 12, 12, 8, 4), np.float32)
_W = np.random.default_rng(1).standard_normal((3, 3, 8, 4, 8), np.float32)


def _loss(x, w):
  return jnp.mean(jnp.square(gconv.group_conv(x, w)))


_GRAD = jax.value_and_grad(_loss, argnums=(0, 1))


def _ynn_convolutions(hlo: str) -> int:
  """How many YNNPACK fusions of the compiled HLO hold a convolution."""
  blocks = re.split(r"\n\s*\n", hlo)
  with_conv = {
    m.group(1)
    for block in blocks
    if " convolution(" in block
    and (m := re.match(r"\s*%?([\w.\-]+)", block)) is not None
  }
  return sum(
    1
    for line in hlo.splitlines()
    if "__ynn_fusion" in line
    and any(f"calls=%{name}," in line for name in with_conv)
  )


def test_options_are_for_the_cpu_only_and_fresh_each_call():
  got = xla_options.compiler_options("cpu")
  assert got == xla_options.CPU_COMPILER_OPTIONS
  got[xla_options.YNN_FUSION_OPTION] = "changed"
  assert xla_options.compiler_options("cpu") == (
    xla_options.CPU_COMPILER_OPTIONS
  )
  assert xla_options.compiler_options("gpu") == {}
  assert xla_options.compiler_options("cpu", inference=True) == (
    xla_options.CPU_INFERENCE_OPTIONS
  )
  assert xla_options.compiler_options("gpu", inference=True) == {}
  assert xla_options.compiler_options() == xla_options.compiler_options(
    jax.default_backend()
  )


def test_jit_turns_ynnpack_convolutions_off_and_plain_jit_does_not():
  ours = xla_options.jit(_GRAD).lower(_X, _W).compile().as_text()
  plain = jax.jit(_GRAD).lower(_X, _W).compile().as_text()
  assert _ynn_convolutions(ours) == 0
  assert _ynn_convolutions(plain) > 0  # the option is what makes the change
  # Options passed by the caller win over equivlab's.
  theirs = xla_options.jit(
    _GRAD,
    compiler_options={
      xla_options.YNN_FUSION_OPTION: xla_options.JAXLIB_DEFAULT_YNN_FUSIONS
    },
  )
  assert _ynn_convolutions(theirs.lower(_X, _W).compile().as_text()) > 0


def test_jit_gives_what_jax_jit_gives():
  (value, grads), (want, want_grads) = (
    xla_options.jit(_GRAD)(_X, _W),
    jax.jit(_GRAD)(_X, _W),
  )
  np.testing.assert_allclose(value, want, rtol=1e-5)
  for got, ref in zip(grads, want_grads, strict=True):
    np.testing.assert_allclose(got, ref, rtol=2e-4, atol=1e-5)


def test_jit_traces_auto_as_one_xla_convolution(monkeypatch):
  monkeypatch.delenv(convolution.ENV_VAR, raising=False)
  seen = []

  def record(x):
    seen.append(convolution.resolve_impl("auto", x.dtype))
    return x

  xla_options.jit(record)(jnp.ones(2))
  jax.jit(record)(jnp.ones(2))
  assert seen == ["xla", "cpu"]  # and nothing leaks out of the trace
  assert convolution.resolve_impl("auto") == "cpu"
  monkeypatch.setenv(convolution.ENV_VAR, "cpu")  # the environment wins
  xla_options.jit(record)(jnp.ones(3))
  assert seen[-1] == "cpu"


def test_auto_impl_scopes_nest_and_reject_unknown_names(monkeypatch):
  monkeypatch.delenv(convolution.ENV_VAR, raising=False)
  with convolution.auto_impl("xla"):
    assert convolution.resolve_impl("auto") == "xla"
    with convolution.auto_impl("cpu"):
      assert convolution.resolve_impl("auto") == "cpu"
      # The CPU path takes float32/float64 only, wherever it is asked for.
      assert convolution.resolve_impl("auto", jnp.bfloat16) == "xla"
    assert convolution.resolve_impl("auto") == "xla"
    assert convolution.resolve_impl("cpu") == "cpu"  # explicit beats scope
  with pytest.raises(ValueError, match="'xla' or 'cpu'"):
    with convolution.auto_impl("auto"):
      pass


def _engine_step(model: str, step: str):
  """The engine's `step` ("train_step"/"eval_step") for `model`, lowered."""
  config = train.TrainConfig(model=model, batch_size=8, progress=False)
  images = np.random.default_rng(2).random((8, 28, 28, 1), np.float32)
  batch = {"image": images, "label": np.zeros(8, np.int32)}
  state, steps = train.prepare(config, images)
  return getattr(steps, step).lower(state, batch)


def test_the_engines_train_step_compiles_without_ynnpack_convolutions():
  lowered = _engine_step("z2cnn", "train_step")
  assert _ynn_convolutions(lowered.compile().as_text()) == 0
  jaxlib_default = {
    xla_options.YNN_FUSION_OPTION: xla_options.JAXLIB_DEFAULT_YNN_FUSIONS
  }
  assert _ynn_convolutions(lowered.compile(jaxlib_default).as_text()) > 0


def test_the_eval_step_compiles_with_the_inference_options():
  # With YNNPACK's reductions on, a forward-only P4CNN is one YNNPACK fusion
  # that holds its convolutions and runs on one thread; the eval step
  # compiles without them.
  lowered = _engine_step("p4cnn", "eval_step")
  assert _ynn_convolutions(lowered.compile().as_text()) == 0
  training_options = xla_options.compiler_options("cpu")
  assert _ynn_convolutions(lowered.compile(training_options).as_text()) > 0
