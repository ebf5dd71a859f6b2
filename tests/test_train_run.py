"""ODE init end to end through the command line on the tiny config: the loss falls >= 10x on 4 fixed
pairs; a run stopped by SIGTERM (saves, exits 143) and then killed with SIGKILL resumes, each time
with the same command, and logs exactly the losses of an uninterrupted run; the exported EMA
generator loads as a converted checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from hybrid_forcing_jax.checkpoint import load_checkpoint
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.training.metrics import read_jsonl
from tests.train_fixtures import REPO, data_overrides, train_command, write_tiny_inputs

STEPS = 150


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("train_run")
  write_tiny_inputs(str(root))
  overrides = [*data_overrides(str(root)), f"--config.train.steps={STEPS}", "--config.train.checkpoint_every=25",
               "--config.optim.lr=3e-3"]
  # The three restarts compile the same programs: the persistent cache keeps the test short.
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / "xla_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  return root, overrides, env


def run_to_end(workdir, overrides, env):
  result = subprocess.run(train_command(str(workdir), *overrides), cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def start(workdir, overrides, env):
  return subprocess.Popen(train_command(str(workdir), *overrides), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def wait_for_step(workdir, step: int, proc, timeout: float = 240.0) -> None:
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    if os.path.exists(path) and any(r["step"] >= step for r in read_jsonl(path)):
      return
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not logged within {timeout} s")


def test_overfits_resumes_exactly_and_exports(setup):
  root, overrides, env = setup
  whole = root / "whole"
  run_to_end(whole, overrides, env)
  losses = {r["step"]: r["loss"] for r in read_jsonl(whole / "metrics.jsonl")}
  assert sorted(losses) == list(range(1, STEPS + 1))
  assert losses[STEPS] * 10 <= losses[1], (losses[1], losses[STEPS])

  broken = root / "broken"
  proc = start(broken, overrides, env)
  wait_for_step(broken, 30, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 143, err[-3000:]
  assert "stopped by SIGTERM" in out
  proc = start(broken, overrides, env)
  wait_for_step(broken, 90, proc)
  proc.kill()
  proc.wait()
  assert max(r["step"] for r in read_jsonl(broken / "metrics.jsonl")) >= 90
  result = run_to_end(broken, overrides, env)
  assert "resuming from step" in result.stdout
  resumed = read_jsonl(broken / "metrics.jsonl")
  assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))  # the redone steps are not logged twice
  assert [r["loss"] for r in resumed] == [losses[s] for s in range(1, STEPS + 1)]

  export = whole / "export" / f"{STEPS:08d}"
  config, params = load_checkpoint(str(export), "wan_dit", expected_config=tiny_config())
  assert np.isfinite(np.asarray(params["head"]["head"]["weight"], np.float32)).all()
