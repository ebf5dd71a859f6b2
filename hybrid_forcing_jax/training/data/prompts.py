"""Prompts and their umT5 embeddings, computed once per prompt set and cached on disk.

The cache is a folder in `text.cache_dir` named by a hash of the encoder checkpoint, the tokenizer,
the prompts and `text_len`, so any change to one of them makes a new entry instead of reusing a stale
one. It holds only the real tokens' rows (umT5's padding rows are zero), in bfloat16 as Wan's
encoder runs: `embeddings.bin` [total tokens, dim], `offsets.npy` [N + 1] and `meta.json`.

`text.encoder` = "" selects a tiny random umT5 (seeded, float32) with the byte-level stand-in
tokenizer (`text.tokenizer` = ""): real pipelines on a CPU, for tests.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
from typing import Callable, Sequence

import grain
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from tqdm import tqdm

from hybrid_forcing_jax import tokenizer as tok
from hybrid_forcing_jax.checkpoint import CONFIG_FILE, WEIGHTS_FILE
from hybrid_forcing_jax.text_encoder import TextEncoder, init_params, tiny_umt5_config

CACHE_FORMAT = 1
ENCODE_BATCH = 8  # prompts per encoder call; the last batch is padded so one program serves all
TINY_ENCODER_SEED = 0
STORAGE_DTYPE = ml_dtypes.bfloat16


def read_prompts(path: str) -> list[str]:
  """One prompt per line; surrounding whitespace stripped, blank lines skipped (indices count prompts,
  not lines)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"prompts file {path!r} does not exist")
  with open(path, encoding="utf-8") as f:
    prompts = [line.strip() for line in f if line.strip()]
  if not prompts:
    raise ValueError(f"prompts file {path!r} holds no prompt (one prompt per line)")
  return prompts


def build_text_encoder(text_cfg) -> tuple[TextEncoder, Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]]:
  """-> (encoder, tokenize: prompts -> (ids, mask) [B, text_len]) for a `config.text` section."""
  if bool(text_cfg.encoder) != bool(text_cfg.tokenizer):
    raise ValueError("text.encoder and text.tokenizer must be both set (a converted umT5 and its tokenizer "
                     "folder) or both empty (the tiny random umT5 with byte-level tokens); got encoder="
                     f"{text_cfg.encoder!r}, tokenizer={text_cfg.tokenizer!r}")
  text_len = int(text_cfg.text_len)
  if not text_cfg.encoder:
    config = tiny_umt5_config(vocab_size=tok.BYTE_TOKENIZER_VOCAB)
    params = jax.jit(lambda k: init_params(config, k, param_dtype=jnp.float32))(jax.random.key(TINY_ENCODER_SEED))
    return (TextEncoder(config, params, dtype=jnp.float32, text_len=text_len),
            lambda prompts: tok.byte_tokenize(prompts, text_len))
  encoder = TextEncoder.from_checkpoint(text_cfg.encoder, text_cfg.tokenizer, text_len=text_len)
  return encoder, lambda prompts: tok.tokenize(encoder.tokenizer, prompts, text_len)


def cache_key(text_cfg, prompts: Sequence[str]) -> str:
  """Hash of what decides the embeddings: encoder checkpoint, tokenizer, prompts, text_len."""
  parts = dict(format=CACHE_FORMAT, encoder=_encoder_identity(text_cfg.encoder),
               tokenizer=_folder_digest(text_cfg.tokenizer), text_len=int(text_cfg.text_len),
               prompts=hashlib.sha256(json.dumps(list(prompts)).encode()).hexdigest())
  return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _encoder_identity(folder: str) -> str:
  """The converted umT5's config plus its weights file's size and modification time (hashing ~11 GB of
  weights on every start would cost minutes); "" for the tiny random encoder."""
  if not folder:
    return f"tiny-random-umt5-seed{TINY_ENCODER_SEED}"
  if not all(os.path.isfile(os.path.join(folder, name)) for name in (CONFIG_FILE, WEIGHTS_FILE)):
    raise FileNotFoundError(f"text.encoder {folder!r} is not a converted umT5 folder ({CONFIG_FILE} and "
                            f"{WEIGHTS_FILE}; make one with python -m convert --model=t5)")
  weights = os.stat(os.path.join(folder, WEIGHTS_FILE))
  with open(os.path.join(folder, CONFIG_FILE)) as f:
    return f"{os.path.abspath(folder)}|{f.read()}|{weights.st_size}|{weights.st_mtime_ns}"


def _folder_digest(folder: str) -> str:
  """sha256 over a (small) tokenizer folder's files, names included."""
  if not folder:
    return "byte-level"
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"text.tokenizer {folder!r} is not a folder (a saved google/umt5-xxl tokenizer)")
  digest = hashlib.sha256()
  for path in sorted(glob.glob(os.path.join(folder, "**", "*"), recursive=True)):
    if os.path.isfile(path):
      digest.update(os.path.relpath(path, folder).encode())
      with open(path, "rb") as f:
        digest.update(f.read())
  return digest.hexdigest()


class PromptEmbeddings:
  """Random access to every prompt's umT5 embedding, bfloat16 [text_len, dim] (padding rows zero).

  Builds the cache entry on first use (the encoder runs only then) and reads it memory-mapped after;
  a grain data source (len + getitem), picklable into grain's worker processes."""

  def __init__(self, prompts: Sequence[str], text_cfg, *, progress: bool = False):
    if not text_cfg.cache_dir:
      raise ValueError("text.cache_dir is empty: set a folder for the prompt-embedding cache")
    self.prompts = list(prompts)
    self.text_len = int(text_cfg.text_len)
    self.folder = os.path.join(text_cfg.cache_dir, f"prompt_embeddings-{cache_key(text_cfg, self.prompts)}")
    if not os.path.isfile(os.path.join(self.folder, "meta.json")):
      _build_cache(self.folder, self.prompts, text_cfg, progress)
    with open(os.path.join(self.folder, "meta.json")) as f:
      self.dim = json.load(f)["dim"]
    self.offsets = np.load(os.path.join(self.folder, "offsets.npy"))
    self._rows = None

  def __len__(self) -> int:
    return len(self.prompts)

  def __getitem__(self, index: int) -> np.ndarray:
    if self._rows is None:
      self._rows = np.memmap(os.path.join(self.folder, "embeddings.bin"), np.uint16, "r",
                             shape=(int(self.offsets[-1]), self.dim))
    start, end = int(self.offsets[index]), int(self.offsets[index + 1])
    out = np.zeros((self.text_len, self.dim), STORAGE_DTYPE)
    out[: end - start] = self._rows[start:end].view(STORAGE_DTYPE)
    return out

  def __getstate__(self):
    return {**self.__dict__, "_rows": None}


def _build_cache(folder: str, prompts: list[str], text_cfg, progress: bool) -> None:
  """Encode in batches, append the real tokens' rows to a scratch folder, then rename it into place
  (a crash leaves no half-written entry; a concurrent builder's identical entry wins)."""
  encoder, tokenize = build_text_encoder(text_cfg)
  os.makedirs(os.path.dirname(folder) or ".", exist_ok=True)
  scratch = f"{folder}.tmp-{os.getpid()}"
  shutil.rmtree(scratch, ignore_errors=True)
  os.makedirs(scratch)
  offsets = [0]
  with open(os.path.join(scratch, "embeddings.bin"), "wb") as out:
    for start in tqdm(range(0, len(prompts), ENCODE_BATCH), desc="umT5 embeddings", unit="batch",
                      disable=not progress):
      batch = prompts[start:start + ENCODE_BATCH]
      ids, mask = tokenize(batch + batch[-1:] * (ENCODE_BATCH - len(batch)))
      emb = np.asarray(encoder.encode_ids(ids, mask).astype(jnp.bfloat16))
      for row, length in zip(emb[: len(batch)], mask.sum(1)):
        out.write(np.ascontiguousarray(row[:length]).view(np.uint16).tobytes())
        offsets.append(offsets[-1] + int(length))
  np.save(os.path.join(scratch, "offsets.npy"), np.asarray(offsets, np.int64))
  with open(os.path.join(scratch, "meta.json"), "w") as f:
    json.dump(dict(format=CACHE_FORMAT, dim=encoder.config.dim, count=len(prompts), text_len=int(text_cfg.text_len),
                   dtype="bfloat16", encoder=text_cfg.encoder, tokenizer=text_cfg.tokenizer), f, indent=2)
  try:
    os.replace(scratch, folder)
  except OSError:  # another process finished the same entry first
    shutil.rmtree(scratch, ignore_errors=True)


def negative_context(cfg) -> np.ndarray:
  """The embedding of `text.negative_prompt` (CFG's unconditional branch), bfloat16 [text_len, dim]."""
  return PromptEmbeddings([cfg.text.negative_prompt], cfg.text)[0]


class _Example:
  """index -> {"context", "prompt_index"} (a class, not a lambda, so grain's workers can pickle it)."""

  def __init__(self, embeddings: PromptEmbeddings):
    self.embeddings = embeddings

  def __call__(self, index):
    return {"context": self.embeddings[index], "prompt_index": np.int32(index)}


def prompt_dataset(cfg, *, shuffle: bool = True, num_epochs: int | None = None,
                   embeddings: PromptEmbeddings | None = None) -> grain.MapDataset:
  """{"context": bfloat16 [text_len, dim], "prompt_index": int32} over `data.prompts`, shuffled with
  `data.seed` (a new order each epoch), repeated `num_epochs` times (None: without end). Unbatched:
  the trainer batches and shards it. Checkpoint the position with the iterator's get_state() /
  set_state() (`iter(ds.to_iter_dataset())`)."""
  embeddings = embeddings or PromptEmbeddings(read_prompts(cfg.data.prompts), cfg.text, progress=True)
  ds = grain.MapDataset.range(len(embeddings))
  if shuffle:
    ds = ds.shuffle(seed=int(cfg.data.seed))
  return ds.repeat(num_epochs).map(_Example(embeddings))
