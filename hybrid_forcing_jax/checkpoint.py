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

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open
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
  flat = {}
  try:
    with safe_open(path, framework="numpy") as f:
      names = list(f.keys())
      check_params({n: _Shape(f.get_slice(n).get_shape()) for n in names}, expected, where=path)
      for n in names:
        arr = f.get_tensor(n)
        target = expected[n].dtype if dtype is None else _load_dtype(expected[n].dtype, dtype)
        flat[n] = jnp.asarray(arr, dtype=target)
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{path}: cannot read the weights file (corrupt or truncated?): {e}") from None
  return config, unflatten(flat)


@dataclasses.dataclass
class _Shape:
  shape: tuple


def _load_dtype(stored, requested):
  """float32 norms stay float32 under a bf16 request; a float32 request upcasts everything."""
  stored, requested = jnp.dtype(stored), jnp.dtype(requested)
  return requested if requested.itemsize >= stored.itemsize else stored
