"""Looking inside a trained image classifier, after Zeiler & Fergus.

Helpers of the studies that draw what a network learned (Zeiler & Fergus
2014, "Visualizing and understanding convolutional networks"): which test
digit to show, the activations of every convolution block, the predictions
for a digit moved left and right, and summaries of occlusion maps and of
searches for patches that change the prediction
(`equivlab.analysis.occlusion`, `equivlab.analysis.adversarial`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from equivlab import data
from equivlab.analysis import occlusion, probes, tables
from equivlab.nn import models


def pick_digit(labels: np.ndarray, predicted: np.ndarray, digit: int) -> int:
  """Index of the first image of class `digit`, preferring correct ones.

  Args:
    labels: `[N]` true classes.
    predicted: `[N]` predicted classes.
    digit: the class wanted.

  Returns:
    The index of the first correctly classified image of that class, else
    of the first image of that class.

  Raises:
    ValueError: if no image has that class.
  """
  matches = np.flatnonzero(labels == digit)
  if matches.size == 0:
    raise ValueError(f"no image of class {digit} among the test digits.")
  correct = matches[predicted[matches] == digit]
  return int(correct[0] if correct.size else matches[0])


def pick_image(predictions: list[np.ndarray], labels, digit: int) -> int:
  """The first test index of class `digit` that every model gets right.

  Raises:
    ValueError: if there is none.
  """
  right = labels == digit
  for predicted in predictions:
    right &= np.asarray(predicted) == digit
  if not right.any():
    raise ValueError(
      f"no test digit of class {digit} is classified correctly by every "
      "model; train longer or choose another --digit."
    )
  return int(np.flatnonzero(right)[0])


def conv_activations(
  model: models.CNN, variables: Any, image: np.ndarray
) -> list[np.ndarray]:
  """The ReLU outputs `[H_l, W_l, C_l]` of every conv block, before the pool.

  `model` is a `models.CNN` without normalisation, so the ReLU of each
  convolution's output (`probes.intermediates`) is its block's activation;
  `image` is `[H, W, C]`.
  """
  x = np.asarray(image, np.float32)[None]
  found = probes.intermediates(model, variables, x, train=False)
  names = sorted((n for n in found if n.startswith("Conv_")), key=layer_index)
  return [np.maximum(np.asarray(found[n][0]), 0) for n in names]


def layer_index(name: str) -> int:
  """The layer index of a flax name such as "Conv_2"."""
  return int(name.split("_")[-1])


def shifted_predictions(
  apply_fn, image: np.ndarray, shift: int
) -> tuple[list[dict], np.ndarray]:
  """Predictions for `image` `[H, W, C]` moved left by `shift`, not, right.

  Returns:
    Three records, "shift_px" (-shift, 0, shift), "predicted" and its
    "probability", and the three moved images `[3, H, W, C]`.
  """
  shifts = np.array([[0, -shift], [0, 0], [0, shift]], np.int32)
  moved = np.asarray(data.translate(np.repeat(image[None], 3, 0), shifts))
  probs = np.asarray(jax.nn.softmax(apply_fn(moved), axis=-1))
  return [
    {
      "shift_px": int(dx),
      "predicted": int(p.argmax()),
      "probability": float(p.max()),
    }
    for (_, dx), p in zip(shifts, probs, strict=True)
  ], moved


def occlusion_summary(maps: dict[str, Any], label: int) -> dict[str, Any]:
  """What an occlusion map of `occlusion.occlusion_maps` shows.

  Returns:
    "label", "clean_probability" (of the label, unoccluded),
    "min_true_probability" and "most_sensitive_centre" (the patch centre
    `[row, col]` where it is smallest), and "labels_in_map" (every
    predicted label the map shows).
  """
  true_prob = np.asarray(maps["true_prob"])
  row, col = np.unravel_index(np.argmin(true_prob), true_prob.shape)
  return {
    "label": label,
    "clean_probability": float(maps["clean_probs"][label]),
    "min_true_probability": float(true_prob.min()),
    "most_sensitive_centre": [int(row), int(col)],
    "labels_in_map": sorted(int(v) for v in np.unique(maps["label"])),
  }


def smallest_grey_sides(grey: dict[str, Any]) -> dict[int, int]:
  """Class -> the smallest grey side whose patch somewhere gives it."""
  sides: dict[int, int] = {}
  for size, labels in sorted(grey["labels"].items()):
    for label in labels:
      sides.setdefault(int(label), int(size))
  return sides


def patch_record(
  optimised: dict[int, dict[str, Any]], grey: dict[str, Any]
) -> dict[str, Any]:
  """The smallest patches that change a prediction, optimised and grey.

  Args:
    optimised: class -> `adversarial.smallest_patches`' result for it.
    grey: `occlusion.find_flipping_patch`'s grid search.

  Returns:
    "optimised" (class -> "found", "size", "row", "col", "probability",
    "steps", "tried" where present), "smallest_optimised" and
    "largest_optimised" (sides, None if none was found), "grey_search"
    (`grey`) and "grey_sides" (`smallest_grey_sides`).
  """
  keys = ("found", "size", "row", "col", "probability", "steps", "tried")
  kept = {t: {k: r[k] for k in keys if k in r} for t, r in optimised.items()}
  sides = [r["size"] for r in optimised.values() if r["found"]]
  return {
    "optimised": kept,
    "smallest_optimised": min(sides) if sides else None,
    "largest_optimised": max(sides) if sides else None,
    "grey_search": grey,
    "grey_sides": smallest_grey_sides(grey),
  }


def patch_table(
  records: dict[str, dict[str, Any]],
  digit: int,
  targets: Sequence[int],
  max_size: int,
) -> str:
  """Per model and patch kind, the smallest side that gives each class.

  Args:
    records: model name -> "test_accuracy" and a `patch_record`.
    digit: the class of the attacked digit.
    targets: the classes, one column each.
    max_size: the largest side tried.

  Returns:
    A Markdown table and its caption.
  """
  rows = []
  for name, record in records.items():
    optimised = {t: r.get("size") for t, r in record["optimised"].items()}
    for kind, sides, smallest in (
      ("optimised", optimised, record["smallest_optimised"]),
      ("grey", record["grey_sides"], record["grey_search"].get("size")),
    ):
      row = {
        "model": name,
        "test acc": f"{record['test_accuracy']:.4f}",
        "patch": kind,
        "any class": "-" if smallest is None else smallest,
      }
      for target in targets:
        side = sides.get(target)
        row[f"-> {target}"] = "-" if side is None else side
      rows.append(row)
  return tables.format_table(rows) + (
    f"\n(smallest side in pixels of a square patch that makes the model "
    f"call the {digit} each class; '-': none up to {max_size} px)"
  )


def flip_panels(
  image: np.ndarray, search: dict[str, Any], value: float, sizes
) -> tuple[np.ndarray, list[str]]:
  """The digit beside its flipping grey patch, for `viz.plot_images`.

  Args:
    image: `[H, W, C]`.
    search: `occlusion.find_flipping_patch`'s result for it.
    value: the patch's grey level.
    sizes: the sides the search tried.

  Returns:
    `(images [2, H, W, C], titles)`: the original and the patched digit
    (the original again when no patch flips it).
  """
  patched, caption = image, f"no patch of sizes\n{list(sizes)} flips it"
  if search["found"]:
    size, row, col = search["size"], search["row"], search["col"]
    patched = occlusion.occlude(image, row, col, size, value)
    caption = (
      f"{size}x{size} patch at ({row}, {col})\npredicted "
      f"{search['new_label']} (p={search['new_prob']:.3f})"
    )
  original = f"original\npredicted {search['clean_label']}"
  return np.stack([image, np.asarray(patched)]), [original, caption]


def summary(
  test_accuracy: float,
  shifted: list[dict[str, Any]],
  occluded: dict[str, Any],
  search: dict[str, Any],
) -> str:
  """Four lines: accuracy, the shifted digit's predictions, what occlusion
  does to the true-class probability, and the flip search's outcome.

  Args:
    test_accuracy: the model's test accuracy.
    shifted: `shifted_predictions`' records.
    occluded: an `occlusion_summary`.
    search: `occlusion.find_flipping_patch`'s result.
  """
  found = (
    f"found, {search['size']}x{search['size']} patch at ({search['row']}, "
    f"{search['col']}) -> {search['new_label']}"
    if search["found"]
    else "no flipping patch exists among the sizes tried"
  )
  moves = ", ".join(
    f"{s['shift_px']:+d}px -> {s['predicted']}" for s in shifted
  )
  return "\n".join(
    [
      f"test accuracy: {test_accuracy:.4f}",
      f"shifted digit: {moves}",
      f"occlusion: p(true) falls from {occluded['clean_probability']:.3f} to "
      f"{occluded['min_true_probability']:.3f} at centre "
      f"{occluded['most_sensitive_centre']}",
      f"flip search: {found}",
    ]
  )
