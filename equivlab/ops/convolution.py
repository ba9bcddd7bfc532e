"""2-D convolution with a CPU fast path; one XLA convolution elsewhere.

Every convolution of equivlab (the lifting and group convolutions of
`equivlab.gconv`, the flax `nn.Conv` layers of `equivlab.nn.models`) goes
through `conv2d` (NHWC inputs, HWIO kernels). Two implementations:

"xla"
  one `lax.conv_general_dilated`, forward and backward as XLA
  differentiates it. What accelerators get: a single cuDNN-style
  convolution per call.

"cpu"
  the same function, arranged around two slow spots of XLA:CPU's
  YNNPACK convolutions (`benchmarks/gconv.py` measures both):

  - a convolution without any padding ("VALID") takes a slower path
    than a padded one of the same size, so it runs with one extra
    zero row and column at the high end and the extra output is
    cropped (same values: those outputs are never kept);
  - the filter gradient is a convolution whose window is the whole
    image, which XLA:CPU runs far below its matrix-product speed;
    here it is `kh` matrix products per chunk of a few images
    (`lax.scan`) on the images' `kw` column shifts laid side by side
    (`filter_gradient`), through a custom VJP. Used where the
    products are big enough to win (`kh * kw * Cin >= 80` and at
    least 100 output pixels per image); below that XLA's own
    gradient is kept.

"auto" (the default)
  "cpu" when `jax.default_backend()` is "cpu" and the call is one the
  fast path covers (float32 or float64, 2-D, no input dilation, no
  feature groups), else "xla". Inside `auto_impl(impl)` (which
  `equivlab.ops.xla_options.jit` enters while it traces) "auto" means
  `impl`. The environment variable `EQUIVLAB_CONV_IMPL` ("xla" or "cpu")
  overrides both, for a whole process (set it before the first trace).

Which is faster depends on the compiler options. The slow spots above are
those of XLA:CPU's YNNPACK convolutions, on by default in jaxlib. With
YNNPACK's convolutions off (`xla_options.CPU_COMPILER_OPTIONS`), XLA's own
convolution and its gradient beat the "cpu" path per training step. So
`xla_options.jit` turns them off and traces with "xla"; a plain `jax.jit`
keeps jaxlib's defaults, and "auto" keeps the "cpu" path, the faster one
there. `benchmarks/train_step.py` times the three settings side by side.

The two agree to float rounding in values and in gradients (the filter
gradient sums in another order). A custom VJP passes reverse-mode autodiff,
`vmap` and `jit`, but not forward mode: for `jax.jvp`, `jax.jacfwd` or
`jax.hessian` through a convolution on CPU, pass `impl="xla"` (or set
`EQUIVLAB_CONV_IMPL=xla`).
"""

import contextlib
import contextvars
import functools
import math
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ("auto", "xla", "cpu")
ENV_VAR = "EQUIVLAB_CONV_IMPL"

_DN = ("NHWC", "HWIO", "NHWC")
# The matrix-product filter gradient beats XLA's from this contraction size
# (kh * kw * Cin) and this many output pixels per image on; below either,
# the products are too small to amortise the scan, so XLA's own gradient is
# kept.
_MIN_GEMM_DEPTH = 80
_MIN_GEMM_PIXELS = 100
# Bytes of column-shifted images per scan step: they stay in cache.
_CHUNK_BYTES = 2 * 2**20
_FAST_DTYPES = (jnp.float32, jnp.float64)

Pads = tuple[tuple[int, int], tuple[int, int]]

# What "auto" means inside `auto_impl` (None: decided by the platform).
_AUTO_IMPL: contextvars.ContextVar[str | None] = contextvars.ContextVar(
  "equivlab_conv_auto_impl", default=None
)


@contextlib.contextmanager
def auto_impl(impl: str) -> Iterator[None]:
  """Within the block, `impl="auto"` resolves to `impl` ("xla" or "cpu").

  It acts at trace time: wrap the tracing of a function (its first call
  under `jax.jit`, or `.lower(...)`), not the calls of an already compiled
  one. `EQUIVLAB_CONV_IMPL`, when set, still wins. Scoped to the current
  thread and context, like `jax.default_matmul_precision`.

  Raises:
    ValueError: for an `impl` other than "xla" or "cpu".
  """
  if impl not in ("xla", "cpu"):
    raise ValueError(f"auto_impl takes 'xla' or 'cpu', got {impl!r}.")
  token = _AUTO_IMPL.set(impl)
  try:
    yield
  finally:
    _AUTO_IMPL.reset(token)


def resolve_impl(impl: str = "auto", dtype=jnp.float32) -> str:
  """The implementation a call with `impl` and `dtype` runs: "xla"/"cpu".

  Raises:
    ValueError: for an `impl` (or `EQUIVLAB_CONV_IMPL`) not in `IMPLS`.
  """
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}.")
  if impl != "auto":
    return impl
  forced = os.environ.get(ENV_VAR, "").strip().lower()
  if forced:
    if forced not in ("xla", "cpu"):
      raise ValueError(
        f"the environment variable {ENV_VAR} must be 'xla' or 'cpu', got "
        f"{forced!r}."
      )
    return forced
  scoped = _AUTO_IMPL.get()
  if scoped == "xla":
    return "xla"
  fast = any(jnp.dtype(dtype) == d for d in _FAST_DTYPES)
  on_cpu = scoped == "cpu" or jax.default_backend() == "cpu"
  return "cpu" if fast and on_cpu else "xla"


def conv2d(
  x: jax.Array,
  kernel: jax.Array,
  *,
  stride: Sequence[int] = (1, 1),
  padding: str | Sequence[tuple[int, int]] = "VALID",
  dilation: Sequence[int] = (1, 1),
  precision=None,
  impl: str = "auto",
) -> jax.Array:
  """Cross-correlation of images with HWIO kernels.

  Args:
    x: `[N, H, W, Cin]`.
    kernel: `[kh, kw, Cin, Cout]`.
    stride: `(sh, sw)`.
    padding: "SAME", "VALID" or explicit `((lo_h, hi_h), (lo_w, hi_w))`.
    dilation: the kernel dilation `(dh, dw)`.
    precision: passed to XLA's convolution and matrix products.
    impl: "auto", "xla" or "cpu" (see the module docstring).

  Returns:
    `[N, H', W', Cout]`, what `lax.conv_general_dilated` gives with NHWC /
    HWIO / NHWC dimension numbers.
  """
  stride, dilation = tuple(stride), tuple(dilation)
  if isinstance(padding, str):
    span = [(kernel.shape[i] - 1) * dilation[i] + 1 for i in range(2)]
    padding = lax.padtype_to_pads(x.shape[1:3], span, stride, padding)
  pads = tuple(tuple(int(q) for q in p) for p in padding)
  dtype = jnp.result_type(x, kernel)
  if resolve_impl(impl, dtype) == "xla":
    return lax.conv_general_dilated(
      x,
      kernel,
      stride,
      pads,
      rhs_dilation=dilation,
      dimension_numbers=_DN,
      precision=precision,
    )
  return _cpu_conv(x, kernel, stride, pads, dilation, precision)


def conv_general_dilated(
  lhs,
  rhs,
  window_strides,
  padding,
  lhs_dilation=None,
  rhs_dilation=None,
  dimension_numbers=None,
  feature_group_count=1,
  batch_group_count=1,
  precision=None,
  preferred_element_type=None,
):
  """`lax.conv_general_dilated`'s signature, through `conv2d` where it can.

  For flax: `nn.Conv(..., conv_general_dilated=conv_general_dilated)`.
  Calls `conv2d` (impl "auto") for 2-D NHWC / HWIO convolutions without
  input dilation, feature or batch groups or a preferred element type, and
  `lax.conv_general_dilated` itself for everything else.
  """
  plain = (
    jnp.ndim(lhs) == 4
    and feature_group_count == 1
    and batch_group_count == 1
    and preferred_element_type is None
    and lhs_dilation in (None, (1, 1), [1, 1])
    and _is_nhwc(dimension_numbers, lhs, rhs)
  )
  if not plain:
    return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      batch_group_count,
      precision,
      preferred_element_type,
    )
  return conv2d(
    lhs,
    rhs,
    stride=window_strides,
    padding=padding,
    dilation=(1, 1) if rhs_dilation is None else rhs_dilation,
    precision=precision,
  )


def _is_nhwc(dimension_numbers, lhs, rhs) -> bool:
  if dimension_numbers is None:
    return False
  return lax.conv_dimension_numbers(
    jnp.shape(lhs), jnp.shape(rhs), dimension_numbers
  ) == lax.conv_dimension_numbers(jnp.shape(lhs), jnp.shape(rhs), _DN)


# --------------------------------------------------------------------------
# The CPU implementation.


def _xla_forward(x, kernel, stride, pads, dilation, precision):
  """The convolution itself; an unpadded one runs padded, then cropped."""
  if any(q for p in pads for q in p):
    return lax.conv_general_dilated(
      x,
      kernel,
      stride,
      pads,
      rhs_dilation=dilation,
      dimension_numbers=_DN,
      precision=precision,
    )
  out = [
    (x.shape[1 + i] - (kernel.shape[i] - 1) * dilation[i] - 1) // stride[i] + 1
    for i in range(2)
  ]
  y = lax.conv_general_dilated(
    x,
    kernel,
    stride,
    ((0, stride[0]), (0, stride[1])),
    rhs_dilation=dilation,
    dimension_numbers=_DN,
    precision=precision,
  )
  return y[:, : out[0], : out[1]]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def _gemm_grad_conv(x, kernel, stride, pads, dilation, precision):
  return _xla_forward(x, kernel, stride, pads, dilation, precision)


def _gemm_grad_fwd(x, kernel, stride, pads, dilation, precision):
  y = _xla_forward(x, kernel, stride, pads, dilation, precision)
  return y, (x, kernel)


def _gemm_grad_bwd(stride, pads, dilation, precision, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(
    lambda a: _xla_forward(a, kernel, stride, pads, dilation, precision), x
  )
  (dx,) = input_vjp(dy)
  dk = filter_gradient(x, dy, kernel.shape, stride, pads, dilation, precision)
  return dx, dk.astype(kernel.dtype)


_gemm_grad_conv.defvjp(_gemm_grad_fwd, _gemm_grad_bwd)


def _cpu_conv(x, kernel, stride, pads, dilation, precision):
  kh, kw, cin, _ = kernel.shape
  pixels = 1
  for i in range(2):
    span = (kernel.shape[i] - 1) * dilation[i] + 1
    pixels *= max(0, (x.shape[1 + i] + sum(pads[i]) - span) // stride[i] + 1)
  if kh * kw * cin < _MIN_GEMM_DEPTH or pixels < _MIN_GEMM_PIXELS:
    return _xla_forward(x, kernel, stride, pads, dilation, precision)
  return _gemm_grad_conv(x, kernel, stride, pads, dilation, precision)


def filter_gradient(
  x: jax.Array,
  dy: jax.Array,
  kernel_shape: Sequence[int],
  stride: Sequence[int],
  pads: Pads,
  dilation: Sequence[int],
  precision=None,
) -> jax.Array:
  """The gradient of `sum(dy * conv(x, k))` w.r.t. `k`, by matrix products.

  `dk[i, j, c, o] = sum_{n, h, w} xp[n, h s + i d, w s + j d, c] dy[n, h, w,
  o]` (xp: x padded). Over chunks of a few images (`lax.scan`), the `kw`
  column shifts of the chunk are laid side by side once, `z[n, r, w, (j,
  c)] = xp[n, r, w s + j d, c]` (3x the input for a 3x3 kernel, not the 9x
  of full im2col patches), and each kernel row `i` is one product `dy^T @
  z[:, i d :: s]` of `[Cout, kw * Cin]`. With one image per chunk and
  stride 1 those rows of `z` are a contiguous block.

  Args:
    x: the convolution's input `[N, H, W, Cin]`.
    dy: the cotangent of its output `[N, H', W', Cout]`.
    kernel_shape: `(kh, kw, Cin, Cout)`.
    stride: `(sh, sw)`.
    pads: `((lo_h, hi_h), (lo_w, hi_w))`.
    dilation: `(dh, dw)`.
    precision: of the matrix products.

  Returns:
    `[kh, kw, Cin, Cout]` in the promoted dtype of `x` and `dy`.
  """
  kh, kw, cin, cout = kernel_shape
  n, ho, wo = dy.shape[:3]
  dtype = jnp.result_type(x, dy)
  rows = x.shape[1] + sum(pads[0])
  per_image = rows * wo * kw * cin * jnp.dtype(dtype).itemsize
  steps = -(-n // max(1, math.ceil(_CHUNK_BYTES / per_image)))
  chunk = -(-n // steps)  # as even as the steps allow: few padded images
  extra = steps * chunk - n  # zero images add nothing to the sum
  x = jnp.pad(x.astype(dtype), ((0, extra), (0, 0), (0, 0), (0, 0)))
  dy = jnp.pad(dy.astype(dtype), ((0, extra), (0, 0), (0, 0), (0, 0)))

  def column_shifts(images):
    cols = []
    for j in range(kw):
      start = (0, 0, j * dilation[1], 0)
      limit = (chunk, rows, start[2] + (wo - 1) * stride[1] + 1, cin)
      cols.append(lax.slice(images, start, limit, (1, 1, stride[1], 1)))
    return jnp.concatenate(cols, axis=-1)  # [chunk, rows, W', kw * Cin]

  def product(images, grads):
    # Padded chunk by chunk: no padded copy of the whole batch.
    z = column_shifts(jnp.pad(images, ((0, 0), *pads, (0, 0))))
    g = grads.reshape(-1, cout)
    out = []
    for i in range(kh):
      start = (0, i * dilation[0], 0, 0)
      limit = (chunk, start[1] + (ho - 1) * stride[0] + 1, wo, kw * cin)
      zi = lax.slice(z, start, limit, (1, stride[0], 1, 1))
      out.append(jnp.matmul(g.T, zi.reshape(-1, kw * cin), precision=precision))
    return jnp.stack(out)  # [kh, Cout, kw * Cin]

  if steps == 1:
    total = product(x, dy)
  else:

    def body(acc, chunk_arrays):
      return acc + product(*chunk_arrays), None

    split = lambda a: a.reshape(steps, chunk, *a.shape[1:])  # noqa: E731
    init = jnp.zeros((kh, cout, kw * cin), dtype)
    total, _ = lax.scan(body, init, (split(x), split(dy)))
  return total.reshape(kh, cout, kw, cin).transpose(0, 2, 3, 1)
