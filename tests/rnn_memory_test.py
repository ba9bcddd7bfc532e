"""Smoke tests of experiments/rnn_memory.py and experiments/char_lm.py."""

import json
import os

import jax
import numpy as np

from experiments import char_lm, rnn_memory


def test_make_batch_puts_the_label_first():
  xs, labels = rnn_memory.make_batch(jax.random.key(0), 8, 5, 3, 2)
  assert xs.shape == (8, 6, 5)
  np.testing.assert_array_equal(np.argmax(xs[:, 0], axis=1), labels)
  assert np.all(np.argmax(xs[:, 1:], axis=2) >= 3)  # distractors only


def test_memory_sweep_writes_results_and_plots(tmp_path):
  config = rnn_memory.MemoryConfig(
    lags=(3,),
    models=("lstm",),
    hidden_size=4,
    batch_size=8,
    num_steps=5,
    esn_size=8,
    esn_train_size=16,
    eval_size=16,
    grad_lag=3,
    grad_probe_size=2,
  )
  results = rnn_memory.run(config, str(tmp_path))
  for name in (
    "results.json",
    "accuracy_vs_lag.png",
    "grad_norm_vs_distance.png",
  ):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert saved["lags"] == [3]
  assert sorted(saved["accuracy"]) == ["esn_gradient", "esn_ridge", "lstm"]
  for accs in saved["accuracy"].values():
    assert len(accs) == 1 and 0.0 <= accs[0] <= 1.0
  for stage in ("init", "trained"):
    for norms in saved["grad_norms"][stage].values():
      assert len(norms) == 4 and all(np.isfinite(norms))
  assert "| 3 |" in rnn_memory.format_table(results)


def test_char_lm_writes_bits_per_character_and_samples(tmp_path):
  config = char_lm.CharLMConfig(
    max_chars=3000,
    hidden_size=8,
    batch_size=2,
    tau=10,
    num_epochs=1,
    sample_length=12,
    prompts=("The ",),
  )
  results = char_lm.run(config, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    saved = json.load(f)
  assert os.path.getsize(tmp_path / "bpc.png") > 0
  assert 0.0 < saved["valid_bpc"] < 10.0
  assert saved["unigram_bpc"] > 0.0
  assert len(results["samples"]) == 1
  assert results["samples"][0].startswith("The ")
  assert len(results["samples"][0]) == 4 + 12


def test_flags_parse_into_private_flag_values():
  from absl import flags  # noqa: PLC0415

  for module, args in (
    (rnn_memory, ["--lags=1,4", "--num_steps=3"]),
    (char_lm, ["--tau=7", "--num_epochs=2"]),
  ):
    flag_values = flags.FlagValues()
    holders = module.define_flags(flag_values)
    flag_values(["prog", "--workdir=/tmp/x", *args])
    assert holders["workdir"].value == "/tmp/x"
  assert holders["tau"].value == 7
