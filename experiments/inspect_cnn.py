r"""Seed 002 problems 1-2: look inside a trained CNN.

Trains seed 003's convolutional model (3x3 conv blocks and a dense head) on
the embedded digits, then draws
1. the filters of every convolution layer as image grids;
2. the feature maps (after ReLU) of every layer for a 0 and an 8;
3. the predictions for a digit shifted left and right;
4. occlusion sensitivity of a digit (a 6, as in the seed): a grey patch slid
   over it, mapping (a) the true-class probability, (b) the highest
   probability and (c) the predicted label;
5. a search over patch positions and sizes for a patch that flips the
   prediction, reporting whether one exists (the seed could not find one).

    python -m experiments.inspect_cnn --workdir=/tmp/equivlab/inspect

Writes into --workdir: results.json, filters_layer<i>.png,
feature_maps_<digit>_layer<i>.png, shifted.png, occlusion.png, flip.png and the
training run under run/.
"""

import dataclasses
import json
import pathlib
import types
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from absl import flags, logging

from equivlab import data, models, occlusion, train, viz
from experiments import _launch


@dataclasses.dataclass(frozen=True)
class InspectConfig:
  """Settings of the CNN inspection.

  Attributes:
    features: channels of the three conv blocks of the "cnn" model.
    num_epochs: training epochs.
    batch_size: training batch size.
    learning_rate: Adam's learning rate.
    seed: run seed.
    train_limit: use only this many training digits (None: all).
    feature_digits: classes whose feature maps are drawn (seed: 0 and 8).
    shift_digit: class of the digit shifted left and right (seed: 1).
    shift: pixels of the left and right shifts.
    occlusion_digit: class of the occluded digit (seed: 6).
    patch_size: side of the grey patch of the occlusion maps.
    patch_value: grey level of the patch (the digits' ink is 1, paper 0).
    search_sizes: patch sides tried by the flip search.
    num_devices: devices of the data-parallel mesh (None: all).
    progress: show a progress bar.
  """

  features: tuple[int, ...] = (16, 32, 64)
  num_epochs: int = 5
  batch_size: int = 64
  learning_rate: float = 1e-3
  seed: int = 0
  train_limit: int | None = None
  feature_digits: tuple[int, ...] = (0, 8)
  shift_digit: int = 1
  shift: int = 4
  occlusion_digit: int = 6
  patch_size: int = 11
  patch_value: float = 0.5
  search_sizes: tuple[int, ...] = (3, 5, 7, 9, 11, 13)
  num_devices: int | None = None
  progress: bool = True


def pick_digit(
  images: np.ndarray, labels: np.ndarray, predicted: np.ndarray, digit: int
) -> int:
  """Index of the first image of class `digit`, preferring correct ones.

  Args:
    images: `[N, H, W, C]` (only its length is used).
    labels: `[N]` true classes.
    predicted: `[N]` predicted classes.
    digit: the class wanted.

  Returns:
    The index of the first correctly classified image of that class, else
    of the first image of that class.

  Raises:
    ValueError: if no image has that class.
  """
  del images
  matches = np.flatnonzero(labels == digit)
  if matches.size == 0:
    raise ValueError(f"no image of class {digit} among the test digits.")
  correct = matches[predicted[matches] == digit]
  return int(correct[0] if correct.size else matches[0])


def conv_activations(
  model: models.CNN, variables: Any, image: np.ndarray
) -> list[np.ndarray]:
  """The ReLU outputs of every conv block of a `models.CNN` for one image.

  Args:
    model: a `models.CNN` (no normalisation between conv and ReLU, so the
      ReLU of the captured conv output is the block's activation).
    variables: its variables.
    image: `[H, W, C]`.

  Returns:
    One `[H_l, W_l, C_l]` array per conv layer, before the max pool.
  """
  _, state = model.apply(
    variables,
    np.asarray(image, np.float32)[None],
    train=False,
    capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Conv),
    mutable=["intermediates"],
  )
  convs = state["intermediates"]
  names = sorted(convs, key=lambda n: int(n.split("_")[-1]))
  return [np.maximum(np.asarray(convs[n]["__call__"][0][0]), 0) for n in names]


def run(config: InspectConfig, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains the CNN and writes every picture of seed 002 problems 1-2.

  Args:
    config: the experiment's settings.
    workdir: where results.json and the PNGs go.

  Returns:
    The contents of results.json: "test_accuracy", "shifted" (label and
    predictions with probabilities of the digit moved left, unmoved and
    right), "occlusion" (index, label, smallest true-class probability and
    the labels the map shows), "flip_search" (from
    `equivlab.occlusion.find_flipping_patch`) and "files".

  Raises:
    ValueError: for a bad shift or patch size, or a digit class that the
      test digits lack.
  """
  if config.shift < 0:
    raise ValueError(f"shift must be >= 0, got {config.shift}.")
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  kwargs = (("features", tuple(config.features)),)
  metrics = train.train_and_evaluate(
    train.TrainConfig(
      model="cnn",
      model_kwargs=kwargs,
      dataset="embedded",
      train_limit=config.train_limit,
      num_epochs=config.num_epochs,
      batch_size=config.batch_size,
      learning_rate=config.learning_rate,
      seed=config.seed,
      num_devices=config.num_devices,
      progress=config.progress,
      checkpoint_every_steps=10**9,
    ),
    workdir / "run",
  )
  train_config, variables = train.load_variables(workdir / "run")
  model = models.get_model(
    "cnn", num_classes=train_config.num_classes, **dict(kwargs)
  )
  apply = jax.jit(lambda x: model.apply(variables, x, train=False))
  test_x, test_y = data.load_dataset("embedded", "test")
  predicted = np.argmax(
    np.asarray(models.apply_in_batches(model, variables, test_x)), -1
  )
  files = []

  # 1. Filters of every layer.
  params = variables["params"]
  conv_names = sorted(
    (n for n in params if n.startswith("Conv_")),
    key=lambda n: int(n.split("_")[-1]),
  )
  for i, name in enumerate(conv_names):
    files.append(
      viz.plot_filters(
        np.asarray(params[name]["kernel"]),
        workdir / f"filters_layer{i + 1}.png",
        max_in=8,
        max_out=16,
        title=f"Layer {i + 1} filters",
      )
    )

  # 2. Feature maps of chosen digits.
  for digit in config.feature_digits:
    index = pick_digit(test_x, test_y, predicted, digit)
    for layer, maps in enumerate(
      conv_activations(model, variables, test_x[index])
    ):
      files.append(
        viz.plot_feature_maps(
          maps,
          workdir / f"feature_maps_{digit}_layer{layer + 1}.png",
          image=test_x[index],
          max_maps=15,
          title=f"Digit {digit}: layer {layer + 1} feature maps (after ReLU)",
        )
      )

  # 3. A digit shifted left and right.
  index = pick_digit(test_x, test_y, predicted, config.shift_digit)
  shifts = np.array([[0, -config.shift], [0, 0], [0, config.shift]], np.int32)
  moved = np.asarray(
    data.translate(np.repeat(test_x[index][None], 3, 0), shifts)
  )
  probs = np.asarray(jax.nn.softmax(apply(moved), axis=-1))
  shifted = [
    {
      "shift_px": int(dx),
      "predicted": int(np.argmax(p)),
      "probability": float(np.max(p)),
    }
    for (_, dx), p in zip(shifts, probs, strict=True)
  ]
  files.append(
    viz.plot_images(
      moved,
      workdir / "shifted.png",
      titles=[
        f"{name}\npredicted {s['predicted']} (p={s['probability']:.3f})"
        for name, s in zip(
          (f"left {config.shift}px", "original", f"right {config.shift}px"),
          shifted,
          strict=True,
        )
      ],
      title=f"A {config.shift_digit} shifted left and right",
    )
  )

  # 4. Occlusion maps.
  index = pick_digit(test_x, test_y, predicted, config.occlusion_digit)
  image = test_x[index]
  maps = occlusion.occlusion_maps(
    apply,
    image,
    config.occlusion_digit,
    patch_size=config.patch_size,
    value=config.patch_value,
  )
  files.append(
    viz.plot_occlusion(
      image,
      maps,
      workdir / "occlusion.png",
      label=config.occlusion_digit,
      patch_size=config.patch_size,
    )
  )
  true_prob = np.asarray(maps["true_prob"])
  row, col = np.unravel_index(np.argmin(true_prob), true_prob.shape)
  occlusion_result = {
    "test_index": index,
    "label": config.occlusion_digit,
    "clean_probability": float(maps["clean_probs"][config.occlusion_digit]),
    "min_true_probability": float(true_prob.min()),
    "most_sensitive_centre": [int(row), int(col)],
    "labels_in_map": sorted(int(v) for v in np.unique(maps["label"])),
  }

  # 5. Search for a patch that flips the prediction.
  search = occlusion.find_flipping_patch(
    apply,
    image,
    config.occlusion_digit,
    sizes=config.search_sizes,
    value=config.patch_value,
  )
  search["flip_fraction"] = {
    str(k): v for k, v in search["flip_fraction"].items()
  }
  if search["found"]:
    patched = occlusion.occlude(
      image, search["row"], search["col"], search["size"], config.patch_value
    )
    caption = (
      f"{search['size']}x{search['size']} patch at ({search['row']}, "
      f"{search['col']})\npredicted {search['new_label']} "
      f"(p={search['new_prob']:.3f})"
    )
  else:
    patched = image
    caption = f"no patch of sizes\n{list(config.search_sizes)} flips it"
  files.append(
    viz.plot_images(
      np.stack([image, np.asarray(patched)]),
      workdir / "flip.png",
      titles=[f"original\npredicted {search['clean_label']}", caption],
      title="Search for an occlusion that changes the prediction",
    )
  )
  results = {
    "config": dataclasses.asdict(config),
    "test_accuracy": metrics["test_accuracy"],
    "num_params": metrics["num_params"],
    "shifted": shifted,
    "occlusion": occlusion_result,
    "flip_search": search,
    "files": [pathlib.Path(f).name for f in files],
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  lines = [
    f"test accuracy: {metrics['test_accuracy']:.4f}",
    "shifted digit: "
    + ", ".join(f"{s['shift_px']:+d}px -> {s['predicted']}" for s in shifted),
    f"occlusion: p(true) falls from {occlusion_result['clean_probability']:.3f}"
    f" to {occlusion_result['min_true_probability']:.3f} at centre "
    f"{occlusion_result['most_sensitive_centre']}",
    "flip search: "
    + (
      f"found, {search['size']}x{search['size']} patch at "
      f"({search['row']}, {search['col']}) -> {search['new_label']}"
      if search["found"]
      else "no flipping patch exists among the sizes tried"
    ),
  ]
  print("\n".join(lines))
  logging.info("wrote %d files to %s", len(files) + 1, workdir)
  return results


def define_flags(
  flag_values: flags.FlagValues = flags.FLAGS,
) -> types.SimpleNamespace:
  """Registers this experiment's flags; returns their holders.

  Called only when the module runs as a script (and by tests, with a fresh
  `flags.FlagValues()`), so that importing several experiments into one
  process never defines a flag such as --workdir twice.
  """
  workdir = flags.DEFINE_string(
    "workdir",
    "/tmp/equivlab/inspect_cnn",
    help="Where results go.",
    flag_values=flag_values,
  )
  num_epochs = flags.DEFINE_integer(
    "num_epochs",
    InspectConfig.num_epochs,
    help="Training epochs.",
    flag_values=flag_values,
  )
  shift = flags.DEFINE_integer(
    "shift",
    InspectConfig.shift,
    help="Pixels of the left and right shifts.",
    flag_values=flag_values,
  )
  patch_size = flags.DEFINE_integer(
    "patch_size",
    InspectConfig.patch_size,
    help="Side of the occluding patch.",
    flag_values=flag_values,
  )
  patch_value = flags.DEFINE_float(
    "patch_value",
    InspectConfig.patch_value,
    help="Grey level of the occluding patch (ink is 1, paper 0).",
    flag_values=flag_values,
  )
  seed = flags.DEFINE_integer(
    "seed",
    InspectConfig.seed,
    help="Seed of the run: weights, data order and augmentation.",
    flag_values=flag_values,
  )
  num_devices = flags.DEFINE_integer(
    "num_devices",
    None,
    help="Devices for data parallelism (default: all).",
    flag_values=flag_values,
  )
  return types.SimpleNamespace(
    workdir=workdir,
    num_epochs=num_epochs,
    shift=shift,
    patch_size=patch_size,
    patch_value=patch_value,
    seed=seed,
    num_devices=num_devices,
  )


def main(argv: Sequence[str], holders: types.SimpleNamespace) -> None:
  del argv
  run(
    InspectConfig(
      num_epochs=holders.num_epochs.value,
      shift=holders.shift.value,
      patch_size=holders.patch_size.value,
      patch_value=holders.patch_value.value,
      seed=holders.seed.value,
      num_devices=holders.num_devices.value,
    ),
    holders.workdir.value,
  )


if __name__ == "__main__":
  _launch.run(main, define_flags)
