"""Apply a declarative key table to a checkpoint and assemble the canonical (stacked) parameters.

A table is a list of (source pattern, canonical pattern) rules; `*` stands for a layer index and must
appear in both. Canonical names are per layer (`blocks.7.self_attn.q.weight`); `stack` folds the
index after a stacked prefix (`blocks`) into axis 0 of the tree's leaf (`blocks.self_attn.q.weight`).

Guarantees, each an error naming the key: every source tensor is matched by exactly one rule; every
expected parameter (every layer) is written exactly once; every shape equals the expected one.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import jax
import numpy as np
from tqdm import tqdm

from convert.sources import TensorSource


@dataclasses.dataclass(frozen=True)
class Rule:
  source: str
  canonical: str

  def __post_init__(self):
    if self.source.count("*") != self.canonical.count("*"):
      raise ValueError(f"rule {self}: '*' must appear equally often on both sides")


@dataclasses.dataclass(frozen=True)
class Table:
  """One checkpoint format's names, mapped to the canonical names."""
  name: str
  rules: tuple[Rule, ...]

  def __post_init__(self):
    compiled = []
    for rule in self.rules:
      pattern = re.escape(rule.source).replace(r"\*", r"(\d+)")
      compiled.append((re.compile(pattern + r"\Z"), rule))
    object.__setattr__(self, "_compiled", tuple(compiled))

  def rename(self, key: str) -> str | None:
    hits = [(m, rule) for regex, rule in self._compiled if (m := regex.match(key))]
    if len(hits) > 1:
      raise ValueError(f"table {self.name!r}: key {key!r} matches several rules: {[r.source for _, r in hits]}")
    if not hits:
      return None
    match, rule = hits[0]
    out = rule.canonical
    for index in match.groups():
      out = out.replace("*", index, 1)
    return out


def rules(*pairs: tuple[str, str], params: Sequence[str] = ("weight", "bias")) -> tuple[Rule, ...]:
  """Rules for module pairs, one per parameter name (weight and bias by default)."""
  return tuple(Rule(f"{s}.{p}", f"{c}.{p}") for s, c in pairs for p in params)


def canonical_names(source: TensorSource, table: Table) -> dict[str, str]:
  """{canonical per-layer name: source name}; every source key must match a rule."""
  renamed, unmatched = {}, []
  for key in source.keys():
    canonical = table.rename(key)
    if canonical is None:
      unmatched.append(key)
    elif canonical in renamed:
      raise ValueError(f"{source.path}: {key!r} and {renamed[canonical]!r} both map to {canonical!r}")
    else:
      renamed[canonical] = key
  if unmatched:
    raise ValueError(f"{source.path}: {len(unmatched)} tensor(s) are not part of the {table.name!r} format "
                     f"and would be dropped: {sorted(unmatched)[:20]}{' ...' if len(unmatched) > 20 else ''}")
  return renamed


def check_num_layers(src: str, found: int, config_json: str, declared: dict) -> None:
  """A checkpoint that lacks whole trailing layers has consecutive block indices, so its shapes alone
  look like a shallower model; the `num_layers` of a config.json beside it tells the difference."""
  want = declared.get("num_layers")
  if want is not None and want != found:
    raise ValueError(f"{src}: holds {found} layers, but {config_json} says num_layers={want} (an incomplete "
                     "checkpoint, or a config.json of another model)")


def split_layer(name: str, stacked_prefixes: Iterable[str]) -> tuple[str, int | None]:
  """'blocks.7.self_attn.q.weight' -> ('blocks.self_attn.q.weight', 7) for stacked prefix 'blocks'."""
  for prefix in stacked_prefixes:
    head = prefix + "."
    if name.startswith(head):
      index, _, rest = name[len(head):].partition(".")
      if index.isdigit():
        return f"{prefix}.{rest}", int(index)
  return name, None


def stack(source: TensorSource, names: dict[str, str], expected: dict[str, jax.ShapeDtypeStruct],
          stacked_prefixes: Iterable[str], *, progress: bool = True) -> dict[str, np.ndarray]:
  """Read each tensor once and write it into a preallocated canonical array of the storage dtype.

  Peak host memory is the output plus one source tensor, so converting needs about the checkpoint's
  own size, not two copies of it.
  """
  stacked_prefixes = tuple(stacked_prefixes)
  plan: dict[str, tuple[str, int | None]] = {}
  for canonical, src_key in names.items():
    target, index = split_layer(canonical, stacked_prefixes)
    if target not in expected:
      raise ValueError(f"{source.path}: {src_key!r} (as {canonical!r}) is not a parameter of this model")
    spec = expected[target]
    want = tuple(spec.shape) if index is None else tuple(spec.shape[1:])
    if index is not None and index >= spec.shape[0]:
      raise ValueError(f"{source.path}: {src_key!r} is layer {index}, but the model has {spec.shape[0]} layers")
    got = source.shape(src_key)
    if got != want:
      raise ValueError(f"{source.path}: {src_key!r} has shape {got}, expected {want} (for {canonical!r})")
    plan[canonical] = (target, index)

  out = {name: np.empty(spec.shape, spec.dtype) for name, spec in expected.items()}
  written = {name: np.zeros(spec.shape[0] if _is_stacked(name, stacked_prefixes) else 1, bool)
             for name, spec in expected.items()}
  for canonical in tqdm(sorted(plan), desc="converting", unit="tensor", disable=not progress):
    target, index = plan[canonical]
    value = source.get(names[canonical])
    if index is None:
      out[target][...] = value
      written[target][0] = True
    else:
      out[target][index] = value
      written[target][index] = True
    del value
  missing = []
  for name, done in written.items():
    if _is_stacked(name, stacked_prefixes):
      prefix, rest = name.split(".", 1)
      missing += [f"{prefix}.{i}.{rest}" for i in np.flatnonzero(~done)]
    elif not done[0]:
      missing.append(name)
  if missing:
    raise ValueError(f"{source.path}: {len(missing)} parameter(s) missing from the checkpoint: "
                     f"{missing[:20]}{' ...' if len(missing) > 20 else ''}")
  return out


def _is_stacked(name: str, stacked_prefixes: tuple[str, ...]) -> bool:
  return any(name.startswith(p + ".") for p in stacked_prefixes)
