r"""Where does a network lose its symmetry? The equivariance report per layer.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016): a
G-CNN is equivariant layer by layer, so the first layer whose output is not
is where the symmetry is lost. `equivlab.testing.equivariance_report` runs
the network on real digits (zero-padded or cropped to --image_size) and on
each rotated (and mirrored) copy, measures every submodule's output, and
names the first layer above float error with the reason gconv's exactness
predictor gives.

    python -m experiments.symmetry_report --model=p4cnn
    python -m experiments.symmetry_report --model=p4cnn_strided --image_size=28
    python -m experiments.symmetry_report --model=z2cnn

"p4cnn_strided" is the P4CNN layout with a stride-2 group convolution in
place of the 2x2 max pool: exact on odd sizes (27), not on even ones (28).
Writes into --workdir (default runs/symmetry_report): results.json,
results.md (the table) and symmetry_report.png.
"""

import dataclasses
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from equivlab import checks, data, testing
from equivlab.analysis import viz
from equivlab.nn import layers, models
from equivlab.training import sweeps
from experiments import _common

MODELS = ("p4cnn", "p4mcnn", "p4cnn_strided", "z2cnn")


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the symmetry report (seconds on one CPU core).

  Attributes:
    model: "p4cnn", "p4mcnn", "p4cnn_strided" or "z2cnn".
    image_size: the side the digits are padded or cropped to (>= 28).
    group: "p4" (rotations) or "p4m" (and mirrors) to measure.
    features: channels (G-channels for the G-CNNs) per hidden layer.
    batch: how many test digits to measure on.
    seed: seed of the network's random weights.
    cache_dir: the embedded data set's cache directory (default: the
      user's cache directory).
  """

  model: str = "p4cnn"
  image_size: int = 28
  group: str = "p4"
  features: int = 10
  batch: int = 4
  seed: int = 0
  cache_dir: str | None = None

  def __post_init__(self):
    _common.check_config(self)
    checks.check_choice("model", self.model, MODELS)
    checks.check_int("image_size", self.image_size, minimum=28)
    checks.check_choice("group", self.group, testing.GROUPS)
    checks.check_int("features", self.features, minimum=1)
    checks.check_int("batch", self.batch, minimum=1, maximum=1000)
    checks.check_int("seed", self.seed, minimum=0)


class StridedP4CNN(nn.Module):
  """P4CNN's layout with a stride-2 group conv instead of the max pool.

  Attributes:
    num_classes: the number of logits.
    features: G-channels per hidden layer.
    group: "p4" or "p4m".
  """

  num_classes: int = 10
  features: int = 10
  group: str = "p4"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Square images `[N, H, H, C]` -> logits `[N, num_classes]`."""
    opts = dict(padding="VALID", group=self.group)
    h = layers.LiftingConv(self.features, 3, **opts)(x)
    for stride in (2, 1, 1):
      h = nn.relu(layers.GroupBatchNorm(use_running_average=not train)(h))
      h = layers.GroupConv(self.features, 3, strides=stride, **opts)(h)
    h = layers.GroupConv(self.num_classes, 3, **opts)(nn.relu(h))
    return jnp.mean(layers.GroupPool()(h), axis=(1, 2))


def build(config: Config) -> nn.Module:
  """The network the config names."""
  group = "p4m" if config.model == "p4mcnn" else config.group
  if config.model == "p4cnn_strided":
    return StridedP4CNN(features=config.features, group=group)
  if config.model == "z2cnn":
    return models.get_model("z2cnn")
  return models.get_model(config.model, features=config.features, group=group)


def digits(config: Config) -> np.ndarray:
  """Test digits `[batch, image_size, image_size, 1]`, padded at the end."""
  images, _ = data.embedded_digits("test", cache_dir=config.cache_dir)
  pad = config.image_size - images.shape[1]
  x = images[: config.batch].astype(np.float32)
  return np.pad(x, ((0, 0), (0, pad), (0, pad), (0, 0)))


def run(config: Config, workdir: str | pathlib.Path) -> dict:
  """Measures the network's report; writes the table, JSON and figure.

  Returns:
    The contents of results.json: "config", "model" (its class), the
    report's `to_dict()` under "report", and "table".
  """
  model, x = build(config), digits(config)
  key = jax.random.key(config.seed, impl="rbg")
  variables = jax.jit(lambda k: model.init(k, x))(key)
  report = testing.equivariance_report(model, variables, x, group=config.group)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  name = f"{config.model}, {config.image_size}x{config.image_size}"
  viz.plot_equivariance_report(
    report,
    workdir / "symmetry_report.png",
    title=f"equivariance per layer: {name}, {config.group}",
  )
  table = f"{name} ({config.group})\n\n```\n{report}\n```"
  results = {
    "config": dataclasses.asdict(config),
    "model": type(model).__name__,
    "report": report.to_dict(),
    "table": table,
  }
  sweeps.write_results(workdir, results, table=table)
  return results


define_flags, main = _common.entry_points(Config, run, "symmetry_report")

if __name__ == "__main__":
  _common.launch(main, define_flags)
