"""`TrainConfig`: everything a supervised run depends on, checked eagerly.

A config is a frozen dataclass whose fields are all plain values, so it can
be written to JSON beside the checkpoints and compared with the config of a
run that resumes. Every field is checked when the config is made
(`TrainConfig(...)` or `dataclasses.replace`): a bad value is a ValueError
(or TypeError) naming the field, what it must be and what it is.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from equivlab import checks

OPTIMIZERS = ("sgd", "momentum", "adam", "rmsprop", "adagrad")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
LOSSES = ("softmax_ce", "mse")
AUGMENTS = ("none", "shift", "crop_flip", "rotate")
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")

# Fields a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = frozenset(
  {
    "checkpoint_every_steps",
    "checkpoint_every_secs",
    "log_every_steps",
    "max_checkpoints",
    "num_devices",
    "progress",
    "data_dir",
    "download",
  }
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything a training run depends on; every field has a default.

  Attributes:
    model: a name for `equivlab.nn.models.get_model` ("mlp", "cnn", ...),
      or "custom" for a module of the user's own. `train_and_evaluate`
      given a module (`model=`) records it as "custom", with its class in
      `model_class` and its JSON-able attributes in `model_kwargs`.
    model_kwargs: keyword arguments of the model, as a mapping or a tuple
      of `(name, value)` pairs (stored as sorted pairs: hashable).
    model_class: the import path of a "custom" model's class,
      "package.module.QualName" (None for a named model); with it,
      `equivlab.training.build_model` rebuilds the module.
    dataset: a name for `equivlab.data.load_dataset`; its "train" split
      trains, its "test" split evaluates.
    extra_eval_datasets: more data sets whose "test" split is evaluated
      after every epoch, reported as `"<name>/test_loss"` and
      `"<name>/test_accuracy"` (e.g. "embedded_shift4").
    train_limit: use only the first `train_limit` training examples.
    test_limit: use only the first `test_limit` test examples.
    data_dir: tfds data directory (or the embedded cache directory).
    download: let tfds download a missing data set (needs internet).
    num_classes: number of logits; None takes `max(label) + 1` of the
      training labels. Labels outside `[0, num_classes)` are an error.
    num_epochs: passes over the training data.
    batch_size: global batch size (over all devices); the last partial
      batch of an epoch is dropped.
    eval_batch_size: evaluation batch size (rounded up to a multiple of the
      device count); evaluation pads the last batch and masks it out.
    optimizer: "sgd", "momentum", "adam", "rmsprop" or "adagrad".
    learning_rate: peak learning rate, > 0.
    momentum: momentum of "momentum" (heavy ball) and first-moment decay
      of "adam", in [0, 1).
    schedule: "constant", "cosine" (decay to 0 over the run) or
      "warmup_cosine" (linear warmup from 0, then cosine decay to 0).
    warmup_steps: warmup length of "warmup_cosine"; None = 5% of the steps.
    weight_decay: decoupled weight decay (Loshchilov & Hutter 2019):
      `w -= lr_t * weight_decay * w` after the optimizer's own update.
    l2: coefficient of the penalty `regularization.l2_penalty` (`l2 / 2 *
      sum w^2` over weights) added to the loss, so it passes through the
      optimizer, unlike `weight_decay`. Both apply to weight matrices and
      kernels (ndim >= 2), not to biases or normalisation scales.
    loss: "softmax_ce" (cross-entropy of the softmax) or "mse" (mean
      squared error between the logits and the one-hot labels).
    augment: "none"; "shift" (random integer shifts by up to `max_shift`);
      "crop_flip" (random crop with `crop_padding` and horizontal flip);
      "rotate" (uniform random angles in `[-max_angle, max_angle]`).
    max_shift: largest shift of `augment="shift"`, in pixels (>= 0).
    crop_padding: zero padding of `augment="crop_flip"`, in pixels (>= 0).
    max_angle: largest angle of `augment="rotate"`, in radians (>= 0).
    compute_dtype: "float32", "bfloat16" or "float16": the dtype of the
      forward and backward computation; parameters and optimizer state
      stay float32 (master weights). "float16" adds dynamic loss scaling
      (`jmp.DynamicLossScale`): the loss is multiplied by the scale before
      differentiation and the gradients divided by it; a step whose
      gradients are not finite is skipped and halves the scale.
    loss_scale_init: the first loss scale of "float16" (in [1, 2**64];
      2**15 as in jmp's example), halved after every skipped step.
    loss_scale_period: "float16" doubles the loss scale after this many
      finite steps in a row (>= 1; 2000 as jmp's default).
    num_devices: devices of the data-parallel mesh; None = all of them.
    seed: seeds initialisation, shuffling, augmentation and dropout.
    checkpoint_every_steps: also save every this many steps (None: only at
      epoch ends and by wall time).
    checkpoint_every_secs: also save when this many seconds have passed
      since the last save (None: never by time). Checkpoints are always
      written at the end of every epoch.
    max_checkpoints: how many checkpoints to keep.
    log_every_steps: write a per-step metrics record every this many steps.
    progress: show a tqdm progress bar (rate and ETA) on stderr.
  """

  model: str = "mlp"
  model_kwargs: Any = ()
  model_class: str | None = None
  dataset: str = "embedded"
  extra_eval_datasets: tuple[str, ...] = ()
  train_limit: int | None = None
  test_limit: int | None = None
  data_dir: str | None = None
  download: bool = False
  num_classes: int | None = None
  num_epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 500
  optimizer: str = "adam"
  learning_rate: float = 1e-3
  momentum: float = 0.9
  schedule: str = "constant"
  warmup_steps: int | None = None
  weight_decay: float = 0.0
  l2: float = 0.0
  loss: str = "softmax_ce"
  augment: str = "none"
  max_shift: int = 4
  crop_padding: int = 4
  max_angle: float = math.pi
  compute_dtype: str = "float32"
  loss_scale_init: float = 2.0**15
  loss_scale_period: int = 2000
  num_devices: int | None = None
  seed: int = 0
  checkpoint_every_steps: int | None = None
  checkpoint_every_secs: float | None = 300.0
  max_checkpoints: int = 2
  log_every_steps: int = 50
  progress: bool = True

  def __post_init__(self):
    # Normalised forms: sorted (name, value) pairs and a tuple of names.
    object.__setattr__(self, "model_kwargs", _kwargs_pairs(self.model_kwargs))
    if isinstance(self.extra_eval_datasets, list):
      object.__setattr__(
        self, "extra_eval_datasets", tuple(self.extra_eval_datasets)
      )
    validate_config(self)

  def to_json(self) -> dict[str, Any]:
    """The config as a JSON-ready dict (model_kwargs as [name, value])."""
    fields = dataclasses.asdict(self)
    fields["model_kwargs"] = [[k, v] for k, v in self.model_kwargs]
    fields["extra_eval_datasets"] = list(self.extra_eval_datasets)
    return json.loads(json.dumps(fields, default=repr))

  @classmethod
  def from_fields(cls, source: Any, /, **overrides: Any) -> TrainConfig:
    """The config of a study: the fields of `source` named as a config's.

    An experiment declares the training options it shares with the engine
    (`num_epochs`, `batch_size`, `learning_rate`, `train_limit`,
    `dataset`, `seed`, ...) under the engine's names, so they mean the same
    thing everywhere and are checked in one place: here.

    Args:
      source: a dataclass instance or a mapping; its entries whose names
        are `TrainConfig` fields are taken, the others ignored.
      **overrides: fields set on top (the study's fixed choices).

    Returns:
      The checked `TrainConfig`.

    Raises:
      TypeError: if `source` is neither a dataclass instance nor a
        mapping, or a field is of the wrong kind.
      ValueError: naming the first bad field (see `validate_config`).
    """
    if dataclasses.is_dataclass(source) and not isinstance(source, type):
      values = {
        f.name: getattr(source, f.name) for f in dataclasses.fields(source)
      }
    elif isinstance(source, Mapping):
      values = dict(source)
    else:
      raise TypeError(
        "source must be a dataclass instance or a mapping, got "
        f"{type(source).__name__}."
      )
    names = {f.name for f in dataclasses.fields(cls)}
    taken = {k: v for k, v in values.items() if k in names}
    return cls(**{**taken, **overrides})

  @classmethod
  def from_json(cls, fields: Mapping[str, Any]) -> TrainConfig:
    """The inverse of `to_json` (unknown keys are an error)."""
    fields = dict(fields)
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise ValueError(f"unknown TrainConfig fields {unknown} in {fields}.")
    return cls(**fields)


def _freeze(value: Any) -> Any:
  """Lists (e.g. read back from JSON) become tuples: modules must hash."""
  if isinstance(value, list | tuple):
    return tuple(_freeze(v) for v in value)
  return value


def _kwargs_pairs(kwargs: Any) -> tuple[tuple[str, Any], ...]:
  if isinstance(kwargs, Mapping):
    pairs = list(kwargs.items())
  else:
    try:
      pairs = [(k, v) for k, v in kwargs]
    except (TypeError, ValueError) as error:
      raise ValueError(
        "model_kwargs must be a mapping or a tuple of (name, value) pairs, "
        f"got {kwargs!r}."
      ) from error
  for name, _ in pairs:
    if not isinstance(name, str) or not name.isidentifier():
      raise ValueError(
        f"model_kwargs names must be identifiers, got {name!r} in {kwargs!r}."
      )
  return tuple(sorted(((k, _freeze(v)) for k, v in pairs), key=_name))


def _name(pair: tuple[str, Any]) -> str:
  return pair[0]


def model_kwargs_dict(config: TrainConfig) -> dict[str, Any]:
  """`config.model_kwargs` as a dict."""
  return dict(config.model_kwargs)


_POSITIVE_INTS = (
  "num_epochs",
  "batch_size",
  "eval_batch_size",
  "max_checkpoints",
  "log_every_steps",
  "loss_scale_period",
)
_OPTIONAL_POSITIVE_INTS = (
  "train_limit",
  "test_limit",
  "num_classes",
  "num_devices",
)


def check_checkpoint_cadence(config: Any) -> None:
  """`checkpoint_every_steps` (int >= 1) and `_secs` (> 0), or None.

  For any config with those two fields (`TrainConfig`, the experiments'
  configs).
  """
  checks.check_int(
    "checkpoint_every_steps",
    config.checkpoint_every_steps,
    minimum=1,
    allow_none=True,
  )
  checks.check_number(
    "checkpoint_every_secs",
    config.checkpoint_every_secs,
    minimum=0,
    strict_minimum=True,
    allow_none=True,
  )


def _check_model_class(config: TrainConfig) -> None:
  path = config.model_class
  if path is None:
    return
  if config.model != "custom":
    raise ValueError(
      f"model_class is only for model 'custom', got model {config.model!r} "
      f"with model_class {path!r}; set model='custom' or model_class=None."
    )
  parts = path.split(".") if isinstance(path, str) else []
  if len(parts) < 2 or not all(
    p.isidentifier() or p == "<locals>" for p in parts
  ):
    raise ValueError(
      "model_class must be an import path 'package.module.ClassName', got "
      f"{path!r}."
    )


def validate_config(config: TrainConfig) -> None:
  """Checks every field of `config` that can be checked without data.

  Raises:
    TypeError: naming the first field of the wrong kind.
    ValueError: naming the first bad field, what it must be and what it is.
  """
  if not isinstance(config, TrainConfig):
    raise TypeError(
      f"config must be a TrainConfig, got {type(config).__name__}."
    )
  for field, options in (
    ("optimizer", OPTIMIZERS),
    ("schedule", SCHEDULES),
    ("loss", LOSSES),
    ("augment", AUGMENTS),
    ("compute_dtype", COMPUTE_DTYPES),
  ):
    checks.check_choice(field, getattr(config, field), options)
  for field in _POSITIVE_INTS:
    checks.check_int(field, getattr(config, field), minimum=1)
  for field in _OPTIONAL_POSITIVE_INTS:
    checks.check_int(field, getattr(config, field), minimum=1, allow_none=True)
  for field in ("warmup_steps",):
    checks.check_int(field, getattr(config, field), minimum=0, allow_none=True)
  for field in ("max_shift", "crop_padding", "seed"):
    checks.check_int(field, getattr(config, field), minimum=0)
  checks.check_number(
    "learning_rate", config.learning_rate, minimum=0, strict_minimum=True
  )
  checks.check_number(
    "momentum", config.momentum, minimum=0, maximum=1, strict_maximum=True
  )
  # Above 2**64 the scaled float32 loss overflows for any loss above ~1e19.
  checks.check_number(
    "loss_scale_init", config.loss_scale_init, minimum=1, maximum=2.0**64
  )
  for field in ("weight_decay", "l2", "max_angle"):
    checks.check_number(field, getattr(config, field), minimum=0)
  check_checkpoint_cadence(config)
  for field in ("download", "progress"):
    if not isinstance(getattr(config, field), bool):
      raise TypeError(
        f"{field} must be a bool, got {getattr(config, field)!r}."
      )
  if not isinstance(config.model, str) or not config.model:
    raise ValueError(f"model must be a non-empty str, got {config.model!r}.")
  _check_model_class(config)
  if not isinstance(config.dataset, str) or not config.dataset:
    raise ValueError(
      f"dataset must be a non-empty str, got {config.dataset!r}."
    )
  if not isinstance(config.extra_eval_datasets, tuple) or not all(
    isinstance(n, str) and n for n in config.extra_eval_datasets
  ):
    raise ValueError(
      "extra_eval_datasets must be a tuple of data set names, got "
      f"{config.extra_eval_datasets!r}."
    )
