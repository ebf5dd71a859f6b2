"""Shared by the trainer's tests: run `python -m hybrid_forcing_jax.train` on the tiny config."""
from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

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


def kill_after_checkpoint(command: list[str], workdir, env: dict, step: int, timeout: float = 400) -> None:
  """Start a train `command` for `workdir` and kill it (SIGKILL) as soon as its checkpoint `step` is
  committed. Its stderr goes to workdir/stderr.txt (shown if it ends first): a pipe nobody reads would fill
  with XLA's warnings and stall the run."""
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / "stderr.txt", "w") as log:
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
  deadline = time.time() + timeout
  while not (workdir / "checkpoints" / str(step) / "commit_success.txt").exists():
    assert proc.poll() is None and time.time() < deadline, (workdir / "stderr.txt").read_text()[-3000:]
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def write_tiny_inputs(folder: str, num_prompts: int = 4, seed: int = 0) -> None:
  """prompts.txt and an ODE-pair folder for configs/ode_init.py:tiny: straight flow trajectories
  x_i = (1 - sigma_i) x0 + sigma_i eps kept at the tiny config's timesteps (what a perfect teacher of
  the flow gives), one record per prompt."""
  import numpy as np

  from configs import ode_init
  from hybrid_forcing_jax import flow
  from hybrid_forcing_jax.config import tiny_config
  from hybrid_forcing_jax.training.data.ode_pairs import OdePairWriter

  c = ode_init.get_config("tiny")
  prompts = [f"tiny prompt number {i}" for i in range(num_prompts)]
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "prompts.txt"), "w") as f:
    f.write("\n".join(prompts) + "\n")
  sigmas = flow.euler_sigmas(c.ode_pairs.num_steps, c.ode_pairs.shift)[list(c.ode_pairs.keep)]
  writer = OdePairWriter(os.path.join(folder, "ode_pairs"), {"test": "tiny"}, num_prompts=num_prompts,
                         records_per_shard=c.ode_pairs.records_per_shard, timesteps=sigmas * flow.NUM_TRAIN_TIMESTEPS)
  rng = np.random.default_rng(seed)
  shape = (c.data.num_frames, *c.data.latent_hw, tiny_config().in_dim)
  for shard in range(writer.num_shards):
    with writer.open_shard(shard) as w:
      for i in writer.shard_range(shard):
        x0, eps = rng.standard_normal(shape), rng.standard_normal(shape)
        w.write(prompts[i], i, np.stack([(1 - s) * x0 + s * eps for s in sigmas]))


def write_tiny_dit(folder: str, seed: int, **overrides) -> str:
  """A converted tiny DiT folder with random weights, its output head random too (Wan zero-initialises
  it, which makes every random model predict v = 0: teacher and critic would agree exactly)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from hybrid_forcing_jax import dit
  from hybrid_forcing_jax.checkpoint import flatten, save_checkpoint
  from hybrid_forcing_jax.config import tiny_config

  config = tiny_config(**overrides)
  key_init, key_head = jax.random.split(jax.random.key(seed))
  params = flatten(dit.init_params(config, key_init, param_dtype=jnp.float32))
  head = "head.head.weight"
  params[head] = 0.1 * jax.random.normal(key_head, params[head].shape, jnp.float32)
  save_checkpoint(folder, "wan_dit", config, {k: np.asarray(v) for k, v in params.items()})
  return folder
