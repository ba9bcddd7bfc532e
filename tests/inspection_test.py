"""Tests of equivlab/analysis/inspection.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.analysis import inspection
from equivlab.nn import models


def test_conv_activations_against_a_convolution_by_hand():
  model = models.get_model("cnn", features=(2, 3))
  variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  image = np.asarray(
    jax.random.uniform(jax.random.key(1), (28, 28, 1)), np.float32
  )
  maps = inspection.conv_activations(model, variables, image)
  assert [m.shape for m in maps] == [(28, 28, 2), (14, 14, 3)]
  kernel = np.asarray(variables["params"]["Conv_0"]["kernel"])
  bias = np.asarray(variables["params"]["Conv_0"]["bias"])
  padded = np.pad(image[..., 0], 1)
  expected = np.zeros((28, 28, 2))
  for i in range(28):
    for j in range(28):
      window = padded[i : i + 3, j : j + 3]
      expected[i, j] = np.einsum("hw,hwo->o", window, kernel[:, :, 0]) + bias
  np.testing.assert_allclose(maps[0], np.maximum(expected, 0), atol=1e-5)


def test_shifted_predictions_by_hand():
  image = np.zeros((6, 6, 1), np.float32)
  image[2, 2] = 1.0

  def column_of_ink(x):  # Logit k: the ink in column k.
    return jnp.sum(x[..., 0], axis=1)

  records, moved = inspection.shifted_predictions(column_of_ink, image, 2)
  np.testing.assert_array_equal(moved[2, 2, 4], [1.0])
  assert [r["shift_px"] for r in records] == [-2, 0, 2]
  assert [r["predicted"] for r in records] == [0, 2, 4]
  p = np.exp(1) / (np.exp(1) + 5)
  assert records[1]["probability"] == pytest.approx(p, rel=1e-6)


def test_pick_digit_prefers_correct_predictions():
  labels = np.array([3, 6, 6, 1])
  predicted = np.array([3, 0, 6, 1])
  assert inspection.pick_digit(labels, predicted, 6) == 2
  assert inspection.pick_digit(labels, np.zeros(4, int), 6) == 1
  with pytest.raises(ValueError, match="no image of class 9"):
    inspection.pick_digit(labels, predicted, 9)


def test_pick_image_wants_every_model_right():
  labels = np.array([6, 6, 6, 1])
  assert inspection.pick_image([np.array([6, 6, 0, 1])], labels, 6) == 0
  predictions = [np.array([0, 6, 6, 1]), np.array([6, 0, 6, 1])]
  assert inspection.pick_image(predictions, labels, 6) == 2
  with pytest.raises(ValueError, match="no test digit of class 1 is"):
    inspection.pick_image([np.array([6, 6, 6, 0])], labels, 1)


def test_smallest_grey_sides_by_hand():
  grey = {"labels": {1: [], 3: [2], 5: [2, 7], 7: [4, 7]}}
  assert inspection.smallest_grey_sides(grey) == {2: 3, 7: 5, 4: 7}


def test_occlusion_summary_finds_the_most_sensitive_centre():
  maps = {
    "true_prob": np.array([[0.9, 0.2], [0.5, 0.7]]),
    "clean_probs": np.array([0.05, 0.95]),
    "label": np.array([[1, 0], [1, 1]]),
  }
  summary = inspection.occlusion_summary(maps, 1)
  assert summary["most_sensitive_centre"] == [0, 1]
  assert summary["min_true_probability"] == pytest.approx(0.2)
  assert summary["clean_probability"] == pytest.approx(0.95)
  assert summary["labels_in_map"] == [0, 1]


def test_layer_index_orders_flax_names_numerically():
  names = sorted(["Conv_10", "Conv_2", "Conv_0"], key=inspection.layer_index)
  assert names == ["Conv_0", "Conv_2", "Conv_10"]


def test_patch_record_and_table_by_hand():
  optimised = {
    1: {"found": True, "size": 4, "row": 2, "col": 3, "patched": None},
    2: {"found": True, "size": 7, "probability": 0.6},
    3: {"found": False, "tried": [1, 2]},
  }
  grey = {"size": 5, "labels": {5: [2], 9: [3]}}
  record = inspection.patch_record(optimised, grey)
  assert record["optimised"][1] == {
    "found": True,
    "size": 4,
    "row": 2,
    "col": 3,
  }
  assert (record["smallest_optimised"], record["largest_optimised"]) == (4, 7)
  assert record["grey_sides"] == {2: 5, 3: 9}
  table = inspection.patch_table(
    {"cnn": {"test_accuracy": 0.5, **record}}, 6, (1, 2, 3), 9
  )
  header, _, *rows = table.splitlines()
  cells = [[c.strip() for c in line.split("|")[1:-1]] for line in rows[:2]]
  assert [c.strip() for c in header.split("|")[1:-1]] == [
    "model", "test acc", "patch", "any class", "-> 1", "-> 2", "-> 3",
  ]  # fmt: skip
  optimised_row, grey_row = cells
  assert optimised_row[2:] == ["optimised", "4", "4", "7", "-"]
  assert grey_row[2:] == ["grey", "5", "-", "5", "9"]
  assert "call the 6 each class; '-': none up to 9 px" in table


def test_flip_panels_and_summary_by_hand():
  image = np.zeros((5, 5, 1), np.float32)
  search = dict(
    found=True, size=3, row=2, col=2, new_label=7, new_prob=0.75,
    clean_label=1,
  )  # fmt: skip
  panels, titles = inspection.flip_panels(image, search, 0.5, (3,))
  assert panels.shape == (2, 5, 5, 1) and panels[1].sum() == 9 * 0.5
  assert titles == [
    "original\npredicted 1",
    "3x3 patch at (2, 2)\npredicted 7 (p=0.750)",
  ]
  missed = {"found": False, "clean_label": 1}
  panels, titles = inspection.flip_panels(image, missed, 0.5, (1, 3))
  assert (
    panels[1].sum() == 0 and titles[1] == "no patch of sizes\n[1, 3] flips it"
  )
  text = inspection.summary(
    0.91234,
    [{"shift_px": -2, "predicted": 1}, {"shift_px": 2, "predicted": 7}],
    {
      "clean_probability": 0.9,
      "min_true_probability": 0.1,
      "most_sensitive_centre": [3, 4],
    },
    search,
  )
  assert text.splitlines() == [
    "test accuracy: 0.9123",
    "shifted digit: -2px -> 1, +2px -> 7",
    "occlusion: p(true) falls from 0.900 to 0.100 at centre [3, 4]",
    "flip search: found, 3x3 patch at (2, 2) -> 7",
  ]
