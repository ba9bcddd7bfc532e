"""Data sets by name: the embedded digits, their variants, and tfds sets.

`load_dataset(name, split)` gives whole splits as numpy arrays: the
embedded digits, variants derived from them with fixed seeds
("embedded_shift<k>", "embedded_rot", "embedded_rot90"), and any
tensorflow-datasets name read through `tfds.data_source` (array_record, no
TensorFlow; `equivlab.data.tfds_reader`). A tfds set that is not prepared
fails at once, never in tfds's offline retry loop.
"""

import functools
import math
import os
import re

import jax
import numpy as np

from equivlab.data.embedded import embedded_digits
from equivlab.data.transforms import (
  largest_random_shift,
  random_rot90,
  random_shift,
  rotate,
)

__all__ = ["DEFAULT_MAX_SHIFT", "EMBEDDED_IMAGE_SIZE", "load_dataset"]


def _random_rotate_full_circle(key: jax.Array, images: jax.Array):
  """mnist-rot: angles uniform in [0, 2 pi)."""
  angles = jax.random.uniform(key, (images.shape[0],), maxval=2 * math.pi)
  return rotate(images, angles)


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
def _derived_split(name: str, split: str):
  """A derived embedded split, computed once per process (read-only).

  The runs of a study each load the same rotated or shifted digits; the
  transform (about a second on a CPU) need not run for every one of them.
  """
  transform = _derived_transform(name, *_DERIVED.match(name).groups())
  images, labels = embedded_digits(split)
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

  The names:

  - "embedded": `embedded_digits` (4,000 train / 1,000 test real MNIST).
  - "embedded_shift" or "embedded_shift<k>" (e.g. "embedded_shift6"): every
    digit moved by up to k pixels along each axis (a test of translation
    invariance; k defaults to `DEFAULT_MAX_SHIFT` and is at most 13, see
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
      ~/tensorflow_datasets); the embedded sets ship inside the package
      and do not read it.
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
      return embedded_digits(split)
    images, labels = _derived_split(name, split)
    return images.copy(), labels.copy()
  if name.startswith("embedded"):
    raise ValueError(
      f"unknown embedded data set {name!r}: expected 'embedded', "
      "'embedded_shift', 'embedded_shift<k>', 'embedded_rot' or "
      "'embedded_rot90'."
    )
  from equivlab.data import tfds_reader  # noqa: PLC0415 (imports tfds: slow)

  return tfds_reader.load_tfds(
    name, split, data_dir=data_dir, download=bool(download)
  )
