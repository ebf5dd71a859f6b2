"""Checks on output locations, shared by every command that writes a folder."""
from __future__ import annotations

import os


def ensure_writable_folder(folder: str) -> None:
  """Create `folder` if needed and prove a file can be written in it (OSError otherwise), before a
  command spends minutes on work it could not save."""
  os.makedirs(folder, exist_ok=True)
  probe = os.path.join(folder, f".write-probe-{os.getpid()}")
  with open(probe, "w"):
    pass
  os.remove(probe)
