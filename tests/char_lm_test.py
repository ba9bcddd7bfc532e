"""Tests of experiments/char_lm.py, the character-level LSTM with TBPTT."""

import json

import pytest
from absl import flags

from equivlab import training
from equivlab.rnn import language_model as lm
from experiments import char_lm

# 900 training characters in 2 streams of 450: 44 updates of tau = 10 per
# epoch (the inputs lose one character to the shift).
_TINY = dict(
  max_chars=1000,
  hidden_size=8,
  batch_size=2,
  tau=10,
  num_epochs=2,
  sample_length=12,
  prompts=("The ",),
)
_PER_EPOCH = ((900 // 2 // 10) * 10 - 1) // 10


def _flag_values(*argv):
  flag_values = flags.FlagValues()
  holders = char_lm.define_flags(flag_values)
  flag_values(["char_lm", *argv])
  return holders


def _spy(monkeypatch, *, kill_after_saves=None):
  """Records the updates trained and checkpoints saved; may 'kill' the run."""
  seen = {"updates": 0, "saves": []}
  chunk_fn, save = lm.chunk_fn, char_lm.save_checkpoint

  def counting_chunk_fn(corpus, tx, tau):
    chunk = chunk_fn(corpus, tx, tau)

    def counted(state, first, count):
      seen["updates"] += count
      return chunk(state, first, count)

    return counted

  def counting_save(path, config, state, progress):
    save(path, config, state, progress)
    seen["saves"].append((progress.epoch, progress.update))
    if len(seen["saves"]) == kill_after_saves:
      raise KeyboardInterrupt("killed")

  monkeypatch.setattr(lm, "chunk_fn", counting_chunk_fn)
  monkeypatch.setattr(char_lm, "save_checkpoint", counting_save)
  return seen


def test_smoke_through_run(tmp_path, capsys):
  results = char_lm.run(char_lm.Config(**_TINY), tmp_path)
  saved = json.loads((tmp_path / "results.json").read_text())
  assert saved["table"] == results["table"]
  assert [r["updates"] for r in saved["history"]] == [44, 88]
  assert _PER_EPOCH == 44
  assert saved["valid_bpc"] == saved["history"][-1]["valid_bpc"]
  assert 0.0 < saved["valid_bpc"] < 10.0
  (text,) = saved["samples"]
  assert text.startswith("The ") and len(text) == 4 + 12
  assert (tmp_path / "samples.txt").read_text() == text + "\n"
  for name in ("bpc.png", "results.md", "timings.json", "checkpoint.npz"):
    assert (tmp_path / name).stat().st_size > 0
  out = capsys.readouterr().out
  assert "| epoch | updates | train bits/char" in out


def test_the_corpus_is_the_help_text_of_the_config():
  corpus = char_lm.load_corpus(char_lm.Config(**_TINY))
  assert corpus.chars == sorted(set(lm.help_topics_text(1000)))
  assert len(corpus.train_ids) == 900 and corpus.xs.shape == (440, 2)


def test_a_killed_run_resumes_to_the_same_results(tmp_path, monkeypatch):
  config = char_lm.Config(**_TINY, checkpoint_every_steps=16)
  seen = _spy(monkeypatch, kill_after_saves=3)
  with pytest.raises(KeyboardInterrupt):
    char_lm.run(config, tmp_path / "killed")
  # Saved after updates 16 and 32, at the end of epoch 1 (44), at 16.
  assert seen["saves"] == [(0, 16), (0, 32), (1, 0)]

  seen = _spy(monkeypatch)
  char_lm.run(config, tmp_path / "killed")
  assert seen["updates"] == 44  # Epoch 2 only: nothing done is redone.
  timings = json.loads((tmp_path / "killed/timings.json").read_text())
  assert timings["resumed_at"] == {"epoch": 1, "update": 0}

  char_lm.run(config, tmp_path / "fresh")
  first, second = (
    (tmp_path / n / "results.json").read_bytes() for n in ("killed", "fresh")
  )
  assert first == second

  # A finished run is not trained again; new prompts are sampled anew.
  seen = _spy(monkeypatch)
  again = char_lm.run(
    char_lm.Config(**(_TINY | {"prompts": ("A ", "If ")})), tmp_path / "fresh"
  )
  assert seen["updates"] == 0 and seen["saves"] == []
  assert again["history"] == json.loads(second)["history"]
  assert [s.split(" ")[0] for s in again["samples"]] == ["A", "If"]


def test_resuming_mid_epoch_and_other_chunks_give_the_same_bits(
  tmp_path, monkeypatch
):
  """The chunking does not change the arithmetic (CPU, same machine)."""
  _spy(monkeypatch, kill_after_saves=1)
  config = char_lm.Config(**_TINY, checkpoint_every_steps=5)
  with pytest.raises(KeyboardInterrupt):
    char_lm.run(config, tmp_path / "killed")
  seen = _spy(monkeypatch)
  mid_epoch = char_lm.run(config, tmp_path / "killed")
  assert seen["updates"] == 2 * 44 - 5
  whole_epochs = char_lm.run(char_lm.Config(**_TINY), tmp_path / "fresh")
  assert mid_epoch["history"] == whole_epochs["history"]
  assert mid_epoch["samples"] == whole_epochs["samples"]


def test_checkpoints_by_steps_by_time_and_at_epoch_ends(tmp_path, monkeypatch):
  seen = _spy(monkeypatch)
  char_lm.run(
    char_lm.Config(**_TINY, checkpoint_every_secs=None), tmp_path / "a"
  )
  assert seen["saves"] == [(1, 0), (2, 0)]  # Epoch ends only.
  # Every 16-update chunk is over a 1e-9 s budget: a save after each.
  seen = _spy(monkeypatch)
  char_lm.run(
    char_lm.Config(**_TINY, checkpoint_every_secs=1e-9), tmp_path / "b"
  )
  assert seen["saves"] == [(0, 16), (0, 32), (1, 0), (1, 16), (1, 32), (2, 0)]


def test_a_damaged_checkpoint_starts_over(tmp_path, monkeypatch):
  config = char_lm.Config(**(_TINY | {"num_epochs": 1}))
  first = char_lm.run(config, tmp_path)
  (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 not a zip")
  seen = _spy(monkeypatch)
  again = char_lm.run(config, tmp_path)
  assert seen["updates"] == 44
  assert again["history"] == first["history"]


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
  char_lm.run(char_lm.Config(**(_TINY | {"num_epochs": 1})), tmp_path)
  other = char_lm.Config(**(_TINY | {"num_epochs": 1, "hidden_size": 9}))
  with pytest.raises(ValueError, match="hidden_size: saved 8 vs now 9"):
    char_lm.run(other, tmp_path)


def test_smoke_through_the_flags(tmp_path, capsys):
  holders = _flag_values(
    f"--workdir={tmp_path}",
    "--max_chars=1000",
    "--hidden_size=4",
    "--batch_size=2",
    "--tau=20",
    "--num_epochs=1",
    "--sample_length=5",
    "--prompts=If, A",
    "--checkpoint_every_steps=7",
  )
  config = holders.config()
  assert config.prompts == ("If", "A") and config.checkpoint_every_steps == 7
  char_lm.main(["char_lm"], holders)
  saved = json.loads((tmp_path / "results.json").read_text())
  # absl strips the spaces around each item of a list flag.
  first, second = saved["samples"]
  assert first.startswith("If") and second.startswith("A")
  assert [len(s) for s in saved["samples"]] == [2 + 5, 1 + 5]
  assert "Held-out bits per character" in capsys.readouterr().out


def test_default_flags_are_the_default_config():
  holders = _flag_values()
  assert holders.config() == char_lm.Config()
  assert holders.workdir == "runs/char_lm"


@pytest.mark.parametrize(
  ("argv", "message"),
  [
    (["--tau=0"], "tau must be an int >= 1, got 0"),
    (["--valid_fraction=1"], r"valid_fraction must be a finite number > 0"),
    (["--temperature=0"], "temperature must be a finite number > 0"),
    (["--learning_rate=inf"], "learning_rate must be a finite number > 0"),
    (["--num_epochs=0"], "num_epochs must be an int >= 1, got 0"),
    (["--checkpoint_every_steps=0"], "checkpoint_every_steps must be an int"),
    (["--checkpoint_every_secs=-1"], "checkpoint_every_secs must be a finite"),
    (["--seed=-1"], "seed must be an int >= 0, got -1"),
    (["--prompts=The ,\u20ac"], r"prompts\[1\] = '\u20ac' has characters"),
    (["--max_chars=100"], "the text is too short for these settings"),
    (["--tau=5000"], "the text is too short for these settings"),
  ],
)
def test_bad_flags_are_flag_errors(argv, message):
  with pytest.raises(flags.IllegalFlagValueError, match=message):
    _flag_values(*argv)


def test_bad_settings_through_the_config():
  with pytest.raises(ValueError, match="tau must be an int >= 1, got 0"):
    char_lm.Config(tau=0)
  with pytest.raises(TypeError, match="prompts must be a sequence of texts"):
    char_lm.Config(prompts="The ")
  with pytest.raises(ValueError, match=r"prompts\[0\] must be a non-empty"):
    char_lm.Config(prompts=("",))


def test_a_workdir_in_use_is_refused(tmp_path):
  with training.WorkdirLock(tmp_path):
    with pytest.raises(training.WorkdirInUseError, match="in use by"):
      char_lm.run(char_lm.Config(**_TINY), tmp_path)


def test_a_workdir_that_is_a_file_is_one_clear_error(tmp_path):
  (tmp_path / "file").write_text("")
  with pytest.raises(OSError, match="is a file, not a directory"):
    char_lm.run(char_lm.Config(**_TINY), tmp_path / "file")
