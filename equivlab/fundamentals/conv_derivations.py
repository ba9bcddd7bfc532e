"""Hand-derived convolutions: output shapes and the 3-D cross-correlation.

Re-exported by `equivlab.fundamentals.derivations` (import them from
there); kept apart so that neither module outgrows its concept.

- Convolution output shapes (Dumoulin & Visin 2016, "A guide to convolution
  arithmetic for deep learning"): `floor((n + 2p - k) / s) + 1` per spatial
  axis, and the channel change.
- The 3-D cross-correlation in channels-first layout,
  `x [C_in, D, H, W]` and `k [C_out, C_in, kd, kh, kw]`, with stride and
  zero padding, and its backward pass by hand (never `jax.grad`).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from equivlab import checks

# ---------------------------------------------------------------------------
# Convolution output shapes (Dumoulin & Visin 2016).
# ---------------------------------------------------------------------------


def conv_output_size(n: int, k: int, stride: int = 1, padding: int = 0) -> int:
  """The length of one spatial axis after a convolution (cross-correlation).

  `floor((n + 2p - k) / s) + 1`. The floor matters whenever `s` does not
  divide `n + 2p - k`: a ceiling would count a last window that runs past
  the padded input.

  Args:
    n: the input length.
    k: the kernel length.
    stride: the step between windows, `s >= 1`.
    padding: zeros added on each side, `p >= 0`.

  Returns:
    The output length, at least 1.

  Raises:
    ValueError: if an argument is out of range or the kernel is longer than
      the padded input.
  """
  for name, value, low in (
    ("n", n, 1),
    ("k", k, 1),
    ("stride", stride, 1),
    ("padding", padding, 0),
  ):
    if int(value) != value or value < low:
      raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
  if k > n + 2 * padding:
    raise ValueError(
      f"kernel length {k} exceeds the padded input length "
      f"n + 2p = {n + 2 * padding}."
    )
  return (n + 2 * padding - k) // stride + 1


def conv_output_shape(
  input_shape: Sequence[int],
  kernel_shape: Sequence[int],
  strides: int | Sequence[int] = 1,
  padding: int | Sequence[int] = 0,
) -> tuple[int, ...]:
  """The output shape of an N-D convolution in NHWC / HWIO layout.

  Works for 1-D `[B, W, C]`, 2-D `[B, H, W, C]` and 3-D `[B, D, H, W, C]`
  inputs. Each spatial axis follows
  `conv_output_size`; the channel axis becomes the kernel's output channels.

  Args:
    input_shape: `[B, *spatial, C_in]`.
    kernel_shape: `[*k, C_in, C_out]` with as many `k` as spatial axes.
    strides: one stride for all spatial axes or one per axis.
    padding: symmetric zero padding, one for all axes or one per axis.

  Returns:
    `(B, *spatial_out, C_out)`.

  Raises:
    ValueError: if the ranks or channel counts do not match, or an axis does
      not fit (see `conv_output_size`).
  """
  input_shape, kernel_shape = tuple(input_shape), tuple(kernel_shape)
  nd = len(input_shape) - 2
  if nd not in (1, 2, 3):
    raise ValueError(
      "input_shape must be [B, *spatial, C] with 1 to 3 spatial axes, got "
      f"{input_shape}."
    )
  if len(kernel_shape) != nd + 2:
    raise ValueError(
      f"kernel_shape must have rank {nd + 2} ([*k, C_in, C_out]) for a "
      f"{nd}-D input, got {kernel_shape}."
    )
  if kernel_shape[-2] != input_shape[-1]:
    raise ValueError(
      f"kernel input channels {kernel_shape[-2]} must equal the input "
      f"channels {input_shape[-1]}."
    )
  strides = _per_axis("strides", strides, nd)
  padding = _per_axis("padding", padding, nd)
  spatial = tuple(
    conv_output_size(n, k, s, p)
    for n, k, s, p in zip(
      input_shape[1:-1], kernel_shape[:-2], strides, padding, strict=True
    )
  )
  return (input_shape[0], *spatial, kernel_shape[-1])


def _per_axis(name: str, value: int | Sequence[int], nd: int) -> tuple:
  if isinstance(value, int):
    return (value,) * nd
  value = tuple(value)
  if len(value) != nd:
    raise ValueError(
      f"{name} must be an int or have {nd} entries, got {value}."
    )
  return value


# ---------------------------------------------------------------------------
# 3-D cross-correlation (Goodfellow, Bengio & Courville 2016, chapter 9).
# ---------------------------------------------------------------------------

_AXES = ("depth", "height", "width")


def _triple(name: str, value, minimum: int) -> tuple[int, int, int]:
  """One int for all three spatial axes, or one per axis (D, H, W)."""
  if checks.is_int(value):
    checks.check_int(name, value, minimum=minimum)
    return (int(value),) * 3
  if isinstance(value, Sequence) and not isinstance(value, str):
    if len(value) != 3:
      raise ValueError(
        f"{name} must be an int or 3 ints (depth, height, width), got "
        f"{tuple(value)!r}."
      )
    checks.check_ints(name, value, minimum=minimum)
    return tuple(int(v) for v in value)
  raise TypeError(
    f"{name} must be an int or 3 ints (depth, height, width), got {value!r}."
  )


def _conv3d_geometry(x, k, stride, padding):
  """Checks the arguments; returns `(strides, pads, output spatial shape)`."""
  checks.check_rank("x", x, 4, "[C_in, D, H, W]")
  checks.check_rank("k", k, 5, "[C_out, C_in, kd, kh, kw]")
  checks.check_floating("x", x)
  checks.check_floating("k", k)
  strides = _triple("stride", stride, 1)
  pads = _triple("padding", padding, 0)
  x_shape, k_shape = jnp.shape(x), jnp.shape(k)
  if min(x_shape) < 1 or min(k_shape) < 1:
    raise ValueError(
      f"x [C_in, D, H, W] and k [C_out, C_in, kd, kh, kw] must have no "
      f"empty axis, got shapes {x_shape} and {k_shape}."
    )
  if k_shape[1] != x_shape[0]:
    raise ValueError(
      f"k's input channels (axis 1) must equal x's channels C_in = "
      f"{x_shape[0]}, got k shape {k_shape}."
    )
  out = []
  for axis, n, kk, s, p in zip(
    _AXES, x_shape[1:], k_shape[2:], strides, pads, strict=True
  ):
    if kk > n + 2 * p:
      raise ValueError(
        f"the kernel's {axis} {kk} exceeds the padded input's {axis} "
        f"{n} + 2 * {p} = {n + 2 * p}: use a kernel of at most {n + 2 * p} "
        f"or more padding."
      )
    out.append((n + 2 * p - kk) // s + 1)
  return strides, pads, tuple(out)


def _window_indices(strides, out, kernel):
  """Index arrays that gather every window: `[O_d, kd, O_h, kh, O_w, kw]`.

  Window position `i` and kernel offset `m` read input row `i * s + m`; the
  three index arrays broadcast against each other to the full window grid.
  """
  per_axis = [
    s * jnp.arange(o)[:, None] + jnp.arange(kk)[None, :]
    for s, o, kk in zip(strides, out, kernel, strict=True)
  ]
  d, h, w = per_axis
  return (
    d[:, :, None, None, None, None],
    h[None, None, :, :, None, None],
    w[None, None, None, None, :, :],
  )


def conv3d_forward(
  x: jax.Array,
  k: jax.Array,
  *,
  stride: int | Sequence[int] = 1,
  padding: int | Sequence[int] = 0,
) -> jax.Array:
  """The 3-D cross-correlation, with stride and padding.

  `Z[p, i, j, q] = sum_{p', m, n, r} K[p, p', m, n, r]
  X_hat[p', i s + m, j s + n, q s + r]`, where `X_hat` is `x` with `padding`
  zeros on both sides of each spatial axis, and `m, n, r` run over the
  kernel extents `kd, kh, kw`. Every
  window is gathered once (im2col) and contracted with the kernel in one
  `einsum`: a derivation to read and check, not a fast kernel (its memory is
  `C_in * D' * H' * W' * kd * kh * kw`; use `lax.conv_general_dilated` for
  speed). One example; batch with `jax.vmap`.

  Args:
    x: the input `[C_in, D, H, W]`, floating point.
    k: the kernel `[C_out, C_in, kd, kh, kw]`, floating point.
    stride: `s >= 1`, one for all axes or `(s_d, s_h, s_w)`.
    padding: zeros per side `p >= 0`, one for all axes or `(p_d, p_h, p_w)`.

  Returns:
    `[C_out, D', H', W']` with `D' = floor((D + 2 p_d - kd) / s_d) + 1` and
    likewise for H' and W', in the promoted dtype of `x` and `k`.

  Raises:
    ValueError: for wrong ranks, empty axes, mismatched channels, a stride
      below 1, negative padding or a kernel larger than the padded input.
    TypeError: for non-floating inputs or a non-integer stride or padding.
  """
  strides, pads, out = _conv3d_geometry(x, k, stride, padding)
  dtype = jnp.result_type(x, k)
  x, k = jnp.asarray(x, dtype), jnp.asarray(k, dtype)
  x_hat = jnp.pad(x, ((0, 0), *((p, p) for p in pads)))
  idx = _window_indices(strides, out, k.shape[2:])
  # patches[p', i, m, j, n, q, r] = X_hat[p', i s + m, j s + n, q s + r].
  patches = x_hat[:, idx[0], idx[1], idx[2]]
  return jnp.einsum("cimjnqr,ocmnr->oijq", patches, k)


def conv3d_backward(
  x: jax.Array,
  k: jax.Array,
  dy: jax.Array,
  *,
  stride: int | Sequence[int] = 1,
  padding: int | Sequence[int] = 0,
) -> tuple[jax.Array, jax.Array]:
  """The backward pass of `conv3d_forward`, by the chain rule.

  With `G = dL/dZ` (`dy`) and the forward's windows, each kernel tap
  correlates the input it read with the output gradient::

    dL/dK[p, p', m, n, r] = sum_{i, j, q} G[p, i, j, q]
                            X_hat[p', i s + m, j s + n, q s + r]

  and each input position collects the gradient of every window that read
  it (a scatter-add, the adjoint of the forward's gather)::

    dL/dX_hat[p', a, b, c] = sum K[p, p', m, n, r] G[p, i, j, q]

  over every `(p, i, j, q, m, n, r)` with
  `(i s + m, j s + n, q s + r) = (a, b, c)`. `dL/dx` is its interior, the
  padding cropped off. Positions no window reads (the last rows when the
  stride does not divide `D + 2p - kd`) get zero.

  Equivalently `dL/dx` is the full correlation of the stride-dilated `G`
  with the flipped, channel-transposed kernel (the test checks that too).

  Args:
    x: the forward's input `[C_in, D, H, W]`.
    k: the forward's kernel `[C_out, C_in, kd, kh, kw]`.
    dy: `dL/dZ`, shaped like the forward's output `[C_out, D', H', W']`.
    stride: as in `conv3d_forward`.
    padding: as in `conv3d_forward`.

  Returns:
    `(dx, dk)`: `dL/dx` `[C_in, D, H, W]` and `dL/dk`
    `[C_out, C_in, kd, kh, kw]`, in the promoted dtype of `x`, `k` and `dy`.

  Raises:
    ValueError: as `conv3d_forward`, and if `dy` is not shaped like its
      output.
    TypeError: as `conv3d_forward`, and for a non-floating `dy`.
  """
  strides, pads, out = _conv3d_geometry(x, k, stride, padding)
  checks.check_floating("dy", dy)
  expected = (jnp.shape(k)[0], *out)
  if jnp.shape(dy) != expected:
    raise ValueError(
      f"dy must be shaped like the forward's output [C_out, D', H', W'] = "
      f"{expected}, got {jnp.shape(dy)}."
    )
  dtype = jnp.result_type(x, k, dy)
  x, k, dy = (jnp.asarray(a, dtype) for a in (x, k, dy))
  x_hat = jnp.pad(x, ((0, 0), *((p, p) for p in pads)))
  idx = _window_indices(strides, out, k.shape[2:])
  patches = x_hat[:, idx[0], idx[1], idx[2]]
  dk = jnp.einsum("cimjnqr,oijq->ocmnr", patches, dy)
  d_patches = jnp.einsum("ocmnr,oijq->cimjnqr", k, dy)
  dx_hat = jnp.zeros_like(x_hat).at[:, idx[0], idx[1], idx[2]].add(d_patches)
  (pd, ph, pw), (d, h, w) = pads, x.shape[1:]
  dx = dx_hat[:, pd : pd + d, ph : ph + h, pw : pw + w]
  return dx, dk
