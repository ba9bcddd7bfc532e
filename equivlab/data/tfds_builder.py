"""The embedded digits as a tfds data set of the project's own.

`EquivlabDigits` ("equivlab_digits") writes the embedded digits through
tfds's own `download_and_prepare` as array_record files, offline and
without TensorFlow, so the tfds path can be exercised on real files
anywhere. tfds needs TensorFlow only to encode numpy images; this builder
hands it PNG bytes encoded by Pillow instead. `prepare_embedded_digits(DIR)`
writes it; afterwards `load_dataset("equivlab_digits", split, data_dir=DIR)`
reads it like any tfds set.
"""

import io
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from equivlab.data.embedded import embedded_digits

__all__ = ["EquivlabDigits", "prepare_embedded_digits", "prepare_offline"]

ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


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
        "5,000 real MNIST digits (CC BY-SA 3.0) shipped inside equivlab, "
        "shuffled with a fixed seed and split 4,000 train / 1,000 test "
        "(equivlab's embedded data set)."
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
    del dl_manager  # Nothing to download: the digits ship with equivlab.
    return {
      split: self._generate_examples(split) for split in ("train", "test")
    }

  def _generate_examples(self, split: str):
    images, labels = embedded_digits(split)
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
      file_format=ARRAY_RECORD,
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
