"""Occlusion sensitivity: what a classifier sees, by covering parts of a digit.

After Zeiler & Fergus 2014, "Visualizing and Understanding Convolutional
Networks": slide a grey square over
an image and record, for every patch position, (a) the probability of the
true class, (b) the highest probability and (c) the predicted label; then
search over patch positions and sizes for a patch that changes the
prediction. Occluded images are built with a mask from traced positions and
sizes, so a whole grid of them comes from one `jax.vmap`; the classifier
sees them in batches of one size (the last padded), so a jitted `apply_fn`
compiles once however many positions and sizes are tried. A patch whose
content is optimised by gradient instead of grey is
`equivlab.analysis.adversarial`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks

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

  Raises:
    ValueError: if `image` is not `[H, W, C]`, or a concrete centre lies
      outside the image or a concrete `size` outside `0..max(H, W)`.
    TypeError: for non-integer positions or sizes.
  """
  checks.check_rank("image", image, 3, "one image [H, W, C]")
  h, w = image.shape[:2]
  checks.check_index("row", row, h, "rows")
  checks.check_index("col", col, w, "columns")
  side = checks.concrete_int("size", size)
  if side is not None and not 0 <= side <= max(h, w):
    raise ValueError(
      f"size must be in [0, {max(h, w)}] for a {h}x{w} image, got {side}."
    )
  top = row - size // 2
  left = col - size // 2
  rows = jnp.arange(h)[:, None]
  cols = jnp.arange(w)[None, :]
  inside = (rows >= top) & (rows < top + size)
  inside = inside & (cols >= left) & (cols < left + size)
  return jnp.where(inside[:, :, None], jnp.asarray(value, image.dtype), image)


def check_image(image: Any) -> jax.Array:
  """`image` as float32 `[H, W, C]`, or a clear error.

  Integer images are converted as `jnp` would promote them; anything that
  is not a real-valued array is refused.

  Raises:
    ValueError: if it is not one image `[H, W, C]` or is empty.
    TypeError: if it is not a real-valued array.
  """
  checks.check_rank("image", image, 3, "one image [H, W, C]")
  dtype = getattr(image, "dtype", None)
  dtype = np.asarray(image).dtype if dtype is None else dtype
  if not (
    jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer)
  ):
    raise TypeError(f"image must be a real-valued array, got dtype {dtype}.")
  if 0 in np.shape(image):
    raise ValueError(f"image must not be empty, got shape {np.shape(image)}.")
  return jnp.asarray(image, jnp.float32)


def _check_options(image, label, patch_size, stride, value, batch_size):
  h, w = np.shape(image)[:2]
  checks.check_int("patch_size", patch_size, minimum=1, maximum=max(h, w))
  checks.check_int("stride", stride, minimum=1)
  checks.check_int("label", label, minimum=0)
  checks.check_number("value", value)
  checks.check_int("batch_size", batch_size, minimum=1)


def _check_label(apply_fn, image, label, stride, batch_size) -> None:
  """`label` against the K of `apply_fn`'s logits, before any compute.

  The logits' shape comes from `jax.eval_shape` at the batch shape the
  search will use, so a jitted `apply_fn` traces no other shape.
  """
  rows, _ = _centres(image.shape[0], image.shape[1], stride)
  batch = min(batch_size, rows.size + 1)
  spec = jax.ShapeDtypeStruct((batch, *image.shape), image.dtype)
  try:
    shape = jax.eval_shape(apply_fn, spec).shape
  except Exception:  # noqa: BLE001 (the model's own error comes later)
    return
  if len(shape) == 2 and shape[0] == batch:
    checks.check_int("label", label, minimum=0, maximum=shape[1] - 1)


def check_apply_fn(apply_fn: Any) -> None:
  """Raises TypeError unless `apply_fn` is callable."""
  if not callable(apply_fn):
    raise TypeError(
      "apply_fn must be a function from images [B, H, W, C] to logits "
      f"[B, K], got {apply_fn!r}."
    )


def _centres(h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
  rows, cols = np.meshgrid(
    np.arange(0, h, stride), np.arange(0, w, stride), indexing="ij"
  )
  return rows, cols


def probabilities(
  apply_fn: ApplyFn, images: jax.Array, batch_size: int
) -> jax.Array:
  """Softmax of `apply_fn` over `images` `[P, H, W, C]`, batch by batch.

  Every call of `apply_fn` sees `min(batch_size, P)` images: the last batch
  is padded with copies of the first image and the padding dropped, so a
  jitted `apply_fn` compiles once for any `P` (as `models.apply_in_batches`
  does for a module).

  Returns:
    `[P, K]` probabilities.

  Raises:
    ValueError: if `images` is not `[P, H, W, C]` with P >= 1,
      `batch_size` is not an int >= 1, `apply_fn` does not return logits
      `[B, K]` for a batch of B images, or returns non-finite logits.
  """
  checks.check_rank("images", images, 4, "images [P, H, W, C]")
  checks.check_int("batch_size", batch_size, minimum=1)
  if not np.shape(images)[0]:
    raise ValueError("images must hold at least one image, got none.")
  n = images.shape[0]
  size = min(batch_size, n)
  chunks = []
  for start in range(0, n, size):
    chunk = images[start : start + size]
    rows = chunk.shape[0]
    if rows < size:
      fill = jnp.broadcast_to(images[:1], (size - rows, *images.shape[1:]))
      chunk = jnp.concatenate([chunk, fill])
    logits = apply_fn(chunk)
    if np.ndim(logits) != 2 or np.shape(logits)[0] != size:
      raise ValueError(
        f"apply_fn must map images [{size}, H, W, C] to logits [{size}, K], "
        f"got shape {np.shape(logits)}."
      )
    chunks.append(jax.nn.softmax(logits[:rows], axis=-1))
  probs = jnp.concatenate(chunks, axis=0)
  if not bool(jnp.all(jnp.isfinite(probs))):
    raise ValueError("apply_fn returned non-finite logits (NaN or inf).")
  return probs


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
  """Occlusion sensitivity maps of one image (Zeiler & Fergus 2014).

  Args:
    apply_fn: images `[B, H, W, C]` -> logits `[B, K]`, e.g.
      `jax.jit(lambda x: model.apply(variables, x, train=False))`; it is
      called on batches of one size only.
    image: `[H, W, C]`.
    label: the true class.
    patch_size: side of the grey square.
    stride: distance between patch centres; maps have
      `ceil(H / stride) x ceil(W / stride)` entries.
    value: grey level of the patch.
    batch_size: images per call of `apply_fn`.

  Returns:
    A dict of maps `[H', W']` indexed by patch centre: "true_prob" (the
    probability of `label`), "top_prob" (the highest probability), "label"
    (the predicted class, int32); plus "clean_probs" `[K]`, the
    probabilities of the unoccluded image.

  Raises:
    ValueError: for an image that is not `[H, W, C]`, a patch size outside
      1..max(H, W), a stride or batch size below 1, a non-finite value, a
      label outside 0..K-1, or an `apply_fn` that does not return finite
      logits `[B, K]`.
    TypeError: for arguments of the wrong kind (a float patch size, an
      `apply_fn` that is not callable, an image of strings).
  """
  check_apply_fn(apply_fn)
  image = check_image(image)
  _check_options(image, label, patch_size, stride, value, batch_size)
  _check_label(apply_fn, image, label, stride, batch_size)
  rows, cols = _centres(image.shape[0], image.shape[1], stride)
  occluded = jax.vmap(occlude, in_axes=(None, 0, 0, None, None))(
    image,
    jnp.asarray(rows.ravel()),
    jnp.asarray(cols.ravel()),
    patch_size,
    value,
  )
  # The clean image rides in the same batches: no call of another shape.
  probs = probabilities(
    apply_fn, jnp.concatenate([image[None], occluded]), batch_size
  )
  clean, probs = probs[0], probs[1:]
  checks.check_int("label", label, minimum=0, maximum=clean.shape[0] - 1)
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

  Whether such a patch exists is answered here exhaustively, over the grid
  of centres (every `stride` pixels) and `sizes`.

  Args:
    apply_fn: images `[B, H, W, C]` -> logits `[B, K]`.
    image: `[H, W, C]`, which the model should classify as `label`.
    label: the true class.
    sizes: patch sides to try, each in 1..max(H, W).
    stride: distance between patch centres.
    value: grey level of the patch.
    batch_size: images per call of `apply_fn`.

  Returns:
    A dict: "found" (bool), and when found the smallest flipping "size",
    the "row" and "col" of the centre where the true-class probability is
    lowest at that size, the "new_label" predicted there and its
    "new_prob"; "flip_fraction" maps each size to the fraction of positions
    whose patch flips the prediction, and "labels" each size to the sorted
    classes other than `label` that some position's patch makes the
    prediction; "clean_label" is the prediction on the unoccluded image.

  Raises:
    ValueError / TypeError: as `occlusion_maps`, checked for every size
      before any is tried; also for no sizes.
  """
  check_apply_fn(apply_fn)
  image = check_image(image)
  checks.check_ints("sizes", sizes, minimum=1)
  for size in sizes:
    _check_options(image, label, size, stride, value, batch_size)
  _check_label(apply_fn, image, label, stride, batch_size)
  result: dict[str, Any] = {"found": False, "flip_fraction": {}, "labels": {}}
  for size in sorted(set(int(s) for s in sizes)):
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
    predicted = np.asarray(maps["label"])
    flipped = predicted != int(label)
    result["flip_fraction"][size] = float(flipped.mean())
    result["labels"][size] = sorted(
      int(k) for k in np.unique(predicted[flipped])
    )
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
