r"""Equivariance demo: a random P4CNN is rotation invariant, a plain CNN is not.

Cohen & Welling, "Group Equivariant Convolutional Networks" (ICML 2016);
seed 000 part 1. Takes a real digit from the embedded MNIST subset, rotates
it by 0, 90, 180 and 270 degrees (and mirrors it, for `--group=p4m`), and
feeds every copy to an untrained P4CNN and to an untrained plain CNN of the
same layout. It prints the invariance error of both networks' logits,

    max_g max |logits(g x) - logits(x)| / max |logits(x)|,

and draws the P4CNN's lifted feature maps for each rotated input: as the
digit turns, every map turns with it AND moves one step along the group axis
(the columns cycle).

    python -m experiments.equivariance_demo --workdir=/tmp/equivlab/demo

Writes into --workdir: results.json and lifted_feature_maps.png.
"""

import dataclasses
import json
import pathlib
import time
import types
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from equivlab import data, gconv, groups, layers
from experiments import _launch

_LIFTING = {"p4": gconv.lifting_conv, "p4m": gconv.lifting_conv_p4m}


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
    None,
    "Directory for results.json and the PNG.",
    flag_values=flag_values,
  )
  group = flags.DEFINE_enum(
    "group",
    "p4",
    ["p4", "p4m"],
    "Group of the equivariant network.",
    flag_values=flag_values,
  )
  features = flags.DEFINE_integer(
    "features",
    10,
    "G-channels per hidden layer of the P4CNN.",
    flag_values=flag_values,
  )
  digit = flags.DEFINE_integer(
    "digit_index",
    0,
    "Which test digit of the embedded data set to rotate.",
    flag_values=flag_values,
  )
  channel = flags.DEFINE_integer(
    "channel", 0, "Which lifted G-channel to draw.", flag_values=flag_values
  )
  seed = flags.DEFINE_integer(
    "seed", 0, "Seed of the random weights.", flag_values=flag_values
  )
  return types.SimpleNamespace(
    workdir=workdir,
    group=group,
    features=features,
    digit=digit,
    channel=channel,
    seed=seed,
  )


@dataclasses.dataclass(frozen=True)
class DemoConfig:
  """Settings of the equivariance demo.

  Attributes:
    group: "p4" or "p4m".
    features: G-channels per hidden layer of the P4CNN.
    digit_index: the test digit to transform.
    channel: the lifted G-channel drawn in the picture.
    seed: seed of both networks' random weights.
    cache_dir: the embedded data set's cache (None: the default).
  """

  group: str = "p4"
  features: int = 10
  digit_index: int = 0
  channel: int = 0
  seed: int = 0
  cache_dir: str | None = None


class PlainCNN(nn.Module):
  """The P4CNN's layout with ordinary convolutions (the Z2CNN)."""

  num_classes: int = 10
  features: int = 20

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = x
    for layer in range(6):
      h = nn.relu(nn.Conv(self.features, (3, 3), padding="VALID")(h))
      if layer == 1:
        h = nn.max_pool(h, (2, 2), (2, 2))
    h = nn.Conv(self.num_classes, (4, 4), padding="VALID")(h)
    return jnp.mean(h, axis=(1, 2))


def invariance_error(logits: np.ndarray) -> float:
  """`max_g max |logits[g] - logits[0]| / max |logits[0]|`, logits `[G, K]`."""
  base = logits[0]
  return float(np.max(np.abs(logits[1:] - base)) / np.max(np.abs(base)))


def _plot(path, images, lifted, channel, group):
  import matplotlib  # noqa: PLC0415 (only the demo draws)

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # noqa: PLC0415

  order = lifted.shape[-1]
  rows, cols = len(images), order + 1
  fig, axes = plt.subplots(
    rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False
  )
  vmax = float(np.max(np.abs(lifted[..., channel, :])))
  for i, g in enumerate(groups.elements(group)[:rows]):
    axes[i, 0].imshow(images[i, ..., 0], cmap="gray")
    name = f"rot {90 * g.rotation}" + (" + mirror" if g.mirror else "")
    axes[i, 0].set_ylabel(name, fontsize=7)
    for s in range(order):
      axes[i, s + 1].imshow(
        lifted[i, ..., channel, s], cmap="RdBu_r", vmin=-vmax, vmax=vmax
      )
      if i == 0:
        axes[0, s + 1].set_title(f"group index {s}", fontsize=7)
  for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title("input", fontsize=7)
  fig.suptitle(
    f"Lifted feature maps (channel {channel}, {group}): each row's maps are "
    "the first row's, rotated and cycled along the group axis",
    fontsize=8,
  )
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def run(config: DemoConfig, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Runs the demo and writes results.json and lifted_feature_maps.png.

  Args:
    config: the settings.
    workdir: the output directory (created if missing).

  Returns:
    The dictionary written to results.json.

  Raises:
    ValueError: for an unknown group, a digit index out of range or a
      channel index of the lifted maps out of range.
  """
  start = time.time()
  order = groups.group_order(config.group)
  if not 0 <= config.channel < config.features:
    raise ValueError(
      f"channel must be in 0..{config.features - 1}, got {config.channel}."
    )
  images, labels = data.embedded_digits("test", cache_dir=config.cache_dir)
  if not 0 <= config.digit_index < len(images):
    raise ValueError(
      f"digit_index must be in 0..{len(images) - 1}, got {config.digit_index}."
    )
  digit = images[config.digit_index : config.digit_index + 1]
  elems = groups.elements(config.group)
  batch = np.concatenate([groups.act_on_image(g, digit) for g in elems])

  # The "rbg" generator (XLA's RngBitGenerator) compiles the two inits ~10x
  # faster than threefry on CPU; the weights only need to be random.
  key = jax.random.key(config.seed, impl="rbg")
  key_eq, key_plain = jax.random.split(key)
  equivariant = layers.P4CNN(features=config.features, group=config.group)
  plain = PlainCNN(features=config.features * order)
  eq_vars = jax.jit(equivariant.init)(key_eq, batch)
  plain_vars = jax.jit(plain.init)(key_plain, batch)

  @jax.jit
  def forward(eq_vars, plain_vars, x):
    lift = eq_vars["params"]["LiftingConv_0"]
    lifting = _LIFTING[config.group]
    lifted = lifting(x, lift["kernel"], padding="VALID")
    lifted = lifted + lift["bias"].reshape(1, 1, 1, -1, 1)
    return equivariant.apply(eq_vars, x), plain.apply(plain_vars, x), lifted

  eq_logits, plain_logits, lifted = map(
    np.asarray, forward(eq_vars, plain_vars, batch)
  )
  # Lifting equivariance, checked on the drawn maps themselves.
  lifted_error = max(
    float(np.max(np.abs(lifted[i] - groups.act_on_map(g, lifted[:1])[0])))
    for i, g in enumerate(elems)
  ) / float(np.max(np.abs(lifted[0])))

  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _plot(
    workdir / "lifted_feature_maps.png",
    batch,
    lifted,
    config.channel,
    config.group,
  )
  results = {
    "config": dataclasses.asdict(config),
    "digit_label": int(labels[config.digit_index]),
    "group_elements": [list(g[:2]) for g in elems],
    "p4cnn_invariance_error": invariance_error(eq_logits),
    "plain_cnn_invariance_error": invariance_error(plain_logits),
    "lifting_equivariance_error": lifted_error,
    "p4cnn_num_params": int(
      sum(p.size for p in jax.tree.leaves(eq_vars["params"]))
    ),
    "plain_cnn_num_params": int(
      sum(p.size for p in jax.tree.leaves(plain_vars["params"]))
    ),
    "seconds": time.time() - start,
  }
  (workdir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
  return results


def main(argv: Sequence[str], holders: types.SimpleNamespace) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not holders.workdir.value:
    raise app.UsageError("--workdir is required.")
  config = DemoConfig(
    group=holders.group.value,
    features=holders.features.value,
    digit_index=holders.digit.value,
    channel=holders.channel.value,
    seed=holders.seed.value,
  )
  logging.info("Equivariance demo: %s", config)
  results = run(config, holders.workdir.value)
  name = "P4MCNN" if config.group == "p4m" else "P4CNN"
  what = "rotations and mirrors" if config.group == "p4m" else "rotations"
  print(
    f"Digit {results['digit_label']} under the {len(results['group_elements'])}"
    f" {what} of {config.group} (random weights):"
  )
  print(
    f"  {name:9s} invariance error {results['p4cnn_invariance_error']:.2e}"
    f"  ({results['p4cnn_num_params']} parameters)"
  )
  print(
    f"  plain CNN invariance error {results['plain_cnn_invariance_error']:.2e}"
    f"  ({results['plain_cnn_num_params']} parameters)"
  )
  print(
    f"  lifting equivariance error {results['lifting_equivariance_error']:.2e}"
  )
  print(
    f"Wrote results.json and lifted_feature_maps.png to {holders.workdir.value}"
  )


if __name__ == "__main__":
  _launch.run(main, define_flags)
