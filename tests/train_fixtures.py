"""Shared by the trainer's tests: run `python -m hybrid_forcing_jax.train` on the tiny config."""
from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "ode_init.py") + ":tiny"


def train_command(workdir: str, *overrides: str, config: str = TINY) -> list[str]:
  return [sys.executable, "-m", "hybrid_forcing_jax.train", f"--config={config}", f"--workdir={workdir}",
          *overrides]


def data_overrides(folder: str) -> list[str]:
  """Overrides that point the tiny config's inputs into `folder` (prompts.txt, ode_pairs/, text_cache/)."""
  return [f"--config.data.prompts={folder}/prompts.txt", f"--config.ode_pairs.output_dir={folder}/ode_pairs",
          f"--config.text.cache_dir={folder}/text_cache"]


def run_train(workdir: str, *overrides: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
  return subprocess.run(train_command(workdir, *overrides, **kwargs), cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, **(env or {})}, timeout=300)
