"""Why a benchmark's subprocess failed, in one line: the exception's own line (`jax.errors.JaxRuntimeError:
INTERNAL: ...`, `ValueError: ...`) rather than the traceback's last frames, or "out of memory"."""
from __future__ import annotations

import re

# A raised exception's line: a dotted name ending in Error / Exception / Exit, then its message.
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit)(: .*)?$")
_MAX_CHARS = 600


def failure_line(text: str, returncode: int | None = None) -> str:
  """The reason a process that printed `text` (stderr, or stdout + stderr) failed: "out of memory" when XLA
  said RESOURCE_EXHAUSTED or out of memory, else the last exception line, else the last non-empty line."""
  if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
    return "out of memory"
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  for line in reversed(lines):
    if _EXCEPTION.match(line):
      return line[:_MAX_CHARS]
  if lines:
    return lines[-1][:_MAX_CHARS]
  return f"exit status {returncode} without output"
