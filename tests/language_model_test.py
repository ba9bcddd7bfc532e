"""Tests of equivlab/rnn/language_model.py, the character-level LSTM."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivlab.rnn import language_model as lm

_TEXT = lm.help_topics_text(1000)


def _corpus(**overrides):
  settings = dict(valid_fraction=0.1, batch_size=2, tau=10) | overrides
  return lm.make_corpus(_TEXT, **settings)


def test_the_help_text_is_sorted_topics_cut_to_max_chars():
  from pydoc_data.topics import topics  # noqa: PLC0415

  assert _TEXT == topics[sorted(topics)[0]][:1000]
  assert len(lm.help_topics_text(10)) == 10


def test_streams_are_time_major_and_a_multiple_of_tau():
  out = lm.streams(np.arange(23), 2, 5)
  np.testing.assert_array_equal(out[:, 0], np.arange(10))
  np.testing.assert_array_equal(out[:, 1], np.arange(10, 20))


def test_the_corpus_shifts_targets_by_one_character():
  corpus = _corpus()
  assert corpus.xs.shape == corpus.ys.shape == (440, 2)
  np.testing.assert_array_equal(corpus.xs[1:], corpus.ys[:-1])
  assert "".join(corpus.chars[i] for i in corpus.train_ids) == _TEXT[:900]


def test_unigram_baseline_by_hand():
  corpus = _corpus()
  train, valid = _TEXT[:900], _TEXT[900:]
  vocab = sorted(set(_TEXT))
  counts = collections.Counter(train)
  total = len(train) + len(vocab)
  expected = -np.mean([math.log2((counts[c] + 1) / total) for c in valid])
  assert lm.unigram_bpc(corpus) == pytest.approx(expected, rel=1e-12)
  assert corpus.chars == vocab


def _numpy_lstm_bpc(params, streams):
  """Bits per character of next-character prediction, in NumPy float64."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  hidden = p["W_out"].shape[1]
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  c = h = np.zeros((streams.shape[1], hidden))
  bits = []
  for t in range(streams.shape[0] - 1):
    x = np.eye(p["b_out"].shape[0])[streams[t]]
    pre = x @ p["cell"]["W_x"].T + h @ p["cell"]["W_h"].T + p["cell"]["b"]
    i, f, g, o = np.split(pre, 4, axis=1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    logits = h @ p["W_out"].T + p["b_out"]
    logz = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
    logp = logits - logits.max(1, keepdims=True) - logz[:, None]
    bits.append(-logp[np.arange(len(h)), streams[t + 1]] / math.log(2))
  return float(np.mean(bits))


def test_held_out_bits_match_a_numpy_lstm():
  corpus = _corpus()
  params = lm.init_params(jax.random.key(0), len(corpus.chars), 8)
  np.testing.assert_allclose(
    lm.valid_bpc_fn(corpus)(params),
    _numpy_lstm_bpc(params, corpus.valid),
    rtol=1e-5,
  )
  # The held-out streams are the tail of the text, 8 side by side.
  ids = {c: i for i, c in enumerate(corpus.chars)}
  tail = [ids[c] for c in _TEXT[900:]]
  np.testing.assert_array_equal(corpus.valid[:, 1], tail[12:24])


def _train(corpus, *, epochs, chunk, saves, state=None, progress=None):
  tx = lm.optimizer(3e-3, 1.0)
  state = state or lm.init_state(jax.random.key(0), corpus, 8, tx)
  progress = progress or lm.Progress()
  state = lm.train(
    state, progress, corpus, tx=tx, tau=10, num_epochs=epochs,
    chunk_updates=chunk, every_chunk=True,
    save=lambda s, p: saves.append((p.epoch, p.update, s)),
  )  # fmt: skip
  return state, progress


def test_training_resumes_to_the_same_state_whatever_the_chunks():
  corpus, saves = _corpus(), []
  whole, progress = _train(corpus, epochs=2, chunk=44, saves=[])
  assert [r["updates"] for r in progress.history] == [44, 88]
  assert progress.history[1]["valid_bpc"] < progress.history[0]["valid_bpc"]
  _train(corpus, epochs=1, chunk=16, saves=saves)
  assert [s[:2] for s in saves] == [(0, 16), (0, 32), (1, 0)]
  _, update, mid = saves[0]
  first = lm.Progress(update=update)
  again, _ = _train(
    corpus, epochs=2, chunk=16, saves=[], state=mid, progress=first
  )
  jax.tree.map(np.testing.assert_array_equal, again.params, whole.params)


def test_samples_start_with_their_prompts():
  corpus = _corpus()
  params = lm.init_params(jax.random.key(0), len(corpus.chars), 8)
  texts = lm.sample_texts(
    jax.random.key(1), params, corpus.chars, ("The ", "A"), 5, 0.7
  )
  assert [t[:-5] for t in texts] == ["The ", "A"]
  assert all(set(t) <= set(corpus.chars) for t in texts)
  ids = lm.sample(jax.random.key(1), params, jnp.asarray([0]), 7, 1.0)
  assert ids.shape == (7,)


@pytest.mark.parametrize(
  ("settings", "error", "message"),
  [
    (dict(tau=5000), ValueError, "the text is too short"),
    (dict(prompts="The "), TypeError, "prompts must be a sequence of texts"),
    (dict(prompts=("",)), ValueError, r"prompts\[0\] must be a non-empty"),
    (dict(prompts=("\u20ac",)), ValueError, r"prompts\[0\] = .* characters"),
  ],
)
def test_check_corpus_names_the_problem(settings, error, message):
  settings = dict(valid_fraction=0.1, batch_size=2, tau=10) | settings
  with pytest.raises(error, match=message):
    lm.check_corpus(_TEXT, **settings)


@pytest.mark.parametrize(
  ("settings", "message"),
  [
    (dict(tau=0), "tau must be an int >= 1, got 0"),
    (dict(tau=1000), "tau must be at most the 440 characters"),
    (dict(num_epochs=0), "num_epochs must be an int >= 1"),
    (dict(chunk_updates=0), "chunk_updates must be an int >= 1"),
  ],
)
def test_bad_training_settings_name_the_argument(settings, message):
  corpus, tx = _corpus(), lm.optimizer(1e-3, 1.0)
  state = lm.init_state(jax.random.key(0), corpus, 4, tx)
  kwargs = dict(tau=10, num_epochs=1, chunk_updates=4) | settings
  with pytest.raises(ValueError, match=message):
    lm.train(
      state, lm.Progress(), corpus, tx=tx, save=lambda s, p: None, **kwargs
    )
