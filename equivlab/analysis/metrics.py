"""Classification metrics of trained networks, one definition of each.

- `accuracy`, `error_percent`: how often the argmax of the logits is the
  label; `accuracy_under_shifts`: the accuracy as the inputs move.
- `nll`: the mean negative log-likelihood of predicted probabilities.
- `confusion_matrix`, `top_confusions`: which classes are taken for which.
- `mean_std`: mean and SAMPLE standard deviation over seeds, the one
  convention of every "mean +- std" table.
- `changed_fraction`: how many predictions two sets of logits disagree on.
- `logit_changes`, `prediction_changes`: how a network's output moves
  when its input is rotated (and mirrored) by the elements of p4 or p4m.

The invariance measure has one norm everywhere: for an element g::

    max |f(g x) - f(x)| / max |f(x)|

with the maxima over the whole batch and every logit
(`equivlab.testing.equivariance_error` with an invariant output). An
invariant network scores float rounding (about 1e-6 in float32).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from equivlab import data, groups, testing

__all__ = [
  "accuracy",
  "accuracy_under_shifts",
  "changed_fraction",
  "confusion_matrix",
  "error_percent",
  "logit_changes",
  "mean_std",
  "nll",
  "prediction_changes",
  "top_confusions",
]

LogitsFn = Callable[[np.ndarray], Any]


def _predictions(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  """(argmax of `logits [N, K]`, `labels [N]`), their shapes checked."""
  logits, labels = np.asarray(logits), np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
      f"logits must be [N, K] and labels [N], got shapes {logits.shape} "
      f"and {labels.shape}."
    )
  return np.argmax(logits, axis=-1), labels


def accuracy(logits: Any, labels: Any) -> float:
  """The fraction of rows whose argmax is the label, counted exactly.

  Args:
    logits: `[N, K]` logits (or probabilities: the argmax is the same).
    labels: int `[N]`.

  Returns:
    `(number right) / N`, a Python float.

  Raises:
    ValueError: if the shapes do not match.
  """
  predicted, labels = _predictions(logits, labels)
  right = predicted == labels
  return int(right.sum()) / max(right.size, 1)


def accuracy_under_shifts(
  logits_fn: LogitsFn, images: Any, labels: Any, max_shift: int
) -> list[float]:
  """Accuracy on the images shifted by up to k pixels, k = 0..max_shift.

  Shift k moves each image by its own `(dy, dx)`, uniform in `-k..k`
  (`equivlab.data.random_shift` with the key `fold_in(key(0), k)`, so the
  shifts are the same on every call), filling the border with zeros.

  Args:
    logits_fn: images `[N, H, W, C]` -> logits `[N, K]`.
    images: `[N, H, W, C]`.
    labels: int `[N]`.
    max_shift: the largest k, an int >= 0 that fits the images.

  Returns:
    `max_shift + 1` accuracies; the first is the unshifted one.

  Raises:
    ValueError: for a `max_shift` the images cannot take, or mismatched
      shapes.
  """
  key = jax.random.key(0)
  return [
    accuracy(
      logits_fn(data.random_shift(jax.random.fold_in(key, k), images, k)),
      labels,
    )
    for k in range(max_shift + 1)
  ]


def error_percent(logits: Any, labels: Any) -> float:
  """The percentage of rows whose argmax is not the label (see `accuracy`)."""
  predicted, labels = _predictions(logits, labels)
  return float(100.0 * np.mean(predicted != labels))


def nll(probs: Any, labels: Any) -> float:
  """Mean negative log-likelihood (nats) of the true labels' probabilities.

  Args:
    probs: `[N, K]` predicted probabilities (rows summing to 1).
    labels: int `[N]`.

  Returns:
    `-mean(log probs[n, labels[n]])`, probabilities floored at 1e-300.

  Raises:
    ValueError: if the shapes do not match.
  """
  _, labels = _predictions(probs, labels)
  probs = np.asarray(probs, np.float64)
  picked = probs[np.arange(len(labels)), labels]
  return float(-np.mean(np.log(np.maximum(picked, 1e-300))))


def changed_fraction(before: Any, after: Any) -> float:
  """The fraction of rows whose argmax differs between two `[N, K]` logits.

  Raises:
    ValueError: if the shapes differ or are not `[N, K]`.
  """
  before, after = np.asarray(before), np.asarray(after)
  if before.ndim != 2 or before.shape != after.shape:
    raise ValueError(
      f"before and after must be logits [N, K] of one shape, got "
      f"{before.shape} and {after.shape}."
    )
  return float(np.mean(before.argmax(-1) != after.argmax(-1)))


def confusion_matrix(
  logits: Any, labels: Any, num_classes: int | None = None
) -> np.ndarray:
  """Counts `[K, K]`: row = true label, column = predicted class.

  Args:
    logits: `[N, K]`.
    labels: int `[N]` in `[0, num_classes)`.
    num_classes: K; None for the width of `logits`.

  Raises:
    ValueError: for mismatched shapes or labels outside `[0, K)`.
  """
  predicted, labels = _predictions(logits, labels)
  size = np.asarray(logits).shape[-1] if num_classes is None else num_classes
  if labels.size and (labels.min() < 0 or labels.max() >= size):
    raise ValueError(
      f"labels must lie in [0, {size}), got values in "
      f"[{labels.min()}, {labels.max()}]."
    )
  counts = np.zeros((size, size), np.int64)
  np.add.at(counts, (labels, predicted), 1)
  return counts


def top_confusions(counts: Any, k: int = 3) -> list[tuple[int, int, int]]:
  """The `k` most frequent `(true, predicted, count)` off the diagonal.

  Largest count first (ties: smaller true label, then smaller predicted
  class); pairs never confused are left out.

  Args:
    counts: a confusion matrix `[K, K]` (`confusion_matrix`).
    k: how many to return.
  """
  counts = np.asarray(counts)
  pairs = [
    (int(counts[t, p]), t, p)
    for t in range(len(counts))
    for p in range(len(counts))
    if t != p and counts[t, p] > 0
  ]
  pairs.sort(key=lambda c: (-c[0], c[1], c[2]))
  return [(t, p, n) for n, t, p in pairs[:k]]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and SAMPLE standard deviation (ddof=1; 0 for a single value).

  Raises:
    ValueError: for no values.
  """
  values = np.asarray(values, np.float64)
  if values.size == 0:
    raise ValueError("mean_std needs at least one value, got none.")
  std = float(values.std(ddof=1)) if values.size > 1 else 0.0
  return float(values.mean()), std


def logit_changes(
  logits_fn: LogitsFn,
  images: np.ndarray,
  *,
  group: str = "p4",
  elements: Sequence[Any] | None = None,
) -> dict[str, float]:
  """Per element g, `max |f(g x) - f(x)| / max |f(x)|` over the batch.

  Args:
    logits_fn: images `[N, H, W, C]` -> logits `[N, K]`.
    images: square `[N, H, H, C]`.
    group: "p4" (rotations by 90 degrees) or "p4m" (and mirrors).
    elements: None for every non-identity element of `group`, or elements
      as `equivlab.testing.resolve_elements` takes them (flat indices,
      names such as "rot 90").

  Returns:
    Element name ("rot 90", "mirror then rot 90", ...) -> relative change.

  Raises:
    ValueError: for images that are not square `[N, H, H, C]`, or an
      unknown group or element.
  """
  return testing.equivariance_error(
    logits_fn,
    _square(images),
    group=group,
    input="image",
    output="invariant",
    elements=elements,
  )


def prediction_changes(
  logits_fn: LogitsFn,
  images: np.ndarray,
  *,
  group: str = "p4",
  elements: Sequence[Any] | None = None,
) -> dict[str, float]:
  """Per element g, the fraction of images with `argmax f(g x) != argmax f(x)`.

  Args:
    logits_fn: images `[N, H, W, C]` -> logits `[N, K]`.
    images: square `[N, H, H, C]`.
    group: "p4" or "p4m".
    elements: as in `logit_changes`.

  Returns:
    Element name -> fraction of images whose predicted class changes (0.0
    for the identity).

  Raises:
    ValueError: as `logit_changes`.
  """
  images = _square(images)
  base = logits_fn(images)
  return {
    testing.element_name(g): changed_fraction(
      base, logits_fn(np.asarray(groups.act_on_image(g, images)))
    )
    for g in testing.resolve_elements(group, elements)
  }


def _square(images: Any) -> np.ndarray:
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1] != images.shape[2]:
    raise ValueError(
      f"images must be square [N, H, H, C], got shape {images.shape}."
    )
  return images
