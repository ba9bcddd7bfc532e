"""Tests of benchmarks/dqn.py: its command line and the reference from git.

Tiny budgets only; no figure is asserted.
"""

import dataclasses

import pytest

from benchmarks import dqn as bench
from equivlab.rl import dqn

_TINY = dqn.DQNConfig(
  env_name="Probe-constant",
  num_envs=4,
  total_env_steps=400,
  eval_every=400,
  eval_episodes=1,
  learning_starts=100,
  train_every=4,
  batch_size=16,
  buffer_size=100,
  hidden_sizes=(4,),
  target_period=40,
  epsilon_decay_steps=200,
)


def test_help_prints_the_options_and_exits(capsys):
  with pytest.raises(SystemExit) as exited:
    bench.parse_args(["--help"])
  assert exited.value.code == 0
  out = capsys.readouterr().out
  for option in ("--total_env_steps", "--reference_commit", "--no_reference"):
    assert option in out


def test_options_are_parsed():
  args = bench.parse_args(["--seed_counts=2,8", "--no_reference"])
  assert args.seed_counts == [2, 8] and args.no_reference
  assert args.reference_commit is None
  with pytest.raises(SystemExit):
    bench.parse_args(["--repeats=x"])


def test_the_reference_loop_is_read_from_git():
  try:
    commit = bench.default_reference_commit()
  except bench.ReferenceUnavailableError as error:
    pytest.skip(f"no git history here: {error}")
  reference = bench.load_reference(commit)
  assert reference.COMMIT == commit
  assert callable(reference.make_train)


@pytest.mark.parametrize(
  ("commit", "message"),
  [
    ("no-such-commit", "at commit 'no-such-commit'.*no such revision"),
    ("0" * 40, "no such revision"),
  ],
)
def test_an_unknown_commit_is_a_clear_error(commit, message):
  with pytest.raises(bench.ReferenceUnavailableError, match=message):
    bench.load_reference(commit)


def test_a_commit_without_the_file_is_a_clear_error():
  try:
    first = bench._git("rev-list", "--max-parents=0", "HEAD").split()[0]
  except bench.ReferenceUnavailableError as error:
    pytest.skip(f"no git history here: {error}")
  with pytest.raises(bench.ReferenceUnavailableError, match="--no_reference"):
    bench.load_reference(first)


def test_without_git_the_benchmark_says_so(monkeypatch):
  monkeypatch.setattr(bench.shutil, "which", lambda name: None)
  with pytest.raises(bench.ReferenceUnavailableError, match="git is not"):
    bench.load_reference()
  with pytest.raises(SystemExit, match="git is not installed"):
    bench.main(["--total_env_steps=400"])


def test_groups_are_timed_from_two_seeds_on():
  config = dataclasses.replace(_TINY)
  got = bench.part_d(config, [1, 2], repeats=1)
  assert set(got) == {"2"}
  assert got["2"]["groups_over_one_program"] > 0
  assert set(got["2"]["env_steps_per_second"]) == {"groups", "one program"}
