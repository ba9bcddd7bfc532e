"""Image transforms: pure, key first, jittable, on batches `[N, H, W, C]`.

Integer shifts (shifted digits) and random crops with zero
padding, rotation by any angle with bilinear interpolation (like mnist-rot),
random quarter turns (`gconv.rotate_z2`'s) and flips. Each checks its
arguments eagerly and names what it expected: shapes, dtypes and keys always
(also under `jit`), values wherever they are concrete.

Random shifts and crops stop at `largest_random_shift`: a larger one can move
an image's centre out of the frame and leave it blank. All of these are
re-exported by `equivlab.data`.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from equivlab import checks, gconv


def _check_batch(images: Any, name: str) -> tuple[int, int, int, int]:
  """Checks `images` is `[N, H, W, C]` with H, W, C >= 1; returns its shape."""
  shape = np.shape(images)
  if len(shape) != 4:
    raise ValueError(f"{name} expects images [N, H, W, C], got shape {shape}.")
  if min(shape[1:]) < 1:
    raise ValueError(
      f"{name} expects images [N, H, W, C] with H, W, C >= 1, got shape "
      f"{shape}."
    )
  return shape


def check_key(key: Any, name: str) -> None:
  """Raises TypeError unless `key` is a jax PRNG key (typed or raw uint32)."""
  dtype = getattr(key, "dtype", None)
  typed = dtype is not None and jnp.issubdtype(dtype, jax.dtypes.prng_key)
  raw = dtype == np.uint32 and np.ndim(key) == 1
  if not (typed or raw):
    raise TypeError(
      f"{name}: key must be a jax PRNG key (jax.random.key(seed) or "
      f"jax.random.PRNGKey(seed)), got {key!r}."
    )


def largest_random_shift(height: int, width: int) -> int:
  """The largest `max_shift` (or crop `padding`) accepted for H x W images.

  `(min(H, W) - 1) // 2`: the largest shift that keeps the image's centre
  inside the frame. A larger random shift can move the centre, where the
  object usually is, out of the frame: `embedded_shift99` left over 80% of the
  28 x 28 digits blank. 13 for the digits, 15 for 32 x 32 images.

  Args:
    height: H, >= 1.
    width: W, >= 1.

  Returns:
    The bound, >= 0.
  """
  checks.check_int("height", height, minimum=1)
  checks.check_int("width", width, minimum=1)
  return (min(height, width) - 1) // 2


def _check_shift_bound(name: str, value: Any, shape: tuple, caller: str):
  """`value` must be an int in [0, largest_random_shift(H, W)]."""
  bound = largest_random_shift(shape[1], shape[2])
  if checks.is_int(value) and value > bound >= 0:
    raise ValueError(
      f"{caller}: {name} must be an int in [0, {bound}] for "
      f"{shape[1]}x{shape[2]} images (a larger shift can move the image's "
      f"centre out of the frame and leave it blank), got {value!r}."
    )
  checks.check_int(f"{caller}: {name}", value, minimum=0)


def translate(images: jax.Array, shifts: jax.Array) -> jax.Array:
  """Moves each image by an integer number of pixels, filling with zeros.

  Pixels moved out of the frame are lost; the uncovered border is 0 (the
  background of the digits). `shifts` may be traced, so this jits; concrete
  shifts are checked to leave part of each image in the frame.

  Args:
    images: `[N, H, W, C]`.
    shifts: int `[N, 2]`: `(dy, dx)` per image; positive moves down/right,
      `|dy| <= H - 1` and `|dx| <= W - 1`.

  Returns:
    `[N, H, W, C]` with `out[n, i, j] = images[n, i - dy, j - dx]` where
    that index is inside the image, else 0.

  Raises:
    ValueError: if the shapes do not match `[N, H, W, C]` and `[N, 2]`, or
      a concrete shift moves a whole image out of the frame.
    TypeError: if `shifts` is not an integer array.
  """
  n, h, w, c = _check_batch(images, "translate")
  if np.shape(shifts) != (n, 2):
    raise ValueError(
      f"shifts must be [N, 2] = [{n}, 2], got {np.shape(shifts)}."
    )
  dtype = getattr(shifts, "dtype", None)
  dtype = np.asarray(shifts).dtype if dtype is None else dtype
  if not jnp.issubdtype(dtype, jnp.integer):
    raise TypeError(
      f"shifts must be integers (whole pixels), got dtype {dtype}."
    )
  if checks.is_concrete(shifts) and n:
    values = np.abs(np.asarray(shifts))
    bad = (values[:, 0] >= h) | (values[:, 1] >= w)
    if bad.any():
      index = int(np.argmax(bad))
      raise ValueError(
        f"shifts must lie in [-{h - 1}, {h - 1}] x [-{w - 1}, {w - 1}] for "
        f"{h}x{w} images (a larger shift moves the whole image out of the "
        f"frame), got {tuple(np.asarray(shifts)[index].tolist())} at index "
        f"{index}."
      )
  images = jnp.asarray(images)
  padded = jnp.pad(images, ((0, 0), (h, h), (w, w), (0, 0)))

  def one(image, shift):
    return lax.dynamic_slice(image, (h - shift[0], w - shift[1], 0), (h, w, c))

  return jax.vmap(one)(padded, jnp.asarray(shifts, jnp.int32))


def random_shift(
  key: jax.Array, images: jax.Array, max_shift: int
) -> jax.Array:
  """Shifted digits: each moved by up to `max_shift` pixels.

  Each image gets its own `dy` and `dx`, drawn independently and uniformly
  from the integers `-max_shift..max_shift`; the border fills with zeros.

  Args:
    key: PRNG key.
    images: `[N, H, W, C]`.
    max_shift: the largest shift along each axis, an int in
      `[0, largest_random_shift(H, W)]`.

  Returns:
    The shifted images, `[N, H, W, C]`.

  Raises:
    ValueError: if `max_shift` is negative or too large for the images.
    TypeError: if `max_shift` is not an int or `key` is not a PRNG key.
  """
  shape = _check_batch(images, "random_shift")
  check_key(key, "random_shift")
  _check_shift_bound("max_shift", max_shift, shape, "random_shift")
  shifts = jax.random.randint(key, (shape[0], 2), -max_shift, max_shift + 1)
  return translate(images, shifts)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Random crop with zero padding (the CIFAR augmentation).

  Pads `padding` zeros on every side and crops a window of the original
  size at a uniform random offset; this equals a random integer shift by
  `-padding..padding` along each axis, which is how it is computed.

  Args:
    key: PRNG key.
    images: `[N, H, W, C]`.
    padding: pixels of zero padding per side, an int in
      `[0, largest_random_shift(H, W)]`.

  Returns:
    The cropped images, `[N, H, W, C]`.

  Raises:
    ValueError: if `padding` is negative or too large for the images.
    TypeError: if `padding` is not an int or `key` is not a PRNG key.
  """
  shape = _check_batch(images, "random_crop")
  _check_shift_bound("padding", padding, shape, "random_crop")
  return random_shift(key, images, padding)


def _check_angles(images: Any, angles: Any, name: str) -> None:
  n = _check_batch(images, name)[0]
  checks.check_floating("images", images)
  if np.shape(angles) != (n,):
    raise ValueError(f"angles must be [N] = [{n}], got {np.shape(angles)}.")
  if checks.is_concrete(angles) and not np.all(np.isfinite(angles)):
    index = int(np.argmin(np.isfinite(np.asarray(angles))))
    raise ValueError(
      f"angles must be finite (radians), got {np.asarray(angles)[index]} at "
      f"index {index}."
    )


def rotate(images: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates each image about its centre by an angle, bilinearly.

  Like the mnist-rot benchmark (Larochelle et al. 2007): every output pixel
  samples the input at the inversely rotated position with bilinear
  interpolation; positions outside the image read 0. Positive angles turn
  counter-clockwise in the sense of `np.rot90`, so `angle = pi / 2` gives
  `rot90(images, 1, axes=(1, 2))` up to float error on square images.

  Args:
    images: floating point `[N, H, W, C]` (interpolation needs floats).
    angles: `[N]` finite angles in radians.

  Returns:
    The rotated images, `[N, H, W, C]`.

  Raises:
    ValueError: if `angles` is not `[N]` or a concrete angle is not finite.
    TypeError: if the images are not floating point.
  """
  _check_angles(images, angles, "rotate")
  images = jnp.asarray(images)
  _, h, w, _ = images.shape
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  rows, cols = jnp.meshgrid(
    jnp.arange(h, dtype=jnp.float32) - cy,
    jnp.arange(w, dtype=jnp.float32) - cx,
    indexing="ij",
  )

  def one(image, angle):
    # np.rot90 (k=1) maps out[i, j] = in[j, W-1-i]: in centred coordinates
    # the source of output (r, c) is (c, -r) turned back by the angle.
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    src_r = cos * rows + sin * cols + cy
    src_c = -sin * rows + cos * cols + cx
    return _bilinear(image, src_r, src_c)

  return jax.vmap(one)(images, jnp.asarray(angles, jnp.float32))


def _bilinear(image: jax.Array, r: jax.Array, c: jax.Array) -> jax.Array:
  """Samples `image [H, W, C]` at float positions `r, c [H', W']`, 0 outside."""
  h, w, _ = image.shape
  r0, c0 = jnp.floor(r), jnp.floor(c)
  fr, fc = (r - r0)[..., None], (c - c0)[..., None]
  r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)

  def at(ri, ci):
    inside = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
    value = image[jnp.clip(ri, 0, h - 1), jnp.clip(ci, 0, w - 1)]
    return jnp.where(inside[..., None], value, 0.0)

  top = at(r0, c0) * (1 - fc) + at(r0, c0 + 1) * fc
  bottom = at(r0 + 1, c0) * (1 - fc) + at(r0 + 1, c0 + 1) * fc
  return (top * (1 - fr) + bottom * fr).astype(image.dtype)


def random_rotate(
  key: jax.Array, images: jax.Array, max_angle: float = math.pi
) -> jax.Array:
  """Rotates each image by a uniform angle in `[-max_angle, max_angle]`.

  With the default `max_angle = pi` the angle is uniform over the circle,
  the mnist-rot protocol; a larger range would only wrap around (and a
  value like 90 is degrees by mistake), so it is refused.

  Args:
    key: PRNG key.
    images: floating point `[N, H, W, C]`.
    max_angle: the largest rotation in radians, in `[0, pi]`.

  Returns:
    The rotated images, `[N, H, W, C]`.

  Raises:
    ValueError: if `max_angle` is outside `[0, pi]` or not finite.
    TypeError: if `max_angle` is not a number, `key` not a PRNG key, or the
      images not floating point.
  """
  n = _check_batch(images, "random_rotate")[0]
  check_key(key, "random_rotate")
  checks.check_number("max_angle", max_angle, minimum=0.0, maximum=math.pi)
  angles = jax.random.uniform(key, (n,), minval=-max_angle, maxval=max_angle)
  return rotate(images, angles)


def random_rot90(key: jax.Array, images: jax.Array) -> jax.Array:
  """Turns each square image by a uniform random multiple of 90 degrees.

  The quarter turns are `gconv.rotate_z2`'s (the p4 action on images).

  Args:
    key: PRNG key.
    images: `[N, H, H, C]`.

  Returns:
    `[N, H, H, C]`, image n turned by `k_n * 90` degrees, `k_n` in 0..3.

  Raises:
    ValueError: if the images are not square.
    TypeError: if `key` is not a PRNG key.
  """
  n, h, w, _ = _check_batch(images, "random_rot90")
  check_key(key, "random_rot90")
  if h != w:
    raise ValueError(f"random_rot90 needs square images, got {h}x{w}.")
  images = jnp.asarray(images)
  ks = jax.random.randint(key, (n,), 0, 4)
  turns = jnp.stack([gconv.rotate_z2(images, k) for k in range(4)])
  return jnp.take_along_axis(
    turns, ks[None, :, None, None, None], axis=0
  ).squeeze(0)


def flip_horizontal(images: jax.Array) -> jax.Array:
  """Mirrors images left-right (the W axis).

  Args:
    images: `[N, H, W, C]`.

  Returns:
    `[N, H, W, C]` with `out[:, :, j] = images[:, :, W - 1 - j]`.
  """
  _check_batch(images, "flip_horizontal")
  return jnp.flip(jnp.asarray(images), axis=2)


def random_flip(
  key: jax.Array, images: jax.Array, probability: float = 0.5
) -> jax.Array:
  """Mirrors each image left-right with probability `probability`.

  Args:
    key: PRNG key.
    images: `[N, H, W, C]`.
    probability: chance of a flip, in [0, 1].

  Returns:
    `[N, H, W, C]`.

  Raises:
    ValueError: if `probability` is outside [0, 1] or NaN.
    TypeError: if `probability` is not a number or `key` not a PRNG key.
  """
  n = _check_batch(images, "random_flip")[0]
  check_key(key, "random_flip")
  checks.check_number("probability", probability, minimum=0.0, maximum=1.0)
  images = jnp.asarray(images)
  flip = jax.random.bernoulli(key, probability, (n,))
  return jnp.where(flip[:, None, None, None], jnp.flip(images, 2), images)
