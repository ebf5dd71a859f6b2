"""Tokenization (pad / truncate with a warning) with an offline tiny tokenizer, and the prompt cache."""
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from hybrid_forcing_jax.text_encoder import PromptEmbeddingCache, TextEncoder, init_params, tiny_umt5_config
from hybrid_forcing_jax.tokenizer import load_tokenizer, tokenize

WORDS = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
  """A word-level tokenizer shaped like umT5's: <pad>=0, </s>=1 appended to every prompt."""
  vocab = {w: i for i, w in enumerate(WORDS)}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
  folder = str(tmp_path_factory.mktemp("tok"))
  fast.save_pretrained(folder)
  return folder


def test_pad_and_mask(tokenizer_folder):
  tok = load_tokenizer(tokenizer_folder)
  ids, mask = tokenize(tok, ["w3  w4\n w5", "w7"], max_length=8)
  assert ids.dtype == np.int32 and ids.shape == mask.shape == (2, 8)
  np.testing.assert_array_equal(ids[0], [6, 7, 8, 1, 0, 0, 0, 0])  # whitespace runs collapsed, </s> added
  np.testing.assert_array_equal(mask[1], [1, 1, 0, 0, 0, 0, 0, 0])


def test_long_prompt_truncated_with_warning(tokenizer_folder):
  tok = load_tokenizer(tokenizer_folder)
  long = " ".join(f"w{i % 40}" for i in range(20))
  with pytest.warns(UserWarning, match="21 tokens; truncated to 8"):
    ids, mask = tokenize(tok, ["w1", long], max_length=8)
  assert mask[1].all() and ids[1, -1] == 1  # the truncated prompt still ends with </s>
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    tokenize(tok, ["w1 w2"], max_length=8)  # a prompt that fits does not warn


def test_bad_tokenizer_input(tmp_path, tokenizer_folder):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(str(tmp_path / "nowhere"))
  tok = load_tokenizer(tokenizer_folder)
  with pytest.raises(TypeError, match="list of prompt strings"):
    tokenize(tok, "not a list")
  with pytest.raises(ValueError, match="no prompts"):
    tokenize(tok, [])


def test_encoder_with_tokenizer_and_cache(tokenizer_folder):
  config = tiny_umt5_config(vocab_size=len(WORDS))
  params = init_params(config, jax.random.key(0), param_dtype=jnp.float32)
  encoder = TextEncoder(config, params, tokenizer_folder, dtype=jnp.float32, text_len=16)
  out = encoder.encode(["w1 w2", "w3"])
  assert out.shape == (2, 16, config.dim)
  assert np.asarray(out[1, 2:] == 0).all() and np.asarray(out[1, :2] != 0).any()

  calls = []
  cache = PromptEmbeddingCache(lambda prompts: calls.append(list(prompts)) or encoder.encode(prompts), max_entries=2)
  a = cache.get("w1 w2")
  np.testing.assert_array_equal(a, out[0])  # the same [text_len, dim] rows as a batched encode
  b, a2, c = cache.get_many(["w3", "w1 w2", "w4"])
  assert calls == [["w1 w2"], ["w3", "w4"]]  # each prompt encoded once, misses batched
  assert a2 is a and (cache.hits, cache.misses) == (1, 3)
  assert len(cache) == 2 and "w3" not in cache  # LRU: w3 was the least recently used
  np.testing.assert_array_equal(b, out[1])
  with pytest.raises(TypeError):
    cache.get_many("w1")
