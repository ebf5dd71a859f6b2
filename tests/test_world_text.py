"""The world's word tokenizer and tiny umT5: round trips, and saved folders that load like umT5's."""
from __future__ import annotations

import numpy as np
import pytest

from hybrid_forcing_jax.tokenizer import load_tokenizer, tokenize
from hybrid_forcing_jax.world import grammar
from hybrid_forcing_jax.world.text import TEXT_LEN, load_world_text, save_world_text, world_tokenizer
from hybrid_forcing_jax.world.tokenizer import END, PAD, UNKNOWN, WordTokenizer

CAPTION = "an orange triangle moving to the left out of view and back on a white background"


def test_round_trip_and_unknown_words():
  tok = world_tokenizer()
  assert tok.decode(tok.ids(CAPTION)) == CAPTION
  assert tok.ids("A RED, circle!") == tok.ids("a red circle")
  assert tok.ids("a zebra") == [tok.ids("a")[0], UNKNOWN, END]


def test_tokenize_pads_and_masks_as_for_umt5():
  ids, mask = tokenize(world_tokenizer(), [CAPTION, "a blue square bouncing"], TEXT_LEN)
  assert ids.shape == mask.shape == (2, TEXT_LEN)
  assert mask.sum(1).tolist() == [len(CAPTION.split()) + 1, 5]
  assert ids[1, 4] == END and (ids[1, 5:] == PAD).all()


def test_every_caption_fits_the_text_length():
  longest = max(len(grammar.caption(s, m, colour="purple", direction=d, background="white").split())
                for s in grammar.SHAPES for m in grammar.MOTIONS for d in grammar.DIRECTIONS)
  assert longest + 1 <= TEXT_LEN


def test_saved_text_model_loads_like_umt5(tmp_path):
  save_world_text(str(tmp_path), seed=3)
  assert isinstance(load_tokenizer(str(tmp_path / "tokenizer")), WordTokenizer)
  encoder = load_world_text(str(tmp_path))
  emb = np.asarray(encoder.encode(["a red circle bouncing up", "a blue circle bouncing up"]))
  assert emb.shape == (2, TEXT_LEN, 64)
  assert np.abs(emb[0, 6:]).max() == 0   # rows past the 5 words and the end id are zero
  assert np.abs(emb[0, :6] - emb[1, :6]).max() > 1e-3
  again = load_world_text(str(tmp_path)).encode(["a red circle bouncing up"])
  np.testing.assert_allclose(np.asarray(again)[0], emb[0], atol=1e-5)   # batch of 1 vs 2: rounding only


def test_bad_vocabulary_file_is_named(tmp_path):
  (tmp_path / "world_vocab.json").write_text('{"format": 1, "words": ["a"]}')
  with pytest.raises(ValueError, match="world_vocab.json"):
    load_tokenizer(str(tmp_path))
