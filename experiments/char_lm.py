r"""A character-level LSTM language model trained with truncated BPTT.

The text ships with Python: the help topics of `pydoc_data.topics`, so no
download is needed. The model, its chunked resumable training and sampling
are `equivlab.rnn.language_model`; this study reports bits per character on
a held-out tail of the text (against the unigram entropy as a baseline) and
samples a few lines.

    python -m experiments.char_lm

The parameters, Adam's state, the LSTM state and the history go to
`<workdir>/checkpoint.npz` at every epoch end, every
`checkpoint_every_steps` updates and whenever `checkpoint_every_secs` have
passed. The same command again resumes from there and ends with the same
results.json as an uninterrupted run. An unreadable checkpoint is reported
in one line and training starts over; one of other settings is refused,
naming them, and so is a workdir in use by a live run.

Writes into --workdir (default runs/char_lm): results.json, results.md
(the table), timings.json, samples.txt, bpc.png and checkpoint.npz.
"""

import dataclasses
import pathlib
import time
from typing import Any

import jax

from equivlab import checks
from equivlab.analysis import tables, viz
from equivlab.rnn import language_model as lm
from equivlab.training import checkpoint, npz, sweeps
from experiments import _common

# Updates per jitted chunk when --checkpoint_every_steps is unset: how often
# the wall-time checkpoint is considered.
TIME_CHECK_UPDATES = 16
# Fields that do not change the trained parameters: a checkpoint made with
# other values of these is resumed.
_RESUMABLE_FIELDS = (
  "sample_length",
  "temperature",
  "prompts",
  "checkpoint_every_steps",
  "checkpoint_every_secs",
)


@dataclasses.dataclass(frozen=True)
class Config:
  """Settings of the character-level language model.

  Attributes:
    max_chars: characters of the help text to use (at most all of it).
    valid_fraction: the held-out tail of the text, in (0, 1).
    hidden_size: LSTM units.
    batch_size: parallel streams the training text is cut into.
    tau: the truncated-BPTT segment length (characters per update).
    num_epochs: passes over the training text.
    learning_rate: Adam's step size.
    clip_norm: gradients are clipped to this global norm.
    sample_length: characters sampled after each prompt.
    temperature: the sampling temperature (> 0; lower is greedier).
    prompts: texts the samples start from, comma-separated (the flag
      parser strips spaces around each); their characters must occur in
      the text.
    seed: seed of the weights and the samples.
    checkpoint_every_steps: also checkpoint every this many updates within
      an epoch (runs always checkpoint at every epoch end).
    checkpoint_every_secs: also checkpoint when this many seconds have
      passed since the last checkpoint (checked every
      checkpoint_every_steps updates, or every 16).
  """

  max_chars: int = 200_000
  valid_fraction: float = 0.1
  hidden_size: int = 256
  batch_size: int = 32
  tau: int = 50
  num_epochs: int = 10
  learning_rate: float = 3e-3
  clip_norm: float = 1.0
  sample_length: int = 200
  temperature: float = 0.7
  prompts: tuple[str, ...] = ("The ", "A list ", "If the ")
  seed: int = 0
  checkpoint_every_steps: int | None = None
  checkpoint_every_secs: float | None = 300.0

  def __post_init__(self):
    _common.check_config(self)
    for name in ("max_chars", "hidden_size", "tau", "sample_length"):
      checks.check_int(name, getattr(self, name), minimum=1)
    checks.check_number(
      "valid_fraction", self.valid_fraction, minimum=0, maximum=1,
      strict_minimum=True, strict_maximum=True,
    )  # fmt: skip
    for name in ("clip_norm", "temperature"):
      checks.check_number(
        name, getattr(self, name), minimum=0, strict_minimum=True
      )
    lm.check_corpus(
      lm.help_topics_text(self.max_chars), valid_fraction=self.valid_fraction,
      batch_size=self.batch_size, tau=self.tau, prompts=self.prompts,
    )  # fmt: skip


def load_corpus(config: Config) -> lm.Corpus:
  """The help text of `config`, split, as ids and training streams."""
  return lm.make_corpus(
    lm.help_topics_text(config.max_chars),
    valid_fraction=config.valid_fraction,
    batch_size=config.batch_size,
    tau=config.tau,
  )


def _settings(config: Config) -> dict[str, Any]:
  """The fields the trained parameters depend on, as JSON values."""
  fields = dataclasses.asdict(config)
  return sweeps.to_json(
    {k: fields[k] for k in fields if k not in _RESUMABLE_FIELDS}
  )


def save_checkpoint(path, config: Config, state, progress) -> None:
  """Writes the state and progress to `path` atomically (one .npz file)."""
  meta = {"settings": _settings(config), **dataclasses.asdict(progress)}
  npz.save_tree(path, state, meta)


def train(config: Config, corpus: lm.Corpus, workdir: pathlib.Path):
  """Trains (resuming from `workdir`'s checkpoint).

  Returns:
    `(params, history, resumed_at)`: the trained parameters, one record
    per epoch, and the (epoch, update) training resumed at.

  Raises:
    ValueError: if the checkpoint was made with other settings.
  """
  path, tx = (
    workdir / "checkpoint.npz",
    lm.optimizer(config.learning_rate, config.clip_norm),
  )
  key = jax.random.split(jax.random.key(config.seed))[0]
  state, progress = (
    lm.init_state(key, corpus, config.hidden_size, tx),
    lm.Progress(),
  )
  restored = npz.load_tree(path, state, _settings(config))
  if restored is not None:
    state, meta, _ = restored
    progress = lm.Progress(**{k: v for k, v in meta.items() if k != "settings"})
  resumed_at = (progress.epoch, progress.update)
  state = lm.train(
    state, progress, corpus, tx=tx, tau=config.tau,
    num_epochs=config.num_epochs,
    chunk_updates=config.checkpoint_every_steps or TIME_CHECK_UPDATES,
    save=lambda s, p: save_checkpoint(path, config, s, p),
    every_chunk=bool(config.checkpoint_every_steps),
    every_secs=config.checkpoint_every_secs,
  )  # fmt: skip
  return state.params, progress.history, resumed_at


def _table(results: dict[str, Any]) -> str:
  rows = [
    {
      "epoch": r["epoch"],
      "updates": r["updates"],
      "train bits/char": f"{r['train_bpc']:.3f}",
      "valid bits/char": f"{r['valid_bpc']:.3f}",
    }
    for r in results["history"]
  ]
  return tables.format_table(rows) + (
    f"\nHeld-out bits per character {results['valid_bpc']:.3f} against "
    f"{results['unigram_bpc']:.3f} for a unigram model "
    f"({results['num_chars']:,} characters, vocabulary "
    f"{results['vocab_size']}; one seed)."
  )


def run(config: Config, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Trains (or resumes), evaluates bits per character and samples.

  Args:
    config: the settings.
    workdir: where results.json, results.md, timings.json, samples.txt,
      bpc.png and checkpoint.npz go.

  Returns:
    The contents of results.json: "config", "text", "num_chars",
    "vocab_size", "unigram_bpc", "valid_bpc" (after the last epoch),
    "history" (per epoch: updates so far, train and valid bits per
    character), "samples" and "table".

  Raises:
    ValueError: if the workdir holds a checkpoint of other settings.
    equivlab.training.WorkdirInUseError: if another live run uses it.
    OSError: if the workdir or the checkpoint cannot be written.
  """
  workdir, start = pathlib.Path(workdir), time.perf_counter()
  with checkpoint.WorkdirLock(workdir):
    corpus = load_corpus(config)
    params, history, resumed_at = train(config, corpus, workdir)
    results = {
      "config": dataclasses.asdict(config),
      "text": "pydoc_data.topics (CPython help topics)",
      "num_chars": len(corpus.train_ids) + len(corpus.valid_ids),
      "vocab_size": len(corpus.chars),
      "unigram_bpc": lm.unigram_bpc(corpus),
      "valid_bpc": history[-1]["valid_bpc"],
      "history": history,
      "samples": lm.sample_texts(
        jax.random.split(jax.random.key(config.seed))[1],
        params,
        corpus.chars,
        config.prompts,
        config.sample_length,
        config.temperature,
      ),  # fmt: skip
    }
    results["table"] = _table(results)
    samples = "\n\n----\n\n".join(results["samples"]) + "\n"
    (workdir / "samples.txt").write_text(samples)
    viz.plot_learning_curves(
      {
        "train": [r["train_bpc"] for r in history],
        "valid": [r["valid_bpc"] for r in history],
        "unigram": [results["unigram_bpc"]] * len(history),
      },
      workdir / "bpc.png",
      ylabel="bits per character",
      title="Character-level LSTM, truncated BPTT",
    )
    resumed = {"epoch": resumed_at[0], "update": resumed_at[1]}
    sweeps.write_results(
      workdir, results, table=results["table"],
      timings={"seconds": time.perf_counter() - start, "resumed_at": resumed},
    )  # fmt: skip
  return results


define_flags, main = _common.entry_points(Config, run, "char_lm")

if __name__ == "__main__":
  _common.launch(main, define_flags)
