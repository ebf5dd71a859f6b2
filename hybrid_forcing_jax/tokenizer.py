"""Prompt tokenization for the umT5 encoder, as Wan does it.

Wan's `HuggingfaceTokenizer(clean='whitespace')`: collapse whitespace runs, add the special tokens
(umT5 appends `</s>`), pad to `text_len` = 512 and truncate longer prompts. Truncation loses the end
of the prompt, so it is warned about rather than silent.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Sequence

import numpy as np


def load_tokenizer(folder: str):
  """A transformers tokenizer from a local folder (e.g. a saved `google/umt5-xxl`; never downloads), or
  the world model's word tokenizer from a folder holding its vocabulary."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"tokenizer folder {folder!r} does not exist (save `google/umt5-xxl`'s tokenizer "
                            "there with AutoTokenizer.from_pretrained(...).save_pretrained(folder))")
  from hybrid_forcing_jax.world import tokenizer as world_tokenizer
  if os.path.isfile(os.path.join(folder, world_tokenizer.VOCAB_FILE)):  # the world model's word tokenizer
    return world_tokenizer.WordTokenizer.load(folder)
  from transformers import AutoTokenizer
  try:
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)
  except (OSError, ValueError) as e:
    raise ValueError(f"{folder}: not a readable tokenizer folder: {e}") from None


def clean_whitespace(text: str) -> str:
  return re.sub(r"\s+", " ", text).strip()


def tokenize(tokenizer, prompts: Sequence[str], max_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """-> (ids, mask), both int32 [len(prompts), max_length]; mask is 1 on tokens, 0 on padding."""
  if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
    raise TypeError(f"tokenize: expects a list of prompt strings, got {type(prompts).__name__}")
  if not prompts:
    raise ValueError("tokenize: no prompts given")
  if tokenizer.pad_token_id is None:
    raise ValueError("tokenize: the tokenizer has no padding token")
  texts = [clean_whitespace(p) for p in prompts]
  lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
  for i, n in enumerate(lengths):
    if n > max_length:
      warnings.warn(f"prompt {i} has {n} tokens; truncated to {max_length} (the rest is ignored): "
                    f"{texts[i][:80]!r}...", stacklevel=2)
  out = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, add_special_tokens=True,
                  return_attention_mask=True, return_tensors="np")
  return out["input_ids"].astype(np.int32), out["attention_mask"].astype(np.int32)


BYTE_TOKENIZER_VOCAB = 258  # 256 byte values shifted past the pad (0) and end (1) ids


def byte_tokenize(prompts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """A deterministic stand-in for the umT5 tokenizer, for tiny random encoders (no tokenizer files):
  UTF-8 bytes shifted past the pad (0) and end (1) ids, cut to leave room for the end token.
  -> (ids, mask), both int32 [len(prompts), max_length]."""
  if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
    raise TypeError(f"byte_tokenize: expects a list of prompt strings, got {type(prompts).__name__}")
  ids = np.zeros((len(prompts), max_length), np.int32)
  mask = np.zeros_like(ids)
  for i, p in enumerate(prompts):
    tokens = [b + 2 for b in p.encode("utf-8")][: max_length - 1] + [1]
    ids[i, : len(tokens)] = tokens
    mask[i, : len(tokens)] = 1
  return ids, mask
