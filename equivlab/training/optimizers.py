"""The optimizer and learning-rate schedule of a `TrainConfig`."""

import optax

from equivlab.training.config import TrainConfig
from equivlab.training.regularization import weight_mask


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule of `config` over `total_steps` steps."""
  lr = config.learning_rate
  if config.schedule == "constant":
    return optax.constant_schedule(lr)
  if config.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, max(total_steps, 1))
  warmup = config.warmup_steps
  if warmup is None:
    warmup = max(1, total_steps // 20)
  warmup = min(warmup, max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
    0.0, lr, warmup, max(total_steps, warmup + 1)
  )


def make_optimizer(
  config: TrainConfig, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax optimizer of `config`, with decoupled weight decay.

  The chain is: the optimizer's scaling (momentum trace, Adam moments, RMS,
  or Adagrad's sum of squares), then `weight_decay * w` added (to the
  weights of `regularization.weight_mask`), then the scheduled learning
  rate; so the decay is decoupled from the adaptive scaling, as in AdamW.

  Args:
    config: the run's config.
    total_steps: length of the run, for the decaying schedules.

  Returns:
    `(tx, schedule)`.
  """
  schedule = make_schedule(config, total_steps)
  scale = {
    "sgd": optax.identity,
    "momentum": lambda: optax.trace(decay=config.momentum),
    "adam": lambda: optax.scale_by_adam(b1=config.momentum),
    "rmsprop": lambda: optax.scale_by_rms(decay=0.9, eps=1e-8),
    "adagrad": lambda: optax.scale_by_rss(initial_accumulator_value=0.1),
  }[config.optimizer]()
  parts = [scale]
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay, weight_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts), schedule
