r"""The smallest patch that makes a 6 any other digit.

Grey patches slid over a 6 rarely change a CNN's answer (Zeiler & Fergus
2014's occlusion experiment); an optimised patch is another matter (Brown
et al. 2017, "Adversarial Patch"). This trains the CNN (dense head) and
Cohen & Welling's P4CNN on the digits, takes the first test digit of class
`digit` that every model classifies correctly, and for each model and each
other class finds the smallest square patch whose content, optimised by
projected gradient within [0, 1] at searched positions
(`equivlab.analysis.adversarial.smallest_patches`), makes the model predict
that class. Beside it, the grid search of grey patches
(`equivlab.analysis.occlusion.find_flipping_patch`, every side up to
`max_size`, every centre): the smallest grey patch that changes the
prediction, and which classes grey patches reach at all.

    python -m experiments.adversarial_patch

Writes into --workdir (default runs/adversarial_patch): results.json,
results.md (the table of sides), timings.json, adversarial_<model>.png (the
digit and its patched versions, one per class), adversarial_sizes.png (the
sides per class, optimised and grey), patches.npz (the patched images) and
one train workdir per model under runs/ (a rerun resumes there).
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax
import numpy as np

from equivlab import checks, train
from equivlab.analysis import adversarial, inspection, occlusion, viz
from equivlab.nn import models
from equivlab.training import sweeps
from experiments import _common


@dataclasses.dataclass(frozen=True)
class Config(_common.TrainingOptions):
  """Settings of the adversarial-patch study (Adam, cosine decay to 0).

  Attributes:
    models: model names for `equivlab.nn.models.get_model`.
    seed: seed of the training runs and of the patches' random starts.
    digit: the class of the attacked test digit.
    max_size: the largest patch side tried (optimised and grey), in
      [1, 28].
    grid: patch corners per axis of the regular grid of positions.
    num_salient: more positions, where the target's gradient is largest.
    num_steps: the most projected-gradient steps per side and class.
    step_size: the change of every patch pixel per step, in (0, 1].
    patch_value: grey level of the grid search's patches, in [0, 1].
  """

  models: tuple[str, ...] = ("cnn", "p4cnn")
  digit: int = 6
  max_size: int = 20
  grid: int = 4
  num_salient: int = 8
  num_steps: int = 30
  step_size: float = 0.1
  patch_value: float = 0.5

  def __post_init__(self):
    _common.check_config(self)
    _common.check_names("models", self.models, models.MODEL_NAMES)
    for name in ("grid", "num_steps"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_int("num_salient", self.num_salient, minimum=0)
    checks.check_int("digit", self.digit, minimum=0, maximum=9)
    side = 28 if self.dataset == "embedded" else None
    checks.check_int("max_size", self.max_size, minimum=1, maximum=side)
    checks.check_number(
      "step_size", self.step_size, minimum=0, maximum=1, strict_minimum=True
    )
    checks.check_number("patch_value", self.patch_value, minimum=0, maximum=1)


def _test_digits(config: Config):
  """The test digits, checked against the settings before any training."""
  test_x, test_y = config.test_digits()
  side = min(test_x.shape[1:3])
  checks.check_int("max_size", config.max_size, minimum=1, maximum=side)
  if not np.any(test_y == config.digit):
    raise ValueError(
      f"digit must be a class of the test digits, got {config.digit}."
    )
  return test_x, test_y


def base_config(config: Config) -> train.TrainConfig:
  """The `TrainConfig` every model trains with (Adam, cosine decay)."""
  return config.train_config(schedule="cosine")


def _attack(config: Config, result, image) -> tuple[dict, dict, dict]:
  """(optimised patches per class, the grey grid search, seconds)."""

  def apply_fn(x):
    return result.model.apply(result.variables, x, train=False)

  start = time.perf_counter()
  patches = adversarial.smallest_patches(
    apply_fn,
    image,
    config.digit,
    max_size=config.max_size,
    grid=config.grid,
    num_salient=config.num_salient,
    num_steps=config.num_steps,
    step_size=config.step_size,
    seed=config.seed,
  )
  middle = time.perf_counter()
  grey = occlusion.find_flipping_patch(
    jax.jit(apply_fn),
    image,
    config.digit,
    sizes=range(1, config.max_size + 1),
    value=config.patch_value,
  )
  seconds = {"optimised": middle - start, "grey": time.perf_counter() - middle}
  return patches, grey, seconds


def _targets(config: Config) -> list[int]:
  return [t for t in range(10) if t != config.digit]


def _figures(config, workdir, image, patches, records) -> None:
  targets = _targets(config)
  for name, found in patches.items():
    images, titles = [image], [f"{name}: original\npredicted {config.digit}"]
    for target in targets:
      result = found[target]
      if result["found"]:
        s = result["size"]
        images.append(result["patched"])
        titles.append(
          f"-> {target}: {s}x{s} patch\np={result['probability']:.2f}"
        )
      else:
        images.append(image)
        titles.append(f"-> {target}: none\nup to {config.max_size} px")
    viz.plot_images(
      np.stack(images),
      workdir / f"adversarial_{name}.png",
      titles=titles,
      ncols=5,
      title=(
        f"{name}: the smallest optimised patch that turns the {config.digit} "
        "into each class"
      ),
    )
  series = {}
  for name, record in records.items():
    series[f"{name} optimised"] = [
      record["optimised"][t].get("size", np.nan) for t in targets
    ]
    series[f"{name} grey"] = [
      record["grey_sides"].get(t, np.nan) for t in targets
    ]
  viz.plot_bars(
    [str(t) for t in targets],
    series,
    workdir / "adversarial_sizes.png",
    ylabel="smallest patch side (pixels)",
    title=(
      f"Smallest patch turning the {config.digit} into each class (no bar: "
      f"none up to {config.max_size} px)"
    ),
    value_format="{:.0f}",
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains the models, then finds the smallest flipping patches.

  Args:
    config: the study's settings.
    workdir: where results.json, the PNGs and the per-model runs go.

  Returns:
    The contents of results.json: "config", "test_index" (the attacked
    digit), "models" (per model: test accuracy, parameters, per class the
    smallest optimised patch with its position, target probability and
    the sides tried, the grey grid search and per class its smallest grey
    side) and "table".

  Raises:
    ValueError: if no test digit of class `digit` is classified correctly
      by every model (after training), or the settings do not fit a tfds
      data set's images (before).
    FileNotFoundError: if a tfds data set is not prepared.
  """
  workdir = pathlib.Path(workdir)
  test_x, test_y = _test_digits(config)
  start = time.perf_counter()
  trained, _, seconds = _common.train_variants(
    config, {m: {"model": m} for m in config.models}, workdir, schedule="cosine"
  )
  trained = {name: result for name, (result,) in trained.items()}
  predictions = [np.argmax(r.logits(test_x), -1) for r in trained.values()]
  index = inspection.pick_image(predictions, test_y, config.digit)
  image = test_x[index]
  records, patches = {}, {}
  for name, result in trained.items():
    patches[name], grey, seconds[f"{name} attack"] = _attack(
      config, result, image
    )
    records[name] = {
      "test_accuracy": result["test_accuracy"],
      "num_params": result["num_params"],
      **inspection.patch_record(patches[name], grey),
    }
  table = inspection.patch_table(
    records, config.digit, _targets(config), config.max_size
  )
  _figures(config, workdir, image, patches, records)
  np.savez_compressed(
    workdir / "patches.npz",
    **{
      f"{name}_to_{t}": r["patched"]
      for name, found in patches.items()
      for t, r in found.items()
      if r["found"]
    },
  )
  seconds["total"] = time.perf_counter() - start
  results = {
    "config": dataclasses.asdict(config),
    "test_index": index,
    "models": records,
    "table": table,
  }
  sweeps.write_results(workdir, results, table=table, timings=seconds)
  return results


define_flags, main = _common.entry_points(Config, run, "adversarial_patch")

if __name__ == "__main__":
  _common.launch(main, define_flags)
