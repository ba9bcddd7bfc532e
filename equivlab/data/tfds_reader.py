"""Reading tensorflow-datasets sets without TensorFlow.

`load_tfds` reads a whole split of a prepared tfds data set through
`tfds.data_source` (array_record files, no TensorFlow), and fails at once,
saying which flags prepare it, when the set is not prepared: tfds's own
offline retry loop takes minutes to fail. Imported lazily by
`equivlab.data.load_dataset` (importing tfds takes seconds).
"""

import importlib.util
import os

import numpy as np
import tensorflow_datasets as tfds

from equivlab.data.tfds_builder import (
  ARRAY_RECORD,
  EquivlabDigits,
  prepare_offline,
)

__all__ = ["load_tfds", "not_prepared_message"]


def _unknown_name_message(name: str) -> str:
  return (
    f"unknown dataset {name!r}: expected 'embedded', 'embedded_shift', "
    "'embedded_shift<k>', 'embedded_rot', 'embedded_rot90' or a "
    "tensorflow-datasets name such as 'mnist', 'cifar10' or "
    "'equivlab_digits'."
  )


def not_prepared_message(name: str, where: str) -> str:
  """What to do about a tfds data set that is not prepared in `where`."""
  return (
    f"tfds data set {name!r} is not prepared in {where}: pass --download "
    "(needs internet) or --data_dir=DIR where it is prepared (in Python: "
    "download=True or data_dir=DIR; the default DIR is $TFDS_DATA_DIR, "
    "else ~/tensorflow_datasets)."
  )


def _prepare_if_asked(
  builder: tfds.core.DatasetBuilder, name: str, download: bool
) -> bool:
  """Checks preparation; returns whether `tfds.data_source` should download."""
  if builder.is_prepared():
    return False
  if not download:
    raise FileNotFoundError(not_prepared_message(name, builder.data_dir))
  if isinstance(builder, EquivlabDigits):
    prepare_offline(builder)  # Ours needs neither internet nor TensorFlow.
    return False
  if importlib.util.find_spec("tensorflow") is None:
    raise ImportError(
      f"preparing the tfds data set {name!r} needs TensorFlow (tfds "
      "encodes the images with it); install it with pip install "
      "'equivlab[tf]' on the machine that downloads. Reading a prepared "
      "data set does not need TensorFlow."
    )
  return True


def load_tfds(
  name: str,
  split: str,
  *,
  data_dir: str | os.PathLike | None,
  download: bool,
) -> tuple[np.ndarray, np.ndarray]:
  """A whole split of a tfds data set as numpy arrays (see `load_dataset`).

  Args:
    name: a tfds name ("mnist", "cifar10", "name/config:version", ...).
    split: a tfds split string ("train", "test[:10%]", ...).
    data_dir: the tfds data directory, or None for tfds's default.
    download: let tfds download and prepare a missing set.

  Returns:
    `(images, labels)`: float32 `[N, H, W, C]` in [0, 1] and int32 `[N]`.

  Raises:
    ValueError: for an unknown name or split, or an empty split.
    FileNotFoundError: if the set is not prepared and `download` is False.
    ImportError: if preparing a third-party set needs TensorFlow.
  """
  data_dir = None if data_dir is None else os.fspath(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise ValueError(_unknown_name_message(name)) from error
  except (ValueError, AssertionError) as error:  # Bad config or version.
    reason = str(error).splitlines()[0]
    raise ValueError(
      f"dataset {name!r} names no tfds config or version that exists "
      f"(expected 'name[/config][:version]'): {reason}"
    ) from error
  # Check for the prepared files ourselves: without them tfds either fails
  # obscurely or, offline with download=True, retries for minutes.
  fetch = _prepare_if_asked(builder, name, download)
  known = sorted(builder.info.splits)  # Empty under tfds's mock_data.
  if known and split not in known and "[" not in split and "+" not in split:
    raise ValueError(
      f"split must be one of {known} (or a slice such as 'train[:10%]') "
      f"for {name!r}, got {split!r}."
    )
  try:
    source = tfds.data_source(
      name,
      split=split,
      data_dir=data_dir,
      download=fetch,
      download_and_prepare_kwargs={"file_format": ARRAY_RECORD},
    )
  except (KeyError, ValueError, AssertionError) as error:
    splits = known or "those of the data set"
    raise ValueError(
      f"split must be one of {splits} (or a slice such as 'train[:10%]') "
      f"for {name!r}, got {split!r}: {error}"
    ) from error
  return _read_all(source, builder, name, split)


def _read_all(source, builder, name: str, split: str):
  """Every record of a data source, stacked and scaled to [0, 1]."""
  image_key, label_key = builder.info.supervised_keys or ("image", "label")
  images, labels = [], []
  # One record at a time: tfds.testing.mock_data's source lacks a working
  # batched read, and decoding, not reading, dominates anyway.
  for index in range(len(source)):
    example = source[index]
    images.append(np.asarray(example[image_key]))
    labels.append(int(example[label_key]))
  if not images:
    raise ValueError(f"split {split!r} of {name!r} holds no examples.")
  stacked = np.stack(images)
  if stacked.ndim == 3:  # Greyscale stored without a channel axis.
    stacked = stacked[..., None]
  scale = 255.0 if stacked.dtype == np.uint8 else 1.0
  return (
    stacked.astype(np.float32) / np.float32(scale),
    np.asarray(labels, np.int32),
  )
