"""Equivariance of a flax module at initialisation and after training.

Weight sharing makes a G-CNN equivariant for EVERY value of its parameters,
so equivariance must survive training; a module that is equivariant only
at its initial values (a per-orientation scale initialised to ones, a
bias initialised to zeros) is a bug that an init-time check cannot see.
`assert_module_equivariant` checks a module at initialisation and after a
few optimiser steps (optax, on a random regression target), in train mode
(batch statistics from the batch, and updated by every step) and in eval
mode (the running averages).
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from equivlab import checks
from equivlab.testing import equivariance

_MODES = ("train", "eval")


def _has_kwarg(module: nn.Module, name: str | None) -> bool:
  if name is None:
    return False
  params = inspect.signature(type(module).__call__).parameters
  return name in params


def _make_apply(module, mode, mutable, train_kwarg):
  kwargs = {} if mode == "apply" else {train_kwarg: mode == "train"}

  def apply(variables, x):
    if mutable:  # train-mode updates are computed and dropped here
      return module.apply(variables, x, mutable=mutable, **kwargs)[0]
    return module.apply(variables, x, **kwargs)

  jitted = jax.jit(apply)
  jitted.mode_kwargs = kwargs
  return jitted


def _train(module, variables, x, *, steps, optimizer, loss_fn, apply, seed):
  """`steps` optimiser steps on `x`; returns the new variables.

  `apply(variables, x)` is the jitted train-mode forward pass.
  """
  params = variables["params"]
  state = {k: v for k, v in variables.items() if k != "params"}
  kwargs = apply.mode_kwargs
  y0 = apply(variables, x)
  # A random target near the initial output: gradients in no symmetric
  # direction, and outputs that stay alive (a far target can push every
  # ReLU of the last layer to zero, and a zero output proves nothing).
  noise = np.random.default_rng(seed).standard_normal(y0.shape)
  target = y0 + jnp.std(y0) * jnp.asarray(noise, y0.dtype)

  def loss(p, s):
    v = {"params": p, **s}
    if s:
      y, new_s = module.apply(v, x, mutable=list(s), **kwargs)
    else:
      y, new_s = module.apply(v, x, **kwargs), s
    value = loss_fn(y) if loss_fn else jnp.mean(jnp.square(y - target))
    return value, new_s

  @jax.jit
  def step(p, s, opt_state):
    (_, new_s), grads = jax.value_and_grad(loss, has_aux=True)(p, s)
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return optax.apply_updates(p, updates), dict(new_s), opt_state

  opt_state = optimizer.init(params)
  new_params = params
  for _ in range(steps):
    new_params, state, opt_state = step(new_params, state, opt_state)
  before = ravel_pytree(params)[0]
  after = ravel_pytree(new_params)[0]
  if before.size and bool(jnp.all(before == after)):
    raise AssertionError(
      f"{steps} optimiser steps left every parameter unchanged, so the "
      f"check after training would prove nothing: pass a loss_fn whose "
      f"gradient is not zero."
    )
  return {"params": new_params, **state}


def _check_module_args(module, steps, seed, modes, train_kwarg):
  """Validates the module check's own arguments; returns the modes to run."""
  if not isinstance(module, nn.Module):
    raise TypeError(
      f"module must be a flax.linen Module, got {type(module).__name__}."
    )
  checks.check_int("steps", steps, minimum=1)
  checks.check_int("seed", seed, minimum=0)
  given = modes is not None
  modes = _MODES if modes is None else modes
  if isinstance(modes, str) or not modes or not isinstance(modes, Sequence):
    raise ValueError(
      f"modes must be a non-empty subset of {_MODES}, got {modes!r}."
    )
  for i, mode in enumerate(modes):
    checks.check_choice(f"modes[{i}]", mode, _MODES)
  if _has_kwarg(module, train_kwarg):
    return tuple(modes)
  if given:
    raise ValueError(
      f"modes={tuple(modes)!r} picks train or eval mode, but "
      f"{type(module).__name__}.__call__ takes no {train_kwarg!r} argument, "
      f"so it has one mode: leave modes=None."
    )
  return ("apply",)


def module_equivariance_errors(
  module: nn.Module,
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "p4",
  elements: Sequence[Any] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
  steps: int = 3,
  optimizer: optax.GradientTransformation | None = None,
  loss_fn: Callable[[jax.Array], jax.Array] | None = None,
  modes: Sequence[str] | None = None,
  train_kwarg: str | None = "train",
  seed: int = 0,
) -> dict[str, equivariance.Measurement]:
  """Equivariance measurements of `module` at init and after training.

  Args:
    module: a flax linen module mapping `x` to one array.
    x: the input batch, as for `equivariance_error` (also the training
      batch).
    group, input, output, elements, shifts: as `equivariance_error`.
    steps: optimiser steps between the two checks (>= 1).
    optimizer: an optax transformation; None: `optax.adam(5e-2)` (large
      steps: after three of them no parameter is near its initial value).
    loss_fn: `loss_fn(output) -> scalar` to train on; None: the mean
      squared distance to a fixed random target near the initial output
      (the initial output plus its standard deviation times N(0, 1)).
    modes: "train" (batch statistics) and/or "eval" (running averages),
      passed as `train_kwarg=True/False` to the module; None: both (or
      the one mode of a module without `train_kwarg`).
    train_kwarg: the name of the module's mode argument; if the module's
      `__call__` has no such argument (or it is None) the module is
      checked in its one mode, named "apply". Training updates every
      mutable collection (batch statistics) in the train mode.
    seed: seeds the initialisation and the random target.

  Returns:
    A dict from "<stage>, <mode> mode" ("init, train mode", "after 3
    steps, eval mode") to `equivariance.Measurement`.

  Raises:
    TypeError / ValueError: for bad arguments (see `equivariance_error`).
  """
  modes = _check_module_args(module, steps, seed, modes, train_kwarg)
  # Validate everything before compiling anything.
  elems = equivariance.resolve_elements(group, elements, shifts)
  equivariance.check_actions(group, input, output, elems)
  equivariance.check_array(x, input, "x")
  xj = jnp.asarray(x)
  init_kwargs = {} if modes == ("apply",) else {train_kwarg: False}
  # XLA's RngBitGenerator: its inits compile faster than threefry's.
  key = jax.random.key(seed, impl="rbg")
  variables = jax.jit(lambda k: module.init(k, xj, **init_kwargs))(key)
  mutable = [c for c in variables if c != "params"]
  applies = {m: _make_apply(module, m, mutable, train_kwarg) for m in modes}
  stages = [("init", variables)]
  if not variables.get("params") and (optimizer or loss_fn):
    raise ValueError(
      f"{type(module).__name__} has no parameters, so there is no training "
      f"stage and optimizer / loss_fn would be ignored: leave them None."
    )
  if variables.get("params"):
    train_mode = "apply" if modes == ("apply",) else "train"
    trained = _train(
      module,
      variables,
      xj,
      steps=steps,
      optimizer=optimizer or optax.adam(5e-2),
      loss_fn=loss_fn,
      apply=applies.get(train_mode)
      or _make_apply(module, train_mode, mutable, train_kwarg),
      seed=seed,
    )
    stages.append((f"after {steps} steps", trained))
  actions = {"group": group, "input": input, "output": output}
  return _measure_stages(stages, applies, np.asarray(x), elems, actions)


def _measure_stages(stages, applies, x, elements, actions):
  """One measurement per (stage, mode): "<stage>, <mode> mode"."""
  results = {}
  for stage, v in stages:
    for mode, apply in applies.items():
      results[f"{stage}, {mode} mode"] = equivariance.measure(
        lambda a, v=v, apply=apply: apply(v, a),
        x,
        elements=elements,
        **actions,
      )
  return results


def assert_module_equivariant(
  module: nn.Module,
  x: Any,
  *,
  group: str = "p4",
  input: str = "image",  # noqa: A002 (the pinned keyword)
  output: str = "p4",
  elements: Sequence[Any] | None = None,
  shifts: Sequence[Sequence[int]] | None = None,
  rtol: float | None = None,
  steps: int = 3,
  optimizer: optax.GradientTransformation | None = None,
  loss_fn: Callable[[jax.Array], jax.Array] | None = None,
  modes: Sequence[str] | None = None,
  train_kwarg: str | None = "train",
  seed: int = 0,
) -> dict[str, dict[str, float]]:
  """Asserts that `module` is equivariant at init and after training.

  A pytest test body in one line::

    testing.assert_module_equivariant(MyBlock(8), f, input="p4",
                                      output="p4")

  The arguments `module`, `x`, `group`, `input`, `output`, `elements`,
  `shifts`, `steps`, `optimizer`, `loss_fn`, `modes`, `train_kwarg` and
  `seed` are as in `module_equivariance_errors`.

  Args:
    rtol: as `assert_equivariant` (None: from the dtypes).

  Returns:
    A dict from "<stage>, <mode> mode" to the per-element errors.

  Raises:
    AssertionError: naming the stage and mode, the worst element, its
      error and the tolerance, for the first stage and mode that fails.
    TypeError / ValueError: for bad arguments.
  """
  results = module_equivariance_errors(
    module,
    x,
    group=group,
    input=input,
    output=output,
    elements=elements,
    shifts=shifts,
    steps=steps,
    optimizer=optimizer,
    loss_fn=loss_fn,
    modes=modes,
    train_kwarg=train_kwarg,
    seed=seed,
  )
  what = equivariance.describe(group, input, output)
  name = type(module).__name__
  for key, m in results.items():
    equivariance.check_measurement(m, rtol, what, subject=f"{name} ({key})")
  return {key: m.errors for key, m in results.items()}
