"""Occlusion sensitivity: what a classifier sees, by covering parts of a digit.

Seed 002, problem 2 (after Zeiler & Fergus 2014): slide a grey square over
an image and record, for every patch position, (a) the probability of the
true class, (b) the highest probability and (c) the predicted label; then
search over patch positions and sizes for a patch that changes the
prediction. Occluded images are built with a mask from traced positions and
sizes, so a whole grid of them comes from one `jax.vmap`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

ApplyFn = Callable[[jax.Array], jax.Array]


def occlude(
  image: jax.Array, row: jax.Array, col: jax.Array, size: jax.Array, value=0.5
) -> jax.Array:
  """Covers a `size` x `size` square centred at (row, col) with `value`.

  The square spans rows `row - size // 2 .. row - size // 2 + size - 1`
  (and the same for columns), clipped to the image. Every argument may be
  traced, so the function vmaps over positions and sizes.

  Args:
    image: `[H, W, C]`.
    row: integer scalar, centre row.
    col: integer scalar, centre column.
    size: integer scalar, side of the square (0 leaves the image as is).
    value: grey level of the patch.

  Returns:
    The occluded image, `[H, W, C]`.
  """
  chex.assert_rank(image, 3)
  h, w = image.shape[:2]
  top = row - size // 2
  left = col - size // 2
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + size)
  inside = inside & (cols >= left) & (cols < left + size)
  return jnp.where(inside[:, :, None], jnp.asarray(value, image.dtype), image)


def _check(image, label, patch_size, stride):
  if np.ndim(image) != 3:
    raise ValueError(
      f"image must be one image [H, W, C], got shape {np.shape(image)}."
    )
  h, w = np.shape(image)[:2]
  if not 1 <= patch_size <= max(h, w):
    raise ValueError(
      f"patch size must be in 1..{max(h, w)} for a {h}x{w} image, got "
      f"{patch_size}."
    )
  if stride < 1:
    raise ValueError(f"stride must be >= 1, got {stride}.")
  if int(label) < 0:
    raise ValueError(f"label must be a class index >= 0, got {label}.")


def _centres(h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
  rows, cols = np.meshgrid(
    np.arange(0, h, stride), np.arange(0, w, stride), indexing="ij"
  )
  return rows, cols


def _probabilities(
  apply_fn: ApplyFn, images: jax.Array, batch_size: int
) -> jax.Array:
  """Softmax of `apply_fn` over `images` [P, H, W, C], in chunks."""
  chunks = [
    jax.nn.softmax(apply_fn(images[i : i + batch_size]), axis=-1)
    for i in range(0, images.shape[0], batch_size)
  ]
  return jnp.concatenate(chunks, axis=0)


def occlusion_maps(
  apply_fn: ApplyFn,
  image: jax.Array,
  label: int,
  *,
  patch_size: int = 7,
  stride: int = 1,
  value: float = 0.5,
  batch_size: int = 1024,
) -> dict[str, jax.Array]:
  """Occlusion sensitivity maps of one image (seed 002 problem 2 (a)-(c)).

  Args:
    apply_fn: images `[B, H, W, C]` -> logits `[B, K]`, e.g.
      `lambda x: model.apply(variables, x, train=False)`.
    image: `[H, W, C]`.
    label: the true class.
    patch_size: side of the grey square.
    stride: distance between patch centres; maps have
      `ceil(H / stride) x ceil(W / stride)` entries.
    value: grey level of the patch.
    batch_size: occluded images per call of `apply_fn`.

  Returns:
    A dict of maps `[H', W']` indexed by patch centre: "true_prob" (the
    probability of `label`), "top_prob" (the highest probability), "label"
    (the predicted class, int32); plus "clean_probs" `[K]`, the
    probabilities of the unoccluded image.

  Raises:
    ValueError: for an image that is not `[H, W, C]`, a patch size outside
      1..max(H, W), a stride below 1, or a label outside 0..K-1.
  """
  _check(image, label, patch_size, stride)
  image = jnp.asarray(image, jnp.float32)
  rows, cols = _centres(image.shape[0], image.shape[1], stride)
  occluded = jax.vmap(occlude, in_axes=(None, 0, 0, None, None))(
    image,
    jnp.asarray(rows.ravel()),
    jnp.asarray(cols.ravel()),
    patch_size,
    value,
  )
  probs = _probabilities(apply_fn, occluded, batch_size)
  clean = jax.nn.softmax(apply_fn(image[None])[0])
  if int(label) >= clean.shape[0]:
    raise ValueError(
      f"label must be in 0..{clean.shape[0] - 1} for {clean.shape[0]} "
      f"classes, got {label}."
    )
  shape = rows.shape
  return {
    "true_prob": probs[:, label].reshape(shape),
    "top_prob": jnp.max(probs, axis=-1).reshape(shape),
    "label": jnp.argmax(probs, axis=-1).astype(jnp.int32).reshape(shape),
    "clean_probs": clean,
  }


def find_flipping_patch(
  apply_fn: ApplyFn,
  image: jax.Array,
  label: int,
  *,
  sizes: Sequence[int] = (3, 5, 7, 9, 11, 13),
  stride: int = 1,
  value: float = 0.5,
  batch_size: int = 1024,
) -> dict[str, Any]:
  """Searches patch sizes and positions for an occlusion that flips the label.

  Seed 002 problem 2 (3) asks whether such a patch exists; this answers it
  exhaustively over the grid of centres (every `stride` pixels) and `sizes`.

  Args:
    apply_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    image: `[H, W, C]`, which the model should classify as `label`.
    label: the true class.
    sizes: patch sides to try, smallest first matters for the answer.
    stride: distance between patch centres.
    value: grey level of the patch.
    batch_size: occluded images per call of `apply_fn`.

  Returns:
    A dict: "found" (bool), and when found the smallest flipping "size",
    the "row" and "col" of the centre where the true-class probability is
    lowest at that size, the "new_label" predicted there and its
    "new_prob"; "flip_fraction" maps each size to the fraction of positions
    whose patch flips the prediction; "clean_label" is the prediction on the
    unoccluded image.

  Raises:
    ValueError: as `occlusion_maps`, for each size.
  """
  if not sizes:
    raise ValueError("sizes must name at least one patch size, got none.")
  result: dict[str, Any] = {"found": False, "flip_fraction": {}}
  for size in sorted(int(s) for s in sizes):
    maps = occlusion_maps(
      apply_fn,
      image,
      label,
      patch_size=size,
      stride=stride,
      value=value,
      batch_size=batch_size,
    )
    result["clean_label"] = int(jnp.argmax(maps["clean_probs"]))
    flipped = np.asarray(maps["label"]) != int(label)
    result["flip_fraction"][size] = float(flipped.mean())
    if flipped.any() and not result["found"]:
      true_prob = np.where(flipped, np.asarray(maps["true_prob"]), np.inf)
      i, j = np.unravel_index(np.argmin(true_prob), true_prob.shape)
      result.update(
        found=True,
        size=size,
        row=int(i * stride),
        col=int(j * stride),
        new_label=int(maps["label"][i, j]),
        new_prob=float(maps["top_prob"][i, j]),
      )
  return result
