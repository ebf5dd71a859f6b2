"""Dict / JSON round trip shared by the frozen dataclass configs (DiT, VAE, umT5, stream)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any


class JsonConfig:
  """Mixin for a dataclass config: `to_dict` (tuples as lists, as JSON has them), `to_json`, and
  `from_dict`, which names unknown keys instead of dropping them or failing inside the constructor."""

  def to_dict(self) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"{cls.__name__}: unknown keys {unknown}; known keys are {sorted(known)}")
    return cls(**d)
