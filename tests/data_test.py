"""Tests of equivlab.data."""

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
