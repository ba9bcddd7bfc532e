"""Data: the embedded digits, tfds sets, transforms and batching.

- `embedded`: 5,000 real MNIST digits shipped with equivlab (4,000 train /
  1,000 test), the default data set.
- `datasets`: `load_dataset(name, split)`, the embedded digits, their
  shifted and rotated variants, and any tensorflow-datasets name.
- `tfds_reader` / `tfds_builder`: tfds without TensorFlow, and the
  embedded digits as a tfds set of the project's own ("equivlab_digits").
- `transforms`: pure, key-first, jittable image transforms.
- `batching`: per-epoch shuffles, the last batch dropped or padded.

The public names of `embedded`, `datasets`, `batching` and `transforms` are
available here: `data.load_dataset(...)`, `data.random_shift(...)`.
"""

from equivlab.data.batching import (
  LAST_BATCH,
  epoch_order,
  iterate_batches,
  num_batches,
)
from equivlab.data.datasets import (
  DEFAULT_MAX_SHIFT,
  EMBEDDED_IMAGE_SIZE,
  load_dataset,
)
from equivlab.data.embedded import (
  EMBEDDED_NUM_TEST,
  EMBEDDED_NUM_TRAIN,
  EMBEDDED_SEED,
  default_cache_dir,
  embedded_digits,
)
from equivlab.data.transforms import (
  flip_horizontal,
  largest_random_shift,
  random_crop,
  random_flip,
  random_rot90,
  random_rotate,
  random_shift,
  rotate,
  translate,
)

__all__ = [
  "DEFAULT_MAX_SHIFT",
  "EMBEDDED_IMAGE_SIZE",
  "EMBEDDED_NUM_TEST",
  "EMBEDDED_NUM_TRAIN",
  "EMBEDDED_SEED",
  "LAST_BATCH",
  "default_cache_dir",
  "embedded_digits",
  "epoch_order",
  "flip_horizontal",
  "iterate_batches",
  "largest_random_shift",
  "load_dataset",
  "num_batches",
  "random_crop",
  "random_flip",
  "random_rot90",
  "random_rotate",
  "random_shift",
  "rotate",
  "translate",
]
