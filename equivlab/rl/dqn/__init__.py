"""DQN with a target network, the whole training loop under `jax.jit`.

Mnih et al., "Human-level control through deep reinforcement learning"
(Nature 2015); double DQN from van Hasselt, Guez & Silver (AAAI 2016).

- `config`: `DQNConfig` and its validation.
- `parts`: the environment, the Q-network and the optimizer a config builds.
- `loop`: `make_train(config) -> train(key)`, one `lax.scan` over the
  algorithm's steps (act, step, store, learn, update the target), and
  `make_loop` for runs that stop and resume between evaluation periods.
- `metrics`: flattening the per-iteration metrics, divergence checks.
- `runner`: many seeds at once, in vmapped groups run in threads.
- `driver`: `train_resumable(config, workdir, seeds=...)`, many seeds in
  chunks of evaluation periods with npz checkpoints and resume (import it
  as `from equivlab.rl.dqn import driver`; it needs the training engine's
  checkpoint helpers, which this package does not import).
"""

from equivlab.rl.dqn.config import DQNConfig, validate_config
from equivlab.rl.dqn.loop import (
  DQNLoop,
  DQNState,
  Transition,
  act,
  batch_loss,
  init_state,
  iteration,
  learn,
  make_loop,
  make_train,
  maybe_learn,
  step_envs,
  store,
  td_errors,
  train_then_evaluate,
)
from equivlab.rl.dqn.metrics import flatten_metrics, raise_if_diverged
from equivlab.rl.dqn.parts import (
  DQNParts,
  QNetwork,
  build,
  make_env,
  make_network,
  make_optimizer,
  q_values_at,
)
from equivlab.rl.dqn.runner import seed_runner, train_seeds

__all__ = [
  "DQNConfig",
  "DQNLoop",
  "DQNParts",
  "DQNState",
  "QNetwork",
  "Transition",
  "act",
  "batch_loss",
  "build",
  "flatten_metrics",
  "init_state",
  "iteration",
  "learn",
  "make_env",
  "make_loop",
  "make_network",
  "make_optimizer",
  "make_train",
  "maybe_learn",
  "q_values_at",
  "raise_if_diverged",
  "seed_runner",
  "step_envs",
  "store",
  "td_errors",
  "train_seeds",
  "train_then_evaluate",
  "validate_config",
]
