"""Tests of equivlab/analysis/invariance.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import groups
from equivlab.analysis import invariance


def test_rot90_invariance_by_hand():
  images = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)

  def invariant(x):  # Total ink and the centre pixel: rotation invariant.
    return jnp.stack([x.sum(axis=(1, 2, 3)), x[:, 1, 1, 0]], axis=-1)

  def corner(x):  # The top-left pixel and a constant.
    return jnp.stack([x[:, 0, 0, 0], jnp.ones(x.shape[0])], axis=-1)

  result = invariance.rot90_invariance(invariant, images)
  assert result == {"logit_change": 0.0, "pred_change": 0.0}
  result = invariance.rot90_invariance(corner, images)
  # Corners of image 1: 9, 11, 17, 15; turns 1, 2, 3 bring 11, 17, 15 to
  # the top-left. The largest move is 17 - 9 = 8 against max |f(x)| = 9.
  np.testing.assert_allclose(result["logit_change"], 8.0 / 9.0, rtol=1e-6)
  # argmax (c, 1): class 1 for image 0 before (0 < 1), class 0 after.
  assert result["pred_change"] == 0.5


def test_rejects_non_square_images():
  with pytest.raises(ValueError, match="square"):
    invariance.rot90_invariance(lambda x: x, np.zeros((1, 3, 4, 1)))


def test_mirror_flips_the_width_axis():
  images = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)
  np.testing.assert_array_equal(
    invariance.mirror(images), images[:, :, ::-1, :]
  )


def test_evaluate_by_hand():
  images = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)
  labels = np.array([1, 0])

  def corner(x):  # The top-left pixel and a constant.
    return jnp.stack([x[:, 0, 0, 0], jnp.ones(x.shape[0])], axis=-1)

  sets = {"upright": images, "mirrored": invariance.mirror(images)}
  out = invariance.evaluate(
    corner, sets, labels, images, confusion_sets=("mirrored",)
  )
  # Upright: corners 0 < 1 -> class 1 and 9 -> class 0, both right;
  # mirrored: corners 2 and 11 -> class 0, image 0 wrong.
  assert out["errors"] == {"upright": 0.0, "mirrored": 50.0}
  assert out["predictions"] == {"upright": [1, 0], "mirrored": [0, 0]}
  assert len(out["logit_change"]) == len(out["pred_change"]) == 8
  assert list(out["confusion"]) == ["mirrored"]
  assert np.asarray(out["confusion"]["mirrored"]).sum() == 2
  # Mirror: the corners move 0 -> 2 and 9 -> 11, against max |f(x)| = 9.
  np.testing.assert_allclose(
    out["logit_change"]["mirror"], 2.0 / 9.0, rtol=1e-6
  )


def test_lifted_panels_rotate_and_cycle_with_the_input():
  digit = np.asarray(
    jax.random.uniform(jax.random.key(0), (1, 9, 9, 1)), np.float32
  )
  variables, networks = invariance.equivariant_and_plain(
    jax.random.key(1), np.zeros((1, 28, 28, 1), np.float32), features=2
  )
  assert [n for n, _, _ in networks] == [
    "P4CNN",
    "plain CNN of the same layout",
  ]
  lifted_fn = invariance.lifting_fn(variables, "p4")
  images = np.concatenate(
    [groups.act_on_image(g, digit) for g in groups.elements("p4")]
  )
  lifted = np.asarray(lifted_fn(images))
  assert lifted.shape == (4, 7, 7, 2, 4)
  panels, titles = invariance.lifted_panels(images, lifted, 1, "p4")
  assert panels.shape == (4 * 5, 7, 7) and titles[5] == "input, rot 90"
  # Row 1 (input turned by 90): its map at index s is row 0's map at
  # index s - 1, turned by 90.
  np.testing.assert_allclose(
    panels[5 + 2], np.rot90(panels[0 + 1]), rtol=1e-5, atol=1e-5
  )


def _rotation_record(error, change, pred):
  return dict(
    params=5,
    test_error=error,
    rot90=dict(logit_change=change, pred_change=pred),
  )


def test_rotation_rows_and_table_by_hand():
  records = {
    "z2cnn": [_rotation_record(4.0, 0.5, 0.2), _rotation_record(6.0, 0.7, 0.4)],
    "p4cnn": [_rotation_record(2.0, 0.0, 0.0), _rotation_record(2.0, 0.0, 0.0)],
  }
  paper = {"z2cnn": 5.03, "p4cnn": 2.28}
  z2, p4 = invariance.rotation_rows(records, paper)
  assert z2["test error %"] == "5.00 +- 1.41" and z2["error_mean"] == 5.0
  assert z2["rot90 pred. changes"] == "0.300"
  assert p4["paper error %"] == "2.28"
  table, ratio = invariance.rotation_table([z2, p4], 2, 100, paper)
  assert ratio == pytest.approx(0.4)
  assert "error_mean" not in table and "on 100 test digits" in table
  assert table.endswith("= 0.400 (target <= 0.6; paper 0.453)")
  assert invariance.rotation_table([z2], 2, 100, paper)[1] is None


def _mirror_record(rotated, mirrored, change):
  names = invariance.P4M_ELEMENTS
  confusion = np.zeros((3, 3), int)
  confusion[2, 1] = 2
  return {
    "params": 7,
    "errors": {"rotated": rotated, "rotated+mirrored": mirrored},
    "logit_change": {e: change * (i >= 4) for i, e in enumerate(names)},
    "pred_change": {e: 0.5 * (i >= 4) for i, e in enumerate(names)},
    "confusion": {"rotated": confusion},
  }


def test_mirror_row_and_table_by_hand():
  assert invariance.P4M_ELEMENTS[0] == "identity"
  assert len(invariance.P4M_ELEMENTS) == 8
  records = [_mirror_record(2.0, 5.0, 0.1), _mirror_record(4.0, 5.0, 0.3)]
  sets = ("rotated", "rotated+mirrored")
  row = invariance.mirror_row("p4cnn", 9, records, sets, ("rotated",))
  assert row["rotated error %"] == "3.00 +- 1.41"
  assert row["mirror cost (points)"] == "+2.00 +- 1.41"
  assert row["stats"]["rotated+mirrored"] == (5.0, 0.0)
  assert row["pred. changes, mirrors"] == "0.500"
  assert row["mistakes"] == {"rotated": [(2, 1, 4)]}
  table = invariance.mirror_table([row], "rotated", 2, 50)
  assert "| p4cnn | 9        | 7      |" in table
  assert table.endswith("\n- p4cnn: rotated 2 -> 1: 4")
