"""Per-compilation XLA options for the CPU, and the `jit` that applies them.

jaxlib's XLA:CPU hands large convolutions to YNNPACK by default (fusions
named `__ynn_fusion` in the compiled HLO). For the convolutions of this
project that path is the slow one: XLA's own (Eigen) convolution runs a
layer's forward and backward pass faster, above all its filter gradient
(`benchmarks/gconv_peers.py` and `benchmarks/train_step.py` measure it;
figures in docs/results). `CPU_COMPILER_OPTIONS` keeps YNNPACK for matrix
products and reductions and turns it off for convolutions. A forward-only
program gets `CPU_INFERENCE_OPTIONS`, YNNPACK for matrix products only:
there a reduction fusion can take in a whole network, convolutions
included, and run it on one thread, while in a training step the same
fusions make a global-pooling CNN's step faster.

The options are compiler options of one `jax.jit`, not process flags:
nothing global changes, and a GPU compilation gets none. `jit` is
`jax.jit` with them, and it also traces its function with the
convolutions' "auto" implementation resolved to one XLA convolution per
call (`convolution.auto_impl("xla")`), which is the fastest choice once
YNNPACK's convolutions are off. The training engine's steps, evaluation in
batches, the adversarial attacks and the probes compile through it. Code
that calls `jax.jit` itself keeps jaxlib's defaults, and with them the
convolutions' CPU path. To get the faster setting there, pass the options:

  step = jax.jit(step_fn, compiler_options=xla_options.compiler_options())

or use `xla_options.jit(step_fn)`.
"""

import functools
from collections.abc import Callable
from typing import Any

import jax

from equivlab.ops import convolution

YNN_FUSION_OPTION = "xla_cpu_experimental_ynn_fusion_type"
# What jaxlib offloads to YNNPACK by default, and this project's
# choice: the same without convolutions.
JAXLIB_DEFAULT_YNN_FUSIONS = (
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,"
  "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,"
  "LIBRARY_FUSION_TYPE_REDUCE"
)
CPU_COMPILER_OPTIONS = {
  YNN_FUSION_OPTION: (
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
  ),
}
CPU_INFERENCE_OPTIONS = {
  YNN_FUSION_OPTION: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
}


def compiler_options(
  backend: str | None = None, *, inference: bool = False
) -> dict[str, str]:
  """The compiler options equivlab compiles with on `backend`.

  Args:
    backend: "cpu", "gpu", "tpu", ...; None for `jax.default_backend()`.
    inference: for a forward-only program (no gradients).

  Returns:
    A new dict: on the CPU `CPU_INFERENCE_OPTIONS` if `inference` else
    `CPU_COMPILER_OPTIONS`; empty elsewhere.
  """
  backend = jax.default_backend() if backend is None else backend
  if backend != "cpu":
    return {}
  return dict(CPU_INFERENCE_OPTIONS if inference else CPU_COMPILER_OPTIONS)


def jit(fun: Callable, *, inference: bool = False, **jit_kwargs: Any):
  """`jax.jit(fun, **jit_kwargs)` with `compiler_options()` merged in.

  `inference=True` for a forward-only `fun` (see `compiler_options`).

  Options given in `jit_kwargs["compiler_options"]` win over equivlab's.
  While `fun` is traced, `convolution.conv2d(impl="auto")` runs one XLA
  convolution per call (an `EQUIVLAB_CONV_IMPL` set in the environment
  still decides first). The backend is read when `jit` is called (from
  `jit_kwargs["backend"]` if given).

  Returns:
    The jitted function; `.lower(...)` and the rest of `jax.jit`'s API work
    as usual.
  """
  options = {
    **compiler_options(jit_kwargs.get("backend"), inference=inference),
    **(jit_kwargs.pop("compiler_options", None) or {}),
  }

  @functools.wraps(fun)
  def traced(*args, **kwargs):
    with convolution.auto_impl("xla"):
      return fun(*args, **kwargs)

  return jax.jit(traced, compiler_options=options or None, **jit_kwargs)
