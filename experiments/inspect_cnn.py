r"""Look inside a trained CNN: filters, feature maps, shifts, occlusion.

Trains the "cnn" of `equivlab.nn.models` (3x3 conv blocks and a dense head)
on the digits, then draws, after Zeiler & Fergus (ECCV 2014),
1. the filters of every convolution layer as image grids;
2. the feature maps (after ReLU) of every layer for a 0 and an 8;
3. the predictions for a digit shifted left and right;
4. occlusion sensitivity of a digit (a 6): a grey patch slid over it,
   mapping (a) the true-class probability, (b) the highest probability and
   (c) the predicted label;
5. a search over patch positions and sizes for a grey patch that flips the
   prediction, reporting whether one exists
   (`experiments.adversarial_patch` optimises the patch's content instead).

Every setting is checked before anything trains (a bad flag is a flag
error).

    python -m experiments.inspect_cnn

Writes into --workdir (default runs/inspect_cnn): results.json, results.md,
timings.json, filters_layer<i>.png, feature_maps_<digit>_layer<i>.png,
shifted.png, occlusion.png, flip.png and the training run under runs/cnn/.
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np

from equivlab import checks, train
from equivlab.analysis import inspection, occlusion, viz
from equivlab.training import sweeps
from experiments import _common

# The embedded digits' side; tfds images are checked against their own.
_SIDE = 28


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions):
  """Settings of the CNN inspection (Adam, constant learning rate).

  Attributes:
    features: channels of the three conv blocks of the "cnn" model.
    feature_digits: classes whose feature maps are drawn.
    shift_digit: class of the digit shifted left and right.
    shift: pixels of the left and right shifts, in [0, 27].
    occlusion_digit: class of the occluded digit.
    patch_size: side of the grey patch of the occlusion maps, in [1, 28].
    patch_value: grey level of the patch, in [0, 1] (ink is 1, paper 0).
    search_sizes: patch sides tried by the flip search, each in [1, 28].
  """

  num_epochs: int = 5
  learning_rate: float = 1e-3
  features: tuple[int, ...] = (16, 32, 64)
  feature_digits: tuple[int, ...] = (0, 8)
  shift_digit: int = 1
  shift: int = 4
  occlusion_digit: int = 6
  patch_size: int = 11
  patch_value: float = 0.5
  search_sizes: tuple[int, ...] = (3, 5, 7, 9, 11, 13)

  def __post_init__(self):
    _common.check_config(self)
    checks.check_ints("features", self.features, minimum=1)
    checks.check_ints("feature_digits", self.feature_digits)
    for i, digit in enumerate(self.feature_digits):
      checks.check_int(f"feature_digits[{i}]", digit, minimum=0, maximum=9)
    for name in ("shift_digit", "occlusion_digit"):
      checks.check_int(name, getattr(self, name), minimum=0, maximum=9)
    checks.check_number("patch_value", self.patch_value, minimum=0, maximum=1)
    _check_sizes(self, _SIDE if self.dataset == "embedded" else None)


def _check_sizes(config: Config, side: int | None) -> None:
  """Shift and patch sizes against the image side (None: lower bounds)."""
  largest_shift = None if side is None else side - 1
  checks.check_int("shift", config.shift, minimum=0, maximum=largest_shift)
  checks.check_int("patch_size", config.patch_size, minimum=1, maximum=side)
  checks.check_ints("search_sizes", config.search_sizes)
  for i, size in enumerate(config.search_sizes):
    checks.check_int(f"search_sizes[{i}]", size, minimum=1, maximum=side)


def train_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` of the inspected CNN."""
  return config.train_config(
    model="cnn", model_kwargs={"features": tuple(config.features)}
  )


def _test_digits(config: Config):
  """The test digits, checked against the settings before any training."""
  test_x, test_y = config.test_digits()
  _check_sizes(config, min(test_x.shape[1:3]))
  for digit in _digits(config):  # The ValueError for a missing class:
    inspection.pick_digit(test_y, test_y, digit)
  return test_x, test_y


def _digits(config: Config) -> tuple[int, ...]:
  """Every class the study draws."""
  return (*config.feature_digits, config.shift_digit, config.occlusion_digit)


def _filters(result, workdir: pathlib.Path) -> list[str]:
  params = result.params
  names = sorted(
    (n for n in params if n.startswith("Conv_")), key=inspection.layer_index
  )
  return [
    viz.plot_filters(
      np.asarray(params[name]["kernel"]),
      workdir / f"filters_layer{i + 1}.png",
      max_in=8,
      max_out=16,
      title=f"Layer {i + 1} filters",
    )
    for i, name in enumerate(names)
  ]


def _feature_maps(config, result, images, workdir) -> list[str]:
  files = []
  for digit, image in zip(config.feature_digits, images, strict=True):
    maps = inspection.conv_activations(result.model, result.variables, image)
    for layer, layer_maps in enumerate(maps):
      files.append(
        viz.plot_feature_maps(
          layer_maps,
          workdir / f"feature_maps_{digit}_layer{layer + 1}.png",
          image=image,
          max_maps=15,
          title=f"Digit {digit}: layer {layer + 1} feature maps (after ReLU)",
        )
      )
  return files


def _shifted(config, apply_fn, image, workdir) -> tuple[list[dict], str]:
  shifted, moved = inspection.shifted_predictions(apply_fn, image, config.shift)
  names = (f"left {config.shift}px", "original", f"right {config.shift}px")
  file = viz.plot_images(
    moved,
    workdir / "shifted.png",
    titles=[
      f"{name}\npredicted {s['predicted']} (p={s['probability']:.3f})"
      for name, s in zip(names, shifted, strict=True)
    ],
    title=f"A {config.shift_digit} shifted left and right",
  )
  return shifted, file


def _occlusion(config, apply_fn, image, index, workdir) -> tuple[dict, str]:
  digit = config.occlusion_digit
  maps = occlusion.occlusion_maps(
    apply_fn,
    image,
    digit,
    patch_size=config.patch_size,
    value=config.patch_value,
  )
  file = viz.plot_occlusion(
    image,
    maps,
    workdir / "occlusion.png",
    label=digit,
    patch_size=config.patch_size,
  )
  return {
    "test_index": index,
    **inspection.occlusion_summary(maps, digit),
  }, file


def _flip_search(config, apply_fn, image, workdir) -> tuple[dict, str]:
  search = occlusion.find_flipping_patch(
    apply_fn,
    image,
    config.occlusion_digit,
    sizes=config.search_sizes,
    value=config.patch_value,
  )
  panels, titles = inspection.flip_panels(
    image, search, config.patch_value, config.search_sizes
  )
  file = viz.plot_images(
    panels,
    workdir / "flip.png",
    titles=titles,
    title="Search for a grey occlusion that changes the prediction",
  )
  return search, file


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains the CNN and draws what it learned (see the module docstring).

  Args:
    config: the experiment's settings.
    workdir: where results.json, the PNGs and the training run go.

  Returns:
    The contents of results.json: "config", "test_accuracy", "num_params",
    "shifted" (the digit moved left, unmoved and right: predictions and
    probabilities), "occlusion" (index, label, smallest true-class
    probability and where, the labels the map shows), "flip_search" (from
    `equivlab.analysis.occlusion.find_flipping_patch`), "files" and "summary".

  Raises:
    ValueError: if the test digits lack a class asked for, or a size does
      not fit a tfds data set's images (both before training).
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  test_x, test_y = _test_digits(config)
  start = time.perf_counter()
  result = train.train_and_evaluate(train_config(config), workdir / "runs/cnn")
  seconds = {"train": time.perf_counter() - start}
  apply_fn = jax.jit(
    lambda x: result.model.apply(result.variables, x, train=False)
  )
  predicted = np.argmax(result.logits(test_x), -1)
  index = {
    d: inspection.pick_digit(test_y, predicted, d) for d in _digits(config)
  }
  files = _filters(result, workdir)
  files += _feature_maps(
    config, result, [test_x[index[d]] for d in config.feature_digits], workdir
  )
  shifted, file = _shifted(
    config, apply_fn, test_x[index[config.shift_digit]], workdir
  )
  image = test_x[index[config.occlusion_digit]]
  occluded, file2 = _occlusion(
    config, apply_fn, image, index[config.occlusion_digit], workdir
  )
  search, file3 = _flip_search(config, apply_fn, image, workdir)
  results = {
    "config": dataclasses.asdict(config),
    "test_accuracy": result["test_accuracy"],
    "num_params": result["num_params"],
    "shifted": shifted,
    "occlusion": occluded,
    "flip_search": search,
    "files": [pathlib.Path(f).name for f in [*files, file, file2, file3]],
  }
  results["summary"] = inspection.summary(
    result["test_accuracy"], shifted, occluded, search
  )
  seconds["total"] = time.perf_counter() - start
  sweeps.write_results(
    workdir, results, table=results["summary"], timings=seconds
  )
  return results


define_flags, main = _common.entry_points(Config, run, "inspect_cnn")

if __name__ == "__main__":
  _common.launch(main, define_flags)
