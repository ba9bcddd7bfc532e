r"""A mutation pass over equivlab's core with hand-written one-line mutants.

Each mutant is a plausible one-line bug (a wrong sign, axis, index, period
or parameter set) in the group convolutions, BPTT/TBPTT, the DQN loop and
its parts, the training loop and checkpoints, the derivations or the
testing API. For each, this script copies the tree ONCE into a temporary
folder, writes the mutated file there (never in the checkout), runs the
mutant's test selection with `pytest -x -q`, and restores the file. A
mutant is KILLED when the tests fail (or time out), SURVIVES when they
pass. It prints each result, the score and the survivors.

  python tools/mutants.py                   # every mutant
  python tools/mutants.py --only=dqn,rnn-3  # ids or id prefixes
  python tools/mutants.py --list            # the mutants, no runs
  python tools/mutants.py --baseline        # first check the selections pass

A mutant whose text is not found (the code moved) is reported as STALE and
counts as neither; one marked `equivalent` (no behaviour changes, so no
test can kill it; the reason is written beside it) runs but is left out of
the score.
"""

import argparse
import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Mutant:
  """One edit: replace `old` (its `occurrence`-th match) by `new` in `path`.

  `tests` are pytest arguments (files, `-k` filters) that should kill it.
  `equivalent` says why no test can kill it (it changes no behaviour);
  such a mutant is run but left out of the score.
  """

  id: str
  path: str
  old: str
  new: str
  tests: tuple[str, ...]
  occurrence: int = 0
  equivalent: str = ""


_GCONV = (
  "tests/gconv_test.py",
  "-k",
  "design or naive or control or filter_banks or actions or wrong_roll",
)
_RNN = ("tests/rnn_test.py", "-k", "bptt or two_unit or masked")
_VL = ("tests/value_learning_test.py",)
_DQN = (
  "tests/dqn_test.py",
  "tests/dqn_target_test.py",
  "-k",
  "TargetUpdate or Epsilon or TDError or Probe or Loop or target",
)
_TRAIN = (
  "tests/train_test.py",
  "-k",
  "hand_written_sgd or lowers_the_loss or learns_and_writes or masked "
  "or rerun_of_a_finished",
)
_CKPT = ("tests/training_checkpoint_test.py", "-k", "damaged or epoch_ends")
_DERIV = ("tests/derivations_test.py",)
_TESTING = ("tests/testing_test.py", "-k", "not readme and not strategy")

MUTANTS = (
  # --- group convolutions -------------------------------------------------
  Mutant(
    "gconv-1",
    "equivlab/gconv/banks.py",
    "moved = moved[..., groups.group_permutation(g, gin)]",
    "moved = moved[..., groups.group_permutation(groups.inverse(g), gin)]",
    _GCONV,
  ),
  Mutant(
    "gconv-2",
    "equivlab/gconv/banks.py",
    "jnp.transpose(bank, (1, 2, 3, 4, 0)).reshape(kh, kw, cin, -1)",
    "jnp.transpose(bank, (1, 2, 3, 0, 4)).reshape(kh, kw, cin, -1)",
    _GCONV,
  ),
  Mutant(
    "gconv-3",
    "equivlab/gconv/banks.py",
    "flat = jnp.transpose(w, (0, 1, 3, 2, 4))",
    "flat = jnp.transpose(w, (1, 0, 3, 2, 4))",
    _GCONV,
  ),
  Mutant(
    "gconv-4",
    "equivlab/gconv/conv.py",
    "x = jnp.reshape(f, (*f.shape[:3], f.shape[3] * order))",
    "x = jnp.reshape(jnp.swapaxes(f, 3, 4), (*f.shape[:3], f.shape[3] "
    "* order))",
    _GCONV,
  ),
  Mutant(
    "gconv-5",
    "equivlab/gconv/actions.py",
    "jnp.roll(jnp.rot90(jnp.asarray(f), k, axes=(1, 2)), k, axis=-1)",
    "jnp.roll(jnp.rot90(jnp.asarray(f), k, axes=(1, 2)), -k, axis=-1)",
    _GCONV,
  ),
  Mutant(
    "gconv-6",
    "equivlab/gconv/actions.py",
    "return jnp.flip(jnp.asarray(x), axis=2)",
    "return jnp.flip(jnp.asarray(x), axis=1)",
    _GCONV,
  ),
  Mutant(
    "gconv-7",
    "equivlab/gconv/pool.py",
    "    return jnp.mean(f, axis=-1)",
    "    return jnp.sum(f, axis=-1)",
    ("tests/gconv_test.py", "tests/layers_test.py", "-k", "group_pool"),
  ),
  Mutant(
    "gconv-8",
    "equivlab/groups.py",
    "sign = -1 if g.mirror else 1",
    "sign = 1",
    ("tests/groups_test.py",),
  ),
  Mutant(
    "gconv-9",
    "equivlab/groups.py",
    "rot = g.rotation if g.mirror else (-g.rotation) % 4",
    "rot = g.rotation",
    ("tests/groups_test.py",),
  ),
  # --- BPTT / TBPTT ---------------------------------------------------------
  Mutant(
    "rnn-1",
    "equivlab/rnn/bptt.py",
    "da = m * dh * (1 - h * h)",
    "da = m * dh * (1 - h)",
    _RNN,
  ),
  Mutant(
    "rnn-2",
    "equivlab/rnn/bptt.py",
    "dh_prev = w_hh.T @ da + (1 - m) * dh",
    "dh_prev = w_hh @ da + (1 - m) * dh",
    _RNN,
  ),
  Mutant(
    "rnn-3",
    "equivlab/rnn/bptt.py",
    '"W_hh": das.T @ h_prevs,',
    '"W_hh": das.T @ hs,',
    _RNN,
  ),
  Mutant(
    "rnn-4",
    "equivlab/rnn/bptt.py",
    '"b_z": jnp.sum(d_out, axis=0),',
    '"b_z": jnp.mean(d_out, axis=0),',
    _RNN,
  ),
  Mutant(
    "rnn-5",
    "equivlab/rnn/bptt.py",
    "(d_from_out, hs, mask), reverse=True",
    "(d_from_out, hs, mask), reverse=False",
    _RNN,
  ),
  Mutant(
    "rnn-6",
    "equivlab/rnn/bptt.py",
    "dh_prev = w_hh.T @ da + (1 - m) * dh",
    "dh_prev = w_hh.T @ da",
    _RNN,
    equivalent=(
      "padding only ever follows the valid steps, so dh is zero wherever "
      "the mask is"
    ),
  ),
  Mutant(
    "rnn-7",
    "equivlab/rnn/bptt.py",
    "d_out = (mask * factor)[:, None] * (probs - onehot)",
    "d_out = factor * (probs - onehot)",
    _RNN,
  ),
  Mutant(
    "rnn-8",
    "equivlab/rnn/tbptt.py",
    "grad_acc = jax.tree.map(jnp.add, grad_acc, grads)",
    "grad_acc = grads",
    ("tests/rnn_test.py", "-k", "tbptt"),
  ),
  Mutant(
    "rnn-9",
    "equivlab/rnn/tbptt.py",
    "return (loss_acc + loss, grad_acc, carry), None",
    "return (loss_acc + loss, grad_acc, carry0), None",
    ("tests/rnn_test.py", "-k", "tbptt"),
  ),
  Mutant(
    "rnn-10",
    "equivlab/rnn/tbptt.py",
    "params = jax.tree.map(jnp.add, params, updates)",
    "params = jax.tree.map(jnp.subtract, params, updates)",
    ("tests/rnn_test.py", "-k", "tbptt"),
  ),
  # --- TD errors and the DQN loop -------------------------------------------
  Mutant(
    "dqn-1",
    "equivlab/rl/value_learning.py",
    "target_tm1 = r_t + discount_t * jnp.max(q_t)",
    "target_tm1 = r_t + jnp.max(q_t)",
    _VL,
  ),
  Mutant(
    "dqn-2",
    "equivlab/rl/value_learning.py",
    "a_t = jnp.argmax(q_t_selector)",
    "a_t = jnp.argmax(q_t_value)",
    _VL,
  ),
  Mutant(
    "dqn-3",
    "equivlab/rl/value_learning.py",
    "target_tm1 = r_t + discount_t * q_t_value[a_t]",
    "target_tm1 = r_t + discount_t * q_t_selector[a_t]",
    _VL,
  ),
  Mutant(
    "dqn-4",
    "equivlab/rl/value_learning.py",
    "return jax.lax.stop_gradient(x) if stop_target_gradients else x",
    "return x",
    _VL,
  ),
  Mutant(
    "dqn-5",
    "equivlab/rl/value_learning.py",
    "return target_tm1 - q_tm1[a_tm1]",
    "return q_tm1[a_tm1] - target_tm1",
    _VL,
  ),
  Mutant(
    "dqn-6",
    "equivlab/rl/value_learning.py",
    "jnp.ones((pad,), discount_t.dtype)",
    "jnp.zeros((pad,), discount_t.dtype)",
    _VL,
  ),
  Mutant(
    "dqn-7",
    "equivlab/rl/dqn/loop.py",
    "q_t_value = network.apply(target_params, batch.next_obs)",
    "q_t_value = network.apply(params, batch.next_obs)",
    _DQN,
  ),
  Mutant(
    "dqn-8",
    "equivlab/rl/dqn/loop.py",
    "q_t_selector = network.apply(params, batch.next_obs)",
    "q_t_selector = network.apply(target_params, batch.next_obs)",
    _DQN,
  ),
  Mutant(
    "dqn-9",
    "equivlab/rl/dqn/loop.py",
    "parts, params, opt_state, state.target_params, state.buffer, sample_bits",
    "parts, params, opt_state, state.params, state.buffer, sample_bits",
    _DQN,
  ),
  Mutant(
    "dqn-10",
    "equivlab/rl/dqn/loop.py",
    "      config.target_period,\n",
    "      config.target_period + 1,\n",
    _DQN,
  ),
  Mutant(
    "dqn-11",
    "equivlab/rl/dqn/loop.py",
    "& (state.env_steps >= config.learning_starts)",
    "& (state.env_steps >= 0)",
    _DQN,
  ),
  Mutant(
    "dqn-12",
    "equivlab/rl/schedules.py",
    "return steps_after // period > steps_before // period",
    "return steps_after // period >= steps_before // period",
    _DQN,
  ),
  Mutant(
    "dqn-13",
    "equivlab/rl/schedules.py",
    "fraction = jnp.minimum(jnp.asarray(env_steps, jnp.float32) / "
    "decay_steps, 1.0)",
    "fraction = jnp.asarray(env_steps, jnp.float32) / decay_steps",
    _DQN,
  ),
  Mutant(
    "dqn-14",
    "equivlab/rl/envs.py",
    "return jnp.where(terminated, 0.0, gamma).astype(jnp.float32)",
    "return jnp.where(terminated, gamma, 0.0).astype(jnp.float32)",
    _DQN,
  ),
  Mutant(
    "dqn-15",
    "equivlab/rl/dqn/loop.py",
    "discount=envs_lib.bootstrap_discount(out.terminated, config.gamma),",
    "discount=envs_lib.bootstrap_discount(out.done, config.gamma),",
    _DQN,
  ),
  Mutant(
    "dqn-16",
    "equivlab/rl/dqn/loop.py",
    "  if double_dqn:\n",
    "  if not double_dqn:\n",
    _DQN,
  ),
  # --- the training loop and checkpoints ------------------------------------
  Mutant(
    "train-1",
    "equivlab/training/steps.py",
    "step=state.step + 1,",
    "step=state.step + 2,",
    _TRAIN,
  ),
  Mutant(
    "train-2",
    "equivlab/training/steps.py",
    "correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)",
    "correct = (jnp.argmin(logits, -1) == labels).astype(jnp.float32)",
    _TRAIN,
  ),
  Mutant(
    "train-3",
    "equivlab/training/steps.py",
    "params=optax.apply_updates(state.params, updates),",
    "params=state.params,",
    _TRAIN,
  ),
  Mutant(
    "train-4",
    "equivlab/training/steps.py",
    "step_key = jax.random.fold_in(state.key, state.step)",
    "step_key = state.key",
    (
      "tests/train_test.py",
      "tests/training_inputs_test.py",
      "-k",
      "augment or same_seed or dropout",
    ),
  ),
  Mutant(
    "train-5",
    "equivlab/training/checkpoint.py",
    "for step in sorted(self._manager.all_steps(), reverse=True):",
    "for step in sorted(self._manager.all_steps()):",
    _CKPT,
  ),
  Mutant(
    "train-6",
    "equivlab/training/loop.py",
    "end_of_epoch = step % run.steps_per_epoch == 0",
    "end_of_epoch = step % (run.steps_per_epoch + 1) == 0",
    (*_CKPT[:1], "tests/train_test.py", "-k", "epoch or learns_and_writes"),
  ),
  Mutant(
    "train-7",
    "equivlab/training/loop.py",
    "for epoch in range(run.step // run.steps_per_epoch, config.num_epochs):",
    "for epoch in range(config.num_epochs):",
    ("tests/train_test.py", "-k", "rerun or resume or prepare"),
  ),
  Mutant(
    "train-8",
    "equivlab/training/loop.py",
    "steps_per_epoch = len(train_images) // config.batch_size",
    "steps_per_epoch = len(train_images) // config.batch_size + 1",
    _TRAIN,
  ),
  Mutant(
    "train-9",
    "equivlab/training/steps.py",
    "return optax.softmax_cross_entropy_with_integer_labels(logits, labels)",
    "return optax.softmax_cross_entropy_with_integer_labels(logits, "
    "0 * labels)",
    _TRAIN,
  ),
  # --- derivations ----------------------------------------------------------
  Mutant(
    "deriv-1",
    "equivlab/fundamentals/derivations.py",
    "lambda p, g: p - learning_rate * g",
    "lambda p, g: p + learning_rate * g",
    _DERIV,
  ),
  Mutant(
    "deriv-2",
    "equivlab/fundamentals/derivations.py",
    "return y_hat * jnp.sum(labels) - labels",
    "return y_hat - labels",
    _DERIV,
  ),
  Mutant(
    "deriv-3",
    "equivlab/fundamentals/derivations.py",
    "shifted = logits - jnp.max(logits, axis=-1, keepdims=True)",
    "shifted = logits",
    _DERIV,
  ),
  Mutant(
    "deriv-4",
    "equivlab/fundamentals/derivations.py",
    'return loss, {"w": grad_w, "b": jnp.sum(residual)}',
    'return loss, {"w": grad_w, "b": jnp.mean(residual)}',
    _DERIV,
  ),
  Mutant(
    "deriv-5",
    "equivlab/fundamentals/derivations.py",
    "+ dvar * jnp.sum(-2.0 * centred, axis=0) / m",
    "+ dvar * jnp.sum(-2.0 * centred, axis=0)",
    _DERIV,
    equivalent="the deviations from the batch mean sum to zero",
  ),
  Mutant(
    "deriv-6",
    "equivlab/fundamentals/derivations.py",
    '"dgamma": jnp.sum(dy * x_hat, axis=0),',
    '"dgamma": jnp.sum(dy, axis=0),',
    _DERIV,
  ),
  Mutant(
    "deriv-7",
    "equivlab/fundamentals/conv_derivations.py",
    'dk = jnp.einsum("cimjnqr,oijq->ocmnr", patches, dy)',
    'dk = jnp.einsum("cimjnqr,oijq->ocmrn", patches, dy)',
    _DERIV,
  ),
  Mutant(
    "deriv-8",
    "equivlab/fundamentals/conv_derivations.py",
    "dx = dx_hat[:, pd : pd + d, ph : ph + h, pw : pw + w]",
    "dx = dx_hat[:, :d, :h, :w]",
    _DERIV,
  ),
  # --- the testing API ------------------------------------------------------
  Mutant(
    "testing-1",
    "equivlab/testing/equivariance.py",
    "if not err <= tol:  # NaN fails too",
    "if err > tol:",
    _TESTING,
  ),
  Mutant(
    "testing-2",
    "equivlab/testing/equivariance.py",
    "diff = float(np.max(np.abs(actual - expected)))",
    "diff = float(np.mean(np.abs(actual - expected)))",
    _TESTING,
  ),
  Mutant(
    "testing-3",
    "equivlab/testing/equivariance.py",
    "return max(errors.items(), key=lambda kv: _key(kv[1]))",
    "return min(errors.items(), key=lambda kv: _key(kv[1]))",
    _TESTING,
  ),
  Mutant(
    "testing-4",
    "equivlab/testing/equivariance.py",
    "min_error = max(1e-2, 10 * default_rtol(*dtypes))",
    "min_error = 0.0",
    _TESTING,
  ),
)


def _apply(text: str, m: Mutant) -> str | None:
  """`text` with `m` applied, or None when its text is not found."""
  start = -1
  for _ in range(m.occurrence + 1):
    start = text.find(m.old, start + 1)
    if start < 0:
      return None
  return text[:start] + m.new + text[start + len(m.old) :]


def _ignore(directory, names):
  del directory
  skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache", "docs"}
  return [n for n in names if n in skip or n.endswith(".egg-info")]


def _pytest(tree: pathlib.Path, tests, timeout: float) -> str:
  """'passed', 'failed' or 'timeout' for `tests` run in `tree`."""
  env = dict(os.environ, PYTHONPATH=str(tree), HYPOTHESIS_PROFILE="dev")
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
  try:
    proc = subprocess.run(
      [*cmd, *tests],
      cwd=tree,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
      check=False,
    )
  except subprocess.TimeoutExpired:
    return "timeout"
  # 5: no test was selected, which would hide a broken selection.
  if proc.returncode == 5:
    raise RuntimeError(f"no test selected by {tests}")
  return "passed" if proc.returncode == 0 else "failed"


def select(only: str) -> list[Mutant]:
  """The mutants whose id equals or starts with one of `only`'s entries."""
  if not only:
    return list(MUTANTS)
  wanted = [w.strip() for w in only.split(",") if w.strip()]
  chosen = [
    m for m in MUTANTS if any(m.id == w or m.id.startswith(w) for w in wanted)
  ]
  if not chosen:
    raise SystemExit(f"--only {only!r} matches no mutant id.")
  return chosen


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--only", default="", help="ids or id prefixes, commas")
  parser.add_argument("--list", action="store_true", help="list, run nothing")
  parser.add_argument(
    "--baseline",
    action="store_true",
    help="first run every chosen selection unmutated (must pass)",
  )
  parser.add_argument(
    "--timeout", type=float, default=600, help="seconds per mutant's tests"
  )
  parser.add_argument("--repo", default=str(ROOT), help="the checkout")
  args = parser.parse_args(argv)
  mutants = select(args.only)
  if args.list:
    for m in mutants:
      print(f"{m.id:<10} {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}")
    return 0
  with tempfile.TemporaryDirectory(prefix="equivlab-mutants-") as tmp:
    tree = pathlib.Path(tmp) / "tree"
    shutil.copytree(args.repo, tree, ignore=_ignore)
    if args.baseline:
      for tests in sorted({m.tests for m in mutants}):
        outcome = _pytest(tree, tests, args.timeout)
        print(f"baseline {outcome:<7} {' '.join(tests)}", flush=True)
        if outcome != "passed":
          return 1
    results = {}
    for m in mutants:
      path = tree / m.path
      original = path.read_text()
      mutated = _apply(original, m)
      if mutated is None:
        results[m.id] = "stale"
        print(f"{m.id:<10} STALE    (text not found in {m.path})", flush=True)
        continue
      path.write_text(mutated)
      start = time.perf_counter()
      try:
        outcome = _pytest(tree, m.tests, args.timeout)
      finally:
        path.write_text(original)
      verdict = "survived" if outcome == "passed" else "killed"
      results[m.id] = verdict
      seconds = time.perf_counter() - start
      print(
        f"{m.id:<10} {verdict.upper():<8} ({outcome}, {seconds:.0f} s)",
        flush=True,
      )
  by_id = {m.id: m for m in mutants}
  counted = [
    v for k, v in results.items() if v != "stale" and not by_id[k].equivalent
  ]
  killed = sum(v == "killed" for v in counted)
  print(f"\nscore: {killed}/{len(counted)} killed", end="")
  print(f" ({100 * killed / max(len(counted), 1):.0f}%)", end="")
  equivalent = [k for k in results if by_id[k].equivalent]
  print(f"; {len(equivalent)} equivalent mutants left out")
  for name in equivalent:
    print(f"  equivalent {name} ({results[name]}): {by_id[name].equivalent}")
  for name, verdict in results.items():
    if verdict == "survived" and not by_id[name].equivalent:
      m = by_id[name]
      print(
        f"  survived {name}: {m.path}: {m.old.strip()!r} -> {m.new.strip()!r}"
      )
  return 0


if __name__ == "__main__":
  sys.exit(main())
