"""How a trained classifier's answers survive rotations and mirrors.

A p4m-invariant network (Cohen & Welling 2016, "Group equivariant
convolutional networks") keeps its logits under all 8 roto-reflections by
construction; a p4 network under the 4 rotations only. `evaluate` scores a
classifier on named test sets of the same digits (e.g. upright, mirrored,
rotated) and measures, on probe digits, the relative logit change
`max |f(g x) - f(x)| / max |f(x)|` and the fraction of changed predictions
under each group element (`equivlab.analysis.metrics`). For a demo on
untrained networks it builds a P4CNN beside a plain CNN of its layout, its
lifting layer alone, and the panels that show how lifted maps turn and
cycle along the group axis as the input turns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from equivlab import gconv, groups
from equivlab.analysis import metrics, tables
from equivlab.nn import layers, models
from equivlab.testing.equivariance import element_name

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


_LIFTING = {"p4": gconv.lifting_conv, "p4m": gconv.lifting_conv_p4m}


def equivariant_and_plain(
  key: jax.Array, images: jax.Array, *, features: int, group: str = "p4"
) -> tuple[Any, list[tuple[str, Callable, int]]]:
  """An untrained `layers.P4CNN` and a `models.PlainCNN` of its layout.

  The plain CNN has `features * |G|` channels per layer, the P4CNN
  `features` G-channels: the same layout without the symmetry.

  Args:
    key: split in two, one key per network.
    images: `[N, 28, 28, C]` example inputs for the initialisation.
    features: G-channels per hidden layer of the P4CNN.
    group: "p4" or "p4m".

  Returns:
    `(p4cnn_variables, [(name, jitted logits fn, number of parameters)])`,
    the P4CNN ("P4CNN" or "P4MCNN") first.
  """
  keys = jax.random.split(key)
  nets = {
    {"p4": "P4CNN", "p4m": "P4MCNN"}[group]: layers.P4CNN(
      features=features, group=group
    ),
    "plain CNN of the same layout": models.PlainCNN(
      features=features * groups.group_order(group)
    ),
  }
  variables = [
    jax.jit(model.init)(k, images)
    for model, k in zip(nets.values(), keys, strict=True)
  ]
  return variables[0], [
    (name, jax.jit(functools.partial(model.apply, v)), models.count_params(v))
    for (name, model), v in zip(nets.items(), variables, strict=True)
  ]


def lifting_fn(variables: Any, group: str = "p4") -> Callable:
  """The first layer of a `layers.P4CNN` (lifting conv + bias), jitted.

  Returns:
    images `[N, H, W, C]` -> lifted maps `[N, H - 2, W - 2, F, |G|]`.
  """
  lift = variables["params"]["LiftingConv_0"]
  lifting = _LIFTING[group]

  @jax.jit
  def lifted(x):
    out = lifting(x, lift["kernel"], padding="VALID")
    return out + lift["bias"].reshape(1, 1, 1, -1, 1)

  return lifted


def lifted_panels(
  images: np.ndarray, lifted: np.ndarray, channel: int, group: str
) -> tuple[np.ndarray, list[str]]:
  """Each transformed image beside its lifted maps, for `viz.plot_images`.

  The maps share one grey scale, mid-grey at 0, so a map and its rotated
  copy in another row look the same.

  Args:
    images: `[|G|, H, W, 1]`, image g is element g's transform.
    lifted: `[|G|, H - 2, W - 2, F, |G|]` their lifted maps (VALID).
    channel: the G-channel drawn.
    group: "p4" or "p4m".

  Returns:
    `(panels [|G| * (|G| + 1), H - 2, W - 2], titles)`, row by row.
  """
  order = lifted.shape[-1]
  maps = np.asarray(lifted[..., channel, :], np.float64)
  scale = 2 * float(np.max(np.abs(maps))) or 1.0
  panels, titles = [], []
  for i, g in enumerate(groups.elements(group)):
    name = f"rot {90 * g.rotation}" + (" + mirror" if g.mirror else "")
    # The image cropped to the VALID lifted maps' size.
    panels.append(images[i, 1:-1, 1:-1, 0])
    titles.append(f"input, {name}")
    for s in range(order):
      panels.append(0.5 + maps[i, ..., s] / scale)
      titles.append(f"group index {s}")
  return np.stack(panels), titles


def rotation_rows(
  records: dict[str, list[dict]], paper_error: Mapping[str, float]
) -> list[dict]:
  """One row per model from its per-seed records, for `rotation_table`.

  Args:
    records: model -> per seed "params", "test_error" (percent) and
      "rot90" (`rot90_invariance`).
    paper_error: model -> a published test error in percent, shown beside.

  Returns:
    Rows with the table's cells and "error_mean", "error_std" (sample std
    over seeds).
  """
  rows = []
  for name, mine in records.items():
    mean, std = metrics.mean_std([r["test_error"] for r in mine])
    change = max(r["rot90"]["logit_change"] for r in mine)
    paper = paper_error.get(name)
    rows.append(
      {
        "model": name,
        "params": mine[0]["params"],
        "test error %": f"{mean:.2f} +- {std:.2f}",
        "rot90 logit change": tables.format_error(change),
        "rot90 pred. changes": "{:.3f}".format(
          np.mean([r["rot90"]["pred_change"] for r in mine])
        ),
        "paper error %": "-" if paper is None else f"{paper:.2f}",
        "error_mean": mean,
        "error_std": std,
      }
    )
  return rows


def rotation_table(
  rows: list[dict],
  num_seeds: int,
  num_invariance: int,
  paper_error: Mapping[str, float],
) -> tuple[str, float | None]:
  """The Markdown table of `rotation_rows`, and P4CNN error / Z2CNN error.

  Returns:
    `(table, ratio)`; the ratio (and its line in the table) only when both
    "p4cnn" and "z2cnn" ran.
  """
  columns = [c for c in rows[0] if c not in ("error_mean", "error_std")]
  table = tables.format_table(rows, columns) + (
    f"\n(test error: mean +- sample standard deviation over {num_seeds} "
    f"seeds; logit change: max|f(gx) - f(x)| / max|f(x)| on "
    f"{num_invariance} test digits)"
  )
  error = {r["model"]: r["error_mean"] for r in rows}
  if "p4cnn" not in error or "z2cnn" not in error:
    return table, None
  ratio = error["p4cnn"] / max(error["z2cnn"], 1e-12)
  paper = paper_error["p4cnn"] / paper_error["z2cnn"]
  table += (
    f"\nP4CNN error / Z2CNN error = {ratio:.3f} "
    f"(target <= 0.6; paper {paper:.3f})"
  )
  return table, ratio


# The 8 roto-reflections of p4m, by flat index (0..3 rotations, 4..7
# "mirror then rotate"); names as `testing.element_name` writes them.
P4M_ELEMENTS = tuple(element_name(g) for g in groups.elements("p4m"))


def mirror_row(
  name: str,
  features: int,
  records: Sequence[dict],
  test_sets: Sequence[str],
  mistake_sets: Sequence[str],
) -> dict[str, Any]:
  """One model's table row over seeds, from its `evaluate` records.

  Args:
    name: the model.
    features: its width.
    records: one per seed: "params" and `evaluate`'s result with p4m's
      elements, on test sets that include "rotated" and
      "rotated+mirrored" (the same digits and angles, mirrored).
    test_sets: the sets with an error column, in order.
    mistake_sets: the sets whose most frequent mistakes are listed.

  Returns:
    The table's cells (errors as mean +- sample std, the mirror cost
    rotated+mirrored - rotated, the largest logit change over the rot90s
    and over the mirrors, the mirrors' mean prediction changes), "stats"
    (set -> (mean, std) of the error) and "mistakes" (set -> the most
    frequent (true, predicted, count), summed over seeds).
  """
  row = {"model": name, "features": features, "params": records[0]["params"]}
  stats = {}
  for key in test_sets:
    mean, std = metrics.mean_std([r["errors"][key] for r in records])
    row[f"{key} error %"] = f"{mean:.2f} +- {std:.2f}"
    stats[key] = (mean, std)
  errors = [r["errors"] for r in records]
  cost = [e["rotated+mirrored"] - e["rotated"] for e in errors]
  mean, std = metrics.mean_std(cost)
  row["mirror cost (points)"] = f"{mean:+.2f} +- {std:.2f}"
  rotations, mirrors = P4M_ELEMENTS[1:4], P4M_ELEMENTS[4:]
  for label, names in (("rot90s", rotations), ("mirrors", mirrors)):
    largest = max(r["logit_change"][e] for r in records for e in names)
    row[f"logit change, {label}"] = tables.format_error(largest)
  row["pred. changes, mirrors"] = "{:.3f}".format(
    np.mean([r["pred_change"][e] for r in records for e in mirrors])
  )
  mistakes = {
    key: metrics.top_confusions(
      sum(np.asarray(r["confusion"][key]) for r in records)
    )
    for key in mistake_sets
  }
  return {**row, "stats": stats, "mistakes": mistakes}


def mirror_table(
  rows: list[dict], train_set: str, num_seeds: int, num_invariance: int
) -> str:
  """The Markdown table of `mirror_row` rows and each model's top mistakes."""
  columns = [c for c in rows[0] if c not in ("stats", "mistakes")]
  table = tables.format_table(rows, columns) + (
    f"\n(trained on {train_set} digits; errors: mean +- sample "
    f"standard deviation over {num_seeds} seeds; mirror cost: "
    f"rotated+mirrored error - rotated error, the same digits and angles; "
    f"logit change: largest max|f(gx) - f(x)| / max|f(x)| over the "
    f"elements and seeds, on {num_invariance} "
    f"{train_set} test digits; pred. changes: fraction of those "
    f"digits whose class changes, mean over the 4 mirror elements)"
  )
  table += "\nMost frequent mistakes (true -> predicted: count over seeds):"
  for row in rows:
    table += f"\n- {row['model']}: " + "; ".join(
      f"{key} " + ", ".join(f"{t} -> {p}: {n}" for t, p, n in mistakes)
      for key, mistakes in row["mistakes"].items()
    )
  return table
