"""How a trained classifier's answers survive rotations and mirrors.

A p4m-invariant network (Cohen & Welling 2016, "Group equivariant
convolutional networks") keeps its logits under all 8 roto-reflections by
construction; a p4 network under the 4 rotations only. `evaluate` scores a
classifier on named test sets of the same digits (e.g. upright, mirrored,
rotated) and measures, on probe digits, the relative logit change
`max |f(g x) - f(x)| / max |f(x)|` and the fraction of changed predictions
under each group element (`equivlab.analysis.metrics`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from equivlab import groups
from equivlab.analysis import metrics

LogitsFn = Callable[[Any], Any]

# The left-right mirror (a flip of the W axis), as p4m defines it.
MIRROR = groups.Element(rotation=0, mirror=1)


def mirror(images: np.ndarray) -> np.ndarray:
  """Images `[N, H, W, C]` mirrored left-right (p4m's element "mirror")."""
  return np.asarray(groups.act_on_image(MIRROR, np.asarray(images)))


def rot90_invariance(logits_fn: LogitsFn, images: np.ndarray) -> dict:
  """Invariance to the turns by 90, 180 and 270 degrees.

  Args:
    logits_fn: images `[N, H, W, C]` (square) -> logits `[N, K]`.
    images: the probe digits.

  Returns:
    "logit_change": the largest relative logit change over the turns
    (`metrics.logit_changes`); "pred_change": the mean fraction of images
    whose predicted class changes.
  """
  changes = metrics.prediction_changes(logits_fn, images)
  return {
    "logit_change": max(metrics.logit_changes(logits_fn, images).values()),
    "pred_change": float(np.mean(list(changes.values()))),
  }


def evaluate(
  logits_fn: LogitsFn,
  sets: Mapping[str, np.ndarray],
  labels: np.ndarray,
  probe: np.ndarray,
  *,
  group: str = "p4m",
  confusion_sets: Sequence[str] = (),
  num_predictions: int = 8,
) -> dict[str, Any]:
  """A classifier's errors on test sets and its changes per group element.

  Args:
    logits_fn: images `[N, H, W, C]` -> logits `[N, K]`.
    sets: name -> images `[N, H, W, C]`, all with the labels `labels`.
    labels: int `[N]`.
    probe: the images the changes per element are measured on.
    group: "p4" or "p4m"; every element of it is measured.
    confusion_sets: the sets whose confusion matrices are kept.
    num_predictions: the predicted classes kept of each set's first images.

  Returns:
    "errors" (set -> error in percent), "logit_change" and "pred_change"
    (element name -> relative logit change, fraction of changed
    predictions), "confusion" (set of `confusion_sets` -> `[K, K]` counts)
    and "predictions" (set -> the first `num_predictions` classes).
  """
  logits = {key: logits_fn(images) for key, images in sets.items()}
  every = list(range(groups.group_order(group)))
  return {
    "errors": {k: metrics.error_percent(v, labels) for k, v in logits.items()},
    "logit_change": metrics.logit_changes(
      logits_fn, probe, group=group, elements=every
    ),
    "pred_change": metrics.prediction_changes(
      logits_fn, probe, group=group, elements=every
    ),
    "confusion": {
      k: metrics.confusion_matrix(logits[k], labels) for k in confusion_sets
    },
    "predictions": {
      k: np.argmax(v[:num_predictions], -1).tolist() for k, v in logits.items()
    },
  }
