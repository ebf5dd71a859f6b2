"""Readers for PyTorch checkpoints: tensors by name, one at a time, without loading the whole file.

* safetensors, a single file or sharded with a `*.safetensors.index.json` (memory-mapped);
* PyTorch pickles (`.pt`, `.pth`) through `torch.load(mmap=True, weights_only=True)`; training
  checkpoints (Self-Forcing, Hybrid Forcing) hold state dicts under container keys such as
  `generator_ema` and `generator`, picked with `container=`.

Every reader raises a ValueError naming the file for a missing, corrupt or truncated file, and for a
pickle that asks to import or call anything but tensors and plain containers: such a file is refused
for safety, since unpickling it could run code.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from typing import Iterable

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open


class TensorSource:
  """Named tensors of one checkpoint. Subclasses implement keys, shape and get."""
  path: str

  def keys(self) -> list[str]:
    raise NotImplementedError

  def shape(self, key: str) -> tuple[int, ...]:
    raise NotImplementedError

  def get(self, key: str) -> np.ndarray:
    raise NotImplementedError

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: self.shape(k) for k in self.keys()}


class SafetensorsSource(TensorSource):
  def __init__(self, path: str):
    self.path = path
    files = _safetensors_files(path)
    self._handles = {}
    self._where: dict[str, str] = {}
    for file in files:
      try:
        handle = safe_open(file, framework="numpy")
      except (SafetensorError, OSError) as e:
        raise ValueError(f"{file}: not a readable safetensors file (corrupt or truncated?): {e}") from None
      self._handles[file] = handle
      for key in handle.keys():
        if key in self._where:
          raise ValueError(f"{path}: tensor {key!r} appears in both {self._where[key]} and {file}")
        self._where[key] = file
    if path.endswith(".json"):
      _check_index(path, self._where)

  def keys(self):
    return list(self._where)

  def shape(self, key):
    return tuple(self._handles[self._where[key]].get_slice(key).get_shape())

  def get(self, key):
    try:
      return self._handles[self._where[key]].get_tensor(key)
    except (SafetensorError, OSError) as e:
      raise ValueError(f"{self._where[key]}: cannot read tensor {key!r} (corrupt or truncated?): {e}") from None


def _safetensors_files(path: str) -> list[str]:
  if not path.endswith(".json"):
    return [path]
  with open(path) as f:
    try:
      weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError) as e:
      raise ValueError(f"{path}: not a safetensors index (needs a 'weight_map'): {e}") from None
  folder = os.path.dirname(path)
  files = sorted({os.path.join(folder, name) for name in weight_map.values()})
  for file in files:
    if not os.path.isfile(file):
      raise FileNotFoundError(f"{path}: shard {file} is missing")
  return files


def _check_index(path: str, where: dict[str, str]) -> None:
  with open(path) as f:
    weight_map = json.load(f)["weight_map"]
  folder = os.path.dirname(path)
  for key, name in weight_map.items():
    if where.get(key) != os.path.join(folder, name):
      raise ValueError(f"{path}: index lists {key!r} in {name}, but that shard does not hold it")
  listed = set(weight_map)
  unlisted = sorted(k for k in where if k not in listed)
  if unlisted:
    raise ValueError(f"{path}: shards hold tensors the index does not list: {unlisted[:10]}")


class TorchSource(TensorSource):
  """A `.pt`/`.pth` file; `container` selects a nested state dict (e.g. 'generator_ema')."""

  def __init__(self, path: str, container: str | None = None, containers: Iterable[str] = ()):
    try:
      import torch
    except ImportError:
      raise ImportError("reading PyTorch .pt/.pth checkpoints needs torch: pip install 'hybrid_forcing_jax[torch]'") from None
    self.path = path
    obj = _torch_load(torch, path)
    if container is not None:
      if not isinstance(obj, dict) or container not in obj:
        present = sorted(k for k in obj if isinstance(obj.get(k), dict)) if isinstance(obj, dict) else []
        raise ValueError(f"{path}: has no {container!r} state dict; it holds {present}")
      obj = obj[container]
    elif isinstance(obj, dict) and any(k in obj for k in containers):
      present = [k for k in containers if k in obj]
      raise ValueError(f"{path}: is a training checkpoint holding {present}; choose one")
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
      raise ValueError(f"{path}: expected a state dict of tensors{f' under {container!r}' if container else ''}")
    self._tensors = obj

  def keys(self):
    return list(self._tensors)

  def shape(self, key):
    return tuple(self._tensors[key].shape)

  def get(self, key):
    import torch
    t = self._tensors[key].detach()
    if t.dtype == torch.bfloat16:
      return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


_ZIP_MAGIC = b"PK\x03\x04"   # torch.save writes a zip archive (since torch 1.6)
_PICKLE_MAGIC = b"\x80"       # ... before that, bare pickles


def _torch_load(torch, path: str):
  with open(path, "rb") as f:
    head = f.read(len(_ZIP_MAGIC))
  if not head:
    raise ValueError(f"{path}: is empty, not a PyTorch checkpoint")
  if head.startswith(_PICKLE_MAGIC):
    raise ValueError(f"{path}: is in PyTorch's legacy (before 1.6) format, which cannot be read tensor by tensor; "
                     "re-save it with torch.save from a current torch")
  if head != _ZIP_MAGIC:
    raise ValueError(f"{path}: not a PyTorch checkpoint (torch.save writes a zip archive; this file is not one)")
  try:
    return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
  except pickle.UnpicklingError as e:
    if "Weights only load failed" not in str(e):
      raise ValueError(f"{path}: cannot load as a PyTorch checkpoint (corrupt or truncated?)") from None
    name = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f"import or call {name.group(1)!r}" if name else "build an object"
    raise ValueError(f"{path}: refused for safety: the file asks to {what}, which is not a tensor or a plain "
                     "container, and loading it could run code") from None
  except Exception as e:  # torch raises many types for a damaged zip
    raise ValueError(f"{path}: cannot load as a PyTorch checkpoint (corrupt or truncated?): {e}") from None


class RenamedSource(TensorSource):
  """A view of another source under rewritten names; two names that collide are an error."""

  def __init__(self, inner: TensorSource, rename):
    self.path = inner.path
    self._inner = inner
    self._names: dict[str, str] = {}
    for key in inner.keys():
      new = rename(key)
      if new in self._names:
        raise ValueError(f"{inner.path}: {key!r} and {self._names[new]!r} both become {new!r}")
      self._names[new] = key

  def keys(self):
    return list(self._names)

  def shape(self, key):
    return self._inner.shape(self._names[key])

  def get(self, key):
    return self._inner.get(self._names[key])

  def original_name(self, key: str) -> str:
    return self._names[key]


def neighbour_json(path: str) -> tuple[str, dict]:
  """(path, contents) of the `config.json` beside a checkpoint file; {} when there is none or it is
  not a JSON object."""
  candidate = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
  if not os.path.isfile(candidate):
    return candidate, {}
  with open(candidate) as f:
    try:
      cfg = json.load(f)
    except json.JSONDecodeError:
      return candidate, {}
  return candidate, cfg if isinstance(cfg, dict) else {}


def open_source(path: str, container: str | None = None, containers: Iterable[str] = ()) -> TensorSource:
  """Pick the reader from the file name: .safetensors / .safetensors.index.json / .pt / .pth / .bin."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {path!r} does not exist")
  if os.path.isdir(path):
    raise ValueError(f"{path!r} is a folder; pass the checkpoint file (or its .safetensors.index.json)")
  if path.endswith((".safetensors", ".json")):
    if container is not None:
      raise ValueError(f"{path}: a safetensors file has no container {container!r}")
    return SafetensorsSource(path)
  if path.endswith((".pt", ".pth", ".bin", ".ckpt")):
    return TorchSource(path, container, containers)
  raise ValueError(f"{path!r}: unknown checkpoint type; expected .safetensors, .safetensors.index.json, .pt or .pth")
