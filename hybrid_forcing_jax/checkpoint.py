"""The project's checkpoint folder: `model.safetensors` (canonical names) beside `config.json`.

Canonical names are the dotted paths of the Flax parameter tree, which are Wan's original checkpoint
names with the per-layer index folded into a leading axis: Wan's `blocks.7.self_attn.q.weight` is row
7 of our `blocks.self_attn.q.weight` [num_layers, out, in]. safetensors, not orbax, because a model
checkpoint is one immutable set of named tensors: it memory-maps, loads tensor by tensor without
torch, and any other tool can read it. (Training state, which is sharded and written while training
runs, uses orbax.)

Each model kind (`wan_dit`, and the VAE and text encoder) has its config class and expected parameter
shapes in models.py's table; loading and saving check every key and shape against them.
"""
from __future__ import annotations

import json
import math
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors.numpy import save_file

from hybrid_forcing_jax.models import ModelKind, get_model_kind
from hybrid_forcing_jax.param_tree import flatten, unflatten  # noqa: F401  (re-exported: callers' names)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def expected_shapes(kind: ModelKind, config) -> dict[str, jax.ShapeDtypeStruct]:
  return flatten(kind.param_shapes(config))


def save_checkpoint(folder: str, kind_name: str, config, flat_params: dict[str, np.ndarray]) -> None:
  """Write `flat_params` (canonical names, storage dtypes) and the config; checks names and shapes."""
  kind = get_model_kind(kind_name)
  check_params(flat_params, expected_shapes(kind, config), where=f"saving {kind_name}")
  os.makedirs(folder, exist_ok=True)
  tmp = os.path.join(folder, WEIGHTS_FILE + ".tmp")
  # safetensors replaces its file by one of mode 0600: keep the mode that the user's umask gives a new file.
  open(tmp, "wb").close()
  mode = os.stat(tmp).st_mode & 0o777
  save_file({k: np.ascontiguousarray(v) for k, v in flat_params.items()}, tmp)
  os.chmod(tmp, mode)
  os.replace(tmp, os.path.join(folder, WEIGHTS_FILE))
  meta = {"format_version": FORMAT_VERSION, "model": kind_name, "config": config.to_dict()}
  with open(os.path.join(folder, CONFIG_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)


def check_params(flat: dict[str, Any], expected: dict[str, jax.ShapeDtypeStruct], where: str) -> None:
  missing = sorted(set(expected) - set(flat))
  extra = sorted(set(flat) - set(expected))
  if missing or extra:
    raise ValueError(f"{where}: parameter names do not match the model; missing {missing[:10]}"
                     f"{' ...' if len(missing) > 10 else ''}, unexpected {extra[:10]}{' ...' if len(extra) > 10 else ''}")
  for name, spec in expected.items():
    if tuple(flat[name].shape) != tuple(spec.shape):
      raise ValueError(f"{where}: parameter {name!r} has shape {tuple(flat[name].shape)}, "
                       f"the model expects {tuple(spec.shape)}")


def read_meta(folder: str) -> dict:
  path = os.path.join(folder, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{folder!r} is not a converted checkpoint folder: {CONFIG_FILE} is missing "
                            "(convert a PyTorch checkpoint first: python -m convert --help)")
  try:
    with open(path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  for key in ("model", "config", "format_version"):
    if key not in meta:
      raise ValueError(f"{path}: missing key {key!r}")
  if meta["format_version"] != FORMAT_VERSION:
    raise ValueError(f"{path}: format_version {meta['format_version']} is not supported (expected {FORMAT_VERSION})")
  return meta


def read_config(folder: str, kind_name: str):
  """A converted folder's config, its weights left unread; a folder of another kind is refused, naming it."""
  meta = read_meta(folder)
  if meta["model"] != kind_name:
    raise ValueError(f"{folder}: holds a {meta['model']!r} checkpoint, not {kind_name!r}")
  return get_model_kind(kind_name).config_from_dict(meta["config"])


def load_checkpoint(folder: str, kind_name: str, *, expected_config=None, dtype=None):
  """Load a converted folder -> (config, params tree of jax arrays).

  expected_config: if given, the checkpoint's config must equal it (e.g. a 1.3B checkpoint where the
  14B was asked for is an error naming the fields that differ).
  dtype: cast floating parameters stored in a wider type than this down to it (e.g. float32 for
  parity tests keeps everything float32; None keeps the stored dtypes).
  """
  config = read_config(folder, kind_name)
  kind = get_model_kind(kind_name)
  if expected_config is not None and config != expected_config:
    a, b = config.to_dict(), expected_config.to_dict()
    diff = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    raise ValueError(f"{folder}: checkpoint config differs from the requested one "
                     f"(field: (checkpoint, requested)): {diff}")
  expected = expected_shapes(kind, config)
  path = os.path.join(folder, WEIGHTS_FILE)
  views = read_tensors(path)
  check_params(views, expected, where=path)
  # One device_put of every tensor, straight from the file's pages: reading each tensor into a NumPy copy
  # first, then transferring it alone, ran at ~1 GB/s (14 s for the full-size weights of a sample start).
  arrays = jax.device_put(views)
  flat = {}
  for n, a in arrays.items():
    target = expected[n].dtype if dtype is None else _load_dtype(expected[n].dtype, dtype)
    flat[n] = a if a.dtype == target else a.astype(target)
  return config, unflatten(flat)


# safetensors' dtype names -> NumPy (bfloat16 and float8 through ml_dtypes).
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2, "I64": np.int64,
                       "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_tensors(path: str) -> dict[str, np.ndarray]:
  """A safetensors file -> {name: read-only NumPy view of its bytes in a memory map}: nothing is copied until
  the caller transfers the views. Every header entry is checked against the file (dtype, shape against its
  byte range, the range inside the file): a truncated or corrupt file is a ValueError naming it."""
  def bad(reason):
    return ValueError(f"{path}: cannot read the weights file (corrupt or truncated?): {reason}")
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      head = f.read(8)
      if len(head) < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
      (header_len,) = struct.unpack("<Q", head)
      if header_len > size - 8:
        raise bad(f"header of {header_len} bytes in a file of {size}")
      header = json.loads(f.read(header_len))
    data = np.memmap(path, np.uint8, "r") if size > 8 + header_len else np.zeros(0, np.uint8)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise bad(e) from None
  if not isinstance(header, dict):
    raise bad("the header is not a JSON object")
  start, views = 8 + header_len, {}
  for name, entry in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
      shape = tuple(int(d) for d in entry["shape"])
      begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
      raise bad(f"tensor {name!r}: unreadable header entry {entry!r}") from None
    if min(shape, default=0) < 0 or not 0 <= begin <= end or end - begin != math.prod(shape) * dtype.itemsize:
      raise bad(f"tensor {name!r}: {entry['dtype']} {list(shape)} does not fit its bytes {begin}..{end}")
    if start + end > size:
      raise bad(f"tensor {name!r} ends at byte {start + end}, past the end of the file ({size} bytes)")
    views[name] = data[start + begin:start + end].view(dtype).reshape(shape)
  return views


def _load_dtype(stored, requested):
  """float32 norms stay float32 under a bf16 request; a float32 request upcasts everything."""
  stored, requested = jnp.dtype(stored), jnp.dtype(requested)
  return requested if requested.itemsize >= stored.itemsize else stored
