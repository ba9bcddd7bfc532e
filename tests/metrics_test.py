"""Tests of equivlab.analysis.metrics, on hand-computed cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.analysis import metrics


def test_accuracy_and_error_percent_by_hand():
  logits = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
  labels = np.array([1, 1, 1, 0])
  assert metrics.accuracy(logits, labels) == 0.75
  assert metrics.error_percent(logits, labels) == 25.0
  # Counted exactly: 2 of 3 is 2/3 as a Python float, not a float32 mean.
  assert metrics.accuracy(logits[:3], np.array([1, 0, 0])) == 2 / 3


def test_nll_by_hand():
  probs = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
  want = -(math.log(0.5) + math.log(0.1) + math.log(0.8)) / 3
  assert metrics.nll(probs, np.array([0, 1, 1])) == pytest.approx(want)
  # A zero probability is floored, not an infinite loss.
  assert metrics.nll(np.array([[1.0, 0.0]]), np.array([1])) == pytest.approx(
    300 * math.log(10)
  )


@pytest.mark.parametrize(
  "fn", [metrics.accuracy, metrics.error_percent, metrics.nll]
)
def test_mismatched_shapes_are_clear_errors(fn):
  with pytest.raises(ValueError, match=r"logits must be \[N, K\]"):
    fn(np.zeros((3, 2)), np.zeros(4, int))
  with pytest.raises(ValueError, match=r"got shapes \(3,\)"):
    fn(np.zeros(3), np.zeros(3, int))


def test_changed_fraction_by_hand():
  before = np.array([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
  after = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0], [0.0, 1.0]])
  assert metrics.changed_fraction(before, after) == 0.5
  assert metrics.changed_fraction(before, before) == 0.0
  with pytest.raises(ValueError, match="of one shape"):
    metrics.changed_fraction(before, after[:3])


def test_confusion_matrix_and_top_confusions_by_hand():
  labels = np.array([0, 0, 1, 2, 2, 2])
  predicted = np.array([0, 1, 1, 1, 0, 1])
  logits = np.eye(3)[predicted]
  want = np.array([[1, 1, 0], [0, 1, 0], [1, 2, 0]])
  np.testing.assert_array_equal(metrics.confusion_matrix(logits, labels), want)
  # 2 -> 1 twice; then the ties 0 -> 1 and 2 -> 0 by true label.
  assert metrics.top_confusions(want) == [(2, 1, 2), (0, 1, 1), (2, 0, 1)]
  assert metrics.top_confusions(want, k=1) == [(2, 1, 2)]
  assert metrics.top_confusions(np.eye(3, dtype=int)) == []
  wider = metrics.confusion_matrix(logits, labels, num_classes=4)
  np.testing.assert_array_equal(wider[:3, :3], want)
  with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
    metrics.confusion_matrix(logits, np.array([0, 0, 1, 2, 2, 3]))


def test_mean_std_is_the_sample_std():
  mean, std = metrics.mean_std([1.0, 2.0, 3.0, 4.0])
  assert mean == 2.5
  assert std == pytest.approx(math.sqrt(5 / 3))  # ddof = 1, not sqrt(5/4).
  assert metrics.mean_std([7.0]) == (7.0, 0.0)
  with pytest.raises(ValueError, match="at least one value"):
    metrics.mean_std([])


def _corner(x):
  """Logits: the top-left pixel against the mean."""
  x = jnp.asarray(x)
  return jnp.stack([x[:, 0, 0, 0], x.mean(axis=(1, 2, 3))], axis=-1)


def test_changes_under_p4m_by_hand():
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  base = np.asarray(_corner(images), np.float64)
  pred = np.argmax(base, -1)
  # Which pixel each element brings to the top-left corner (np.rot90 turns
  # counter-clockwise; the mirror flips W first). The mean moves by float
  # rounding only.
  corners = {
    "identity": images[:, 0, 0, 0],
    "rot 90": images[:, 0, 3, 0],
    "rot 180": images[:, 3, 3, 0],
    "rot 270": images[:, 3, 0, 0],
    "mirror": images[:, 0, 3, 0],
    "mirror then rot 90": images[:, 0, 0, 0],
    "mirror then rot 180": images[:, 3, 0, 0],
    "mirror then rot 270": images[:, 3, 3, 0],
  }
  every = list(range(8))
  changes = metrics.logit_changes(_corner, images, group="p4m", elements=every)
  moved = metrics.prediction_changes(
    _corner, images, group="p4m", elements=every
  )
  assert list(moved) == list(changes) == list(corners)
  for name, pixel in corners.items():
    logits = np.stack([pixel, base[:, 1]], axis=-1)
    # The one norm: max over the batch and logits, relative to max |f(x)|.
    want = np.max(np.abs(logits - base)) / np.max(np.abs(base))
    np.testing.assert_allclose(changes[name], want, rtol=1e-6, atol=1e-6)
    assert moved[name] == np.mean(np.argmax(logits, -1) != pred)
  assert changes["identity"] == 0.0 and moved["identity"] == 0.0
  assert changes["rot 90"] > 0.1 and changes["mirror then rot 90"] < 1e-6


def test_p4_by_default_without_the_identity():
  images = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 1)
  assert list(metrics.logit_changes(_corner, images)) == [
    "rot 90",
    "rot 180",
    "rot 270",
  ]
  total = lambda x: jnp.stack([x.sum((1, 2, 3)), x[:, 1, 1, 0]], axis=-1)
  assert set(metrics.prediction_changes(total, images).values()) == {0.0}


@pytest.mark.parametrize(
  "fn", [metrics.logit_changes, metrics.prediction_changes]
)
def test_changes_need_square_images_and_a_known_group(fn):
  with pytest.raises(ValueError, match=r"square \[N, H, H, C\]"):
    fn(_corner, np.zeros((1, 3, 4, 1)))
  with pytest.raises(ValueError, match="group"):
    fn(_corner, np.zeros((1, 3, 3, 1)), group="so2")


def _shift_by_hand(image, dy, dx):
  out = np.zeros_like(image)
  h, w = image.shape[:2]
  for i in range(h):
    for j in range(w):
      if 0 <= i - dy < h and 0 <= j - dx < w:
        out[i, j] = image[i - dy, j - dx]
  return out


def test_accuracy_under_shifts_against_shifts_by_hand():
  rng = np.random.default_rng(0)
  images = (rng.random((12, 7, 7, 1)) > 0.6).astype(np.float32)
  labels = (images[:, 3, 3, 0] > 0).astype(np.int32)

  def centre_pixel(x):  # Class 1 iff the centre pixel has ink.
    ink = np.asarray(x)[:, 3, 3, 0]
    return np.stack([1 - ink, ink], axis=-1)

  sweep = metrics.accuracy_under_shifts(centre_pixel, images, labels, 2)
  expected = []
  for k in range(3):
    key = jax.random.fold_in(jax.random.key(0), k)
    shifts = np.asarray(jax.random.randint(key, (12, 2), -k, k + 1))
    moved = [
      _shift_by_hand(im, *s) for im, s in zip(images, shifts, strict=True)
    ]
    expected.append(np.mean((np.stack(moved)[:, 3, 3, 0] > 0) == labels))
  assert sweep[0] == 1.0
  np.testing.assert_allclose(sweep, expected)
