"""Tests of equivlab.data."""

import jax
import numpy as np
import pytest

from equivlab import data


def test_embedded_digits_shapes_split_and_cache(tmp_path):
  x_train, y_train = data.embedded_digits("train", cache_dir=tmp_path)
  x_test, y_test = data.embedded_digits("test", cache_dir=tmp_path)
  assert x_train.shape == (4000, 28, 28, 1) and x_train.dtype == np.float32
  assert x_test.shape == (1000, 28, 28, 1)
  assert y_train.dtype == np.int32 and set(np.unique(y_test)) == set(range(10))
  assert 0.0 <= x_train.min() and x_train.max() <= 1.0
  # Shuffled: the source is sorted by label.
  assert not np.all(np.diff(y_train) >= 0)
  assert list(tmp_path.glob("*.npz"))
  # The cached copy is read back identically.
  x_again, y_again = data.embedded_digits("train", cache_dir=tmp_path)
  np.testing.assert_array_equal(x_again, x_train)
  np.testing.assert_array_equal(y_again, y_train)


def test_embedded_digits_rejects_unknown_split(tmp_path):
  with pytest.raises(ValueError, match="split must be one of"):
    data.embedded_digits("validation", cache_dir=tmp_path)


# --- transforms --------------------------------------------------------------


def _impulses(n, size=9):
  """n images `[n, size, size, 1]`, each a single 1 at the centre."""
  images = np.zeros((n, size, size, 1), np.float32)
  images[:, size // 2, size // 2] = 1.0
  return images


def _impulse_offsets(images, size=9):
  flat = np.asarray(images).reshape(len(images), -1).argmax(axis=1)
  rows, cols = np.divmod(flat, size)
  return rows - size // 2, cols - size // 2


def test_translate_moves_pixels_and_fills_zeros():
  x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
  out = data.translate(x, np.array([[1, -1]]))
  expected = np.array([[0, 0, 0], [2, 3, 0], [5, 6, 0]], np.float32)
  np.testing.assert_array_equal(out[0, :, :, 0], expected)


def test_random_shift_covers_exactly_the_allowed_offsets():
  images = _impulses(400)
  out = jax.jit(data.random_shift, static_argnums=2)(
    jax.random.PRNGKey(0), images, 2
  )
  dy, dx = _impulse_offsets(out)
  assert np.abs(np.asarray(out).sum(axis=(1, 2, 3)) - 1).max() < 1e-6
  offsets = set(zip(dy.tolist(), dx.tolist(), strict=True))
  assert offsets == {(a, b) for a in range(-2, 3) for b in range(-2, 3)}


def test_random_crop_is_a_bounded_shift_and_zero_padding_is_identity():
  images = _impulses(200)
  out = data.random_crop(jax.random.PRNGKey(1), images, 1)
  dy, dx = _impulse_offsets(out)
  assert set(dy.tolist()) == {-1, 0, 1} and set(dx.tolist()) == {-1, 0, 1}
  same = data.random_crop(jax.random.PRNGKey(1), images, 0)
  np.testing.assert_array_equal(same, images)


def test_rotate_by_quarter_turns_matches_rot90():
  x = np.random.default_rng(0).random((2, 7, 7, 3)).astype(np.float32)
  for k in range(4):
    out = data.rotate(x, np.full(2, k * np.pi / 2, np.float32))
    np.testing.assert_allclose(
      out, np.rot90(x, k, axes=(1, 2)), atol=1e-5, rtol=0
    )
    np.testing.assert_array_equal(data.rot90(x, k), np.rot90(x, k, (1, 2)))


def test_rotate_interpolates_bilinearly():
  # Half a pixel's worth of turn moves mass between neighbours smoothly:
  # the centre pixel of a bright square stays put, values stay in [0, 1].
  x = np.zeros((1, 9, 9, 1), np.float32)
  x[0, 3:6, 3:6] = 1.0
  out = np.asarray(data.rotate(x, np.array([0.3], np.float32)))
  assert out[0, 4, 4, 0] == 1.0
  assert 0.0 <= out.min() and out.max() <= 1.0 + 1e-6
  fractional = (out > 1e-3) & (out < 1 - 1e-3)
  assert fractional.any()
  np.testing.assert_allclose(out.sum(), x.sum(), rtol=0.05)


def test_random_rotate_and_rot90_are_jittable_and_keyed():
  x = np.random.default_rng(1).random((4, 8, 8, 1)).astype(np.float32)
  key = jax.random.PRNGKey(2)
  a = jax.jit(data.random_rotate)(key, x)
  np.testing.assert_allclose(a, data.random_rotate(key, x), atol=1e-6)
  turned = np.asarray(jax.jit(data.random_rot90)(key, x))
  for image, original in zip(turned, x, strict=True):
    assert any(np.array_equal(image, np.rot90(original, k)) for k in range(4))


def test_flips():
  x = np.arange(6, dtype=np.float32).reshape(1, 2, 3, 1)
  np.testing.assert_array_equal(data.flip_horizontal(x), x[:, :, ::-1])
  key = jax.random.PRNGKey(0)
  np.testing.assert_array_equal(data.random_flip(key, x, 1.0), x[:, :, ::-1])
  np.testing.assert_array_equal(data.random_flip(key, x, 0.0), x)


def test_transforms_reject_bad_input():
  key = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
    data.random_shift(key, np.zeros((3, 3, 1)), 1)
  with pytest.raises(ValueError, match="max_shift"):
    data.random_shift(key, np.zeros((1, 3, 3, 1)), -1)
  with pytest.raises(ValueError, match="padding"):
    data.random_crop(key, np.zeros((1, 3, 3, 1)), 1.5)
  with pytest.raises(ValueError, match="angles must be"):
    data.rotate(np.zeros((2, 3, 3, 1)), np.zeros(3))
  with pytest.raises(ValueError, match="shifts must be"):
    data.translate(np.zeros((2, 3, 3, 1)), np.zeros((2, 3), int))
  with pytest.raises(ValueError, match="square"):
    data.random_rot90(key, np.zeros((1, 3, 4, 1)))
  with pytest.raises(ValueError, match="probability"):
    data.random_flip(key, np.zeros((1, 3, 3, 1)), 1.5)


# --- data sets by name -------------------------------------------------------


def test_derived_embedded_sets_are_fixed_and_keep_labels():
  x, y = data.load_dataset("embedded", "test")
  rot, rot_y = data.load_dataset("embedded_rot", "test")
  again, _ = data.load_dataset("embedded_rot", "test")
  np.testing.assert_array_equal(rot_y, y)
  np.testing.assert_array_equal(rot, again)
  assert rot.shape == x.shape and rot.dtype == np.float32
  assert not np.allclose(rot, x)
  shifted, _ = data.load_dataset("embedded_shift3", "test")
  # Zero-filled shifts by <= 3 keep most of each digit's ink.
  kept = shifted.sum(axis=(1, 2, 3)) / x.sum(axis=(1, 2, 3))
  assert kept.min() > 0.8 and kept.max() <= 1.0 + 1e-5
  turned, _ = data.load_dataset("embedded_rot90", "test")
  np.testing.assert_allclose(
    turned.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)), rtol=1e-5
  )


def test_unknown_dataset_names_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match="unknown embedded data set"):
    data.load_dataset("embedded_flipped", "train", data_dir=tmp_path)
  with pytest.raises(ValueError, match="unknown dataset 'no_such_set_xyz'"):
    data.load_dataset("no_such_set_xyz", "train", data_dir=tmp_path)


def test_missing_tfds_dataset_fails_at_once_saying_how_to_prepare(tmp_path):
  with pytest.raises(FileNotFoundError, match="--download"):
    data.load_dataset("mnist", "train", data_dir=tmp_path)


def test_download_without_tensorflow_says_what_to_install(
  tmp_path, monkeypatch
):
  import importlib.util

  find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util,
    "find_spec",
    lambda name, *args: None if name == "tensorflow" else find_spec(name),
  )
  with pytest.raises(ImportError, match=r"equivlab\[tf\]"):
    data.load_dataset("mnist", "train", data_dir=tmp_path, download=True)


def test_tfds_path_reads_a_mocked_data_source(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    # mock_data fakes the records but not the prepared folder, which
    # load_dataset checks itself (to fail fast offline): fake that too.
    monkeypatch.setattr(
      tfds.core.DatasetBuilder, "is_prepared", lambda self: True
    )
    images, labels = data.load_dataset("mnist", "train", data_dir=tmp_path)
    cifar, _ = data.load_dataset("cifar10", "test", data_dir=tmp_path)
  assert images.shape == (12, 28, 28, 1) and images.dtype == np.float32
  assert 0.0 <= images.min() and images.max() <= 1.0
  assert labels.dtype == np.int32 and labels.shape == (12,)
  assert set(labels.tolist()) <= set(range(10))
  assert cifar.shape == (12, 32, 32, 3)


# --- batching ----------------------------------------------------------------


def test_iterate_batches_drop_and_pad():
  x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1)
  y = np.arange(10, dtype=np.int32)
  dropped = list(data.iterate_batches(x, y, 4, last_batch="drop"))
  assert [len(b["label"]) for b in dropped] == [4, 4]
  assert "mask" not in dropped[0]
  padded = list(data.iterate_batches(x, y, 4, last_batch="pad"))
  assert [len(b["label"]) for b in padded] == [4, 4, 4]
  np.testing.assert_array_equal(padded[-1]["mask"], [True, True, False, False])
  real = np.concatenate([b["label"][b["mask"]] for b in padded])
  np.testing.assert_array_equal(real, y)
  assert data.num_batches(10, 4, "drop") == 2
  assert data.num_batches(10, 4, "pad") == 3


def test_iterate_batches_shuffles_per_epoch_from_the_key():
  x = np.zeros((50, 1, 1, 1), np.float32)
  y = np.arange(50, dtype=np.int32)
  key = jax.random.PRNGKey(0)

  def order(epoch, start=0):
    batches = data.iterate_batches(x, y, 10, key=key, epoch=epoch, start=start)
    return np.concatenate([b["label"] for b in batches])

  first, second = order(0), order(1)
  np.testing.assert_array_equal(np.sort(first), y)
  assert not np.array_equal(first, y) and not np.array_equal(first, second)
  np.testing.assert_array_equal(order(0), first)
  np.testing.assert_array_equal(order(1, start=2), second[20:])


def test_iterate_batches_rejects_bad_input():
  x = np.zeros((5, 1, 1, 1), np.float32)
  y = np.zeros(5, np.int32)
  with pytest.raises(ValueError, match="larger than the 5 examples"):
    next(data.iterate_batches(x, y, 8))
  with pytest.raises(ValueError, match="last_batch must be one of"):
    next(data.iterate_batches(x, y, 2, last_batch="wrap"))
  with pytest.raises(ValueError, match="labels must be"):
    next(data.iterate_batches(x, y[:4], 2))
  with pytest.raises(ValueError, match="batch_size"):
    next(data.iterate_batches(x, y, 0))
