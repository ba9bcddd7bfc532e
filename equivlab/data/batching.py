"""Batching: per-epoch shuffles from a key, the last batch dropped or padded."""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks
from equivlab.data.transforms import check_key

__all__ = ["LAST_BATCH", "epoch_order", "iterate_batches", "num_batches"]

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
