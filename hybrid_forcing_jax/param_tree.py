"""Canonical parameter names: a nested parameter tree <-> a flat {dotted name: leaf} dict.

The dotted names are Wan's original checkpoint names with the layer index folded into a leading
axis (see checkpoint.py); conversion tables, sharding rules and checkpoint files all speak them.
"""
from __future__ import annotations

from typing import Any

import jax


def flatten(tree) -> dict[str, Any]:
  """{'blocks': {'self_attn': {'q': {'weight': a}}}} -> {'blocks.self_attn.q.weight': a}."""
  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    flat[".".join(str(getattr(p, "key", p)) for p in path)] = leaf
  return flat


def unflatten(flat: dict[str, Any]) -> dict:
  tree: dict = {}
  for name, leaf in flat.items():
    node = tree
    *parents, last = name.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[last] = leaf
  return tree
