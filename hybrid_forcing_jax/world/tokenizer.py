"""A word-level tokenizer over the world grammar's vocabulary, saved as one small JSON file.

Ids follow umT5's conventions: 0 pads, 1 ends a prompt (appended like umT5's `</s>`), 2 is any word
outside the vocabulary, then the words in vocabulary order. Text is lower-cased and split into runs of
letters, so punctuation and spacing do not matter.

It answers the small part of a transformers tokenizer that `hybrid_forcing_jax.tokenizer.tokenize`
uses (`pad_token_id`, and a call with padding / truncation / max_length), and
`hybrid_forcing_jax.tokenizer.load_tokenizer(folder)` loads it from a folder holding `VOCAB_FILE`; so
`TextEncoder.from_checkpoint(encoder_folder, tokenizer_folder)` takes it as it takes umT5's.
"""
from __future__ import annotations

import json
import os
import re
from typing import Sequence

import numpy as np

VOCAB_FILE = "world_vocab.json"
FORMAT = 1
PAD, END, UNKNOWN = 0, 1, 2
SPECIALS = ("<pad>", "</s>", "<unk>")


class WordTokenizer:
  pad_token_id = PAD

  def __init__(self, words: Sequence[str]):
    words = list(words)
    bad = [w for w in words if not re.fullmatch(r"[a-z]+", w)]
    if bad or len(set(words)) != len(words):
      raise ValueError(f"WordTokenizer: words must be distinct lower-case letter runs; bad: {bad[:5]}")
    self.words = words
    self._ids = {w: i + len(SPECIALS) for i, w in enumerate(words)}

  @property
  def vocab_size(self) -> int:
    return len(SPECIALS) + len(self.words)

  def ids(self, text: str) -> list[int]:
    """The words' ids followed by the end id."""
    return [self._ids.get(w, UNKNOWN) for w in re.findall(r"[a-z]+", text.lower())] + [END]

  def decode(self, ids: Sequence[int]) -> str:
    """Ids -> words joined by spaces; padding and the end id are dropped."""
    names = SPECIALS + tuple(self.words)
    return " ".join(names[i] for i in ids if i not in (PAD, END))

  def __call__(self, texts: Sequence[str], *, add_special_tokens: bool = True, padding=False, truncation=False,
               max_length: int | None = None, return_attention_mask: bool = False, return_tensors=None):
    """The transformers call, for what `tokenizer.tokenize` asks: {"input_ids"[, "attention_mask"]},
    lists of lists, or int arrays [B, max_length] with padding="max_length" and return_tensors="np"."""
    rows = [self.ids(t) if add_special_tokens else self.ids(t)[:-1] for t in texts]
    if truncation:
      rows = [r[:max_length] for r in rows]
    if padding == "max_length":
      rows = [r + [PAD] * (max_length - len(r)) for r in rows]
    out = {"input_ids": rows}
    if return_attention_mask:
      out["attention_mask"] = [[int(i != PAD) for i in r] for r in rows]
    if return_tensors == "np":
      out = {k: np.asarray(v, np.int32) for k, v in out.items()}
    return out

  def save(self, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, VOCAB_FILE), "w") as f:
      json.dump({"format": FORMAT, "specials": list(SPECIALS), "words": self.words}, f, indent=1)

  @classmethod
  def load(cls, folder: str) -> "WordTokenizer":
    path = os.path.join(folder, VOCAB_FILE)
    try:
      with open(path) as f:
        meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
      raise ValueError(f"{path}: not a readable word vocabulary ({e})") from None
    if meta.get("format") != FORMAT or meta.get("specials") != list(SPECIALS) or "words" not in meta:
      raise ValueError(f"{path}: expected format {FORMAT} with specials {list(SPECIALS)} and a 'words' list")
    return cls(meta["words"])
