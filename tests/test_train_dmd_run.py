"""The DMD stage end to end through the command line, both phases on tiny models (CPU):

  phase 1 (configs/self_forcing.py:tiny) from a tiny "ODE-init" export: DMD and critic losses logged at
    every step, a generator update at steps 1, 6, 11 (one per 5 critic updates), the step counting
    critic updates; killed with SIGKILL and resumed with the same command, it logs exactly the
    uninterrupted run's losses, generator metrics included;
  make_teacher_rollouts (configs/hybrid.py:tiny) writes the regulariser's targets (its resume is
    make_ode_pairs' machinery, tested there);
  phase 2 (configs/hybrid.py:tiny, regulariser from those records, rollouts of 6 or 12 frames with the
    long-rollout rule) from phase 1's EMA export: linear_proj is added at zero (printed), the critic
    restarts from the base model, losses are logged;
  the phase-2 export streams through the sampling pipeline (hybrid stream, tiny VAE).
Processes share a persistent compilation cache; the file runs a few minutes on 2 cores.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from hybrid_forcing_jax.training.metrics import read_jsonl
from tests.train_fixtures import REPO, kill_after_checkpoint, train_command, write_tiny_dit

SELF_FORCING = os.path.join(REPO, "configs", "self_forcing.py") + ":tiny"
HYBRID = os.path.join(REPO, "configs", "hybrid.py") + ":tiny"
PHASE1_STEPS, PHASE2_STEPS = 60, 6   # tiny steps take ~20 ms: 60 leave time to kill a run mid-way
TIMING_KEYS = ("step_time_s", "samples_per_s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("dmd_run")
  with open(root / "prompts.txt", "w") as f:
    f.write("".join(f"tiny prompt number {i}\n" for i in range(4)))
  base = write_tiny_dit(str(root / "base"), seed=1)            # the critic's starting point
  ode_init = write_tiny_dit(str(root / "ode_init"), seed=2)    # phase 1's generator
  teacher = write_tiny_dit(str(root / "teacher"), seed=3)
  common = [f"--config.data.prompts={root}/prompts.txt", f"--config.text.cache_dir={root}/text_cache",
            f"--config.teacher.checkpoint={teacher}", f"--config.critic.checkpoint={base}"]
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(root / "xla_cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
  phase1 = [*common, f"--config.model.checkpoint={ode_init}", f"--config.train.steps={PHASE1_STEPS}",
            "--config.train.checkpoint_every=10"]
  return root, common, phase1, env


def run(command, env):
  done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  return done


def losses(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS and not k.startswith("memory/")} for r in records]


def test_both_phases_resume_exactly_and_stream(setup):
  root, common, phase1, env = setup

  # Phase 1, uninterrupted.
  whole = root / "phase1"
  run(train_command(str(whole), *phase1, config=SELF_FORCING), env)
  records = read_jsonl(whole / "metrics.jsonl")
  assert [r["step"] for r in records] == list(range(1, PHASE1_STEPS + 1))
  assert sorted({r["generator/at_step"] for r in records}) == list(range(1, PHASE1_STEPS, 5))
  for r in records:
    assert np.isfinite([r["critic/loss"], r["generator/dmd_loss"], r["critic/grad_norm"],
                        r["generator/grad_norm"]]).all()
    assert r["generator/rollout_chunks"] == 2 and r["generator/exit_step"] in (0, 1, 2, 3)
  assert records[-1]["generator/dmd_loss"] > 0 and records[-1]["generator/grad_norm"] > 0
  assert len({r["critic/loss"] for r in records}) == PHASE1_STEPS   # a fresh batch and rollout every step

  # Phase 1, killed (SIGKILL) as soon as its first checkpoint is committed, resumed: the same records.
  broken = root / "phase1_broken"
  kill_after_checkpoint(train_command(str(broken), *phase1, config=SELF_FORCING), broken, env, step=10)
  path = broken / "metrics.jsonl"
  killed_at = max(r["step"] for r in read_jsonl(path))
  assert killed_at < PHASE1_STEPS
  resumed = run(train_command(str(broken), *phase1, config=SELF_FORCING), env)
  assert "resuming from step" in resumed.stdout
  assert losses(read_jsonl(path)) == losses(records)
  export1 = whole / "export" / f"{PHASE1_STEPS:08d}"

  # The regulariser's teacher targets, then phase 2 from phase 1's EMA export.
  records_dir = root / "teacher_rollouts"
  make = [sys.executable, "-m", "hybrid_forcing_jax.make_teacher_rollouts", f"--config={HYBRID}", *common,
          f"--config.regulariser.records={records_dir}"]
  assert "2 of 2 shards done" in run(make, env).stderr
  phase2_dir = root / "phase2"
  done = run(train_command(str(phase2_dir), *common, f"--config.model.checkpoint={export1}",
                           f"--config.regulariser.records={records_dir}", "--config.regulariser.source=records",
                           f"--config.train.steps={PHASE2_STEPS}", config=HYBRID), env)
  assert "linear_proj" in done.stdout and "start at zero" in done.stdout
  phase2 = read_jsonl(phase2_dir / "metrics.jsonl")
  assert [r["step"] for r in phase2] == list(range(1, PHASE2_STEPS + 1))
  assert all(np.isfinite([r["critic/loss"], r["generator/dmd_loss"]]).all() for r in phase2)
  assert {r["generator/rollout_chunks"] for r in phase2} <= {2, 4}
  with open(phase2_dir / "run.json") as f:
    assert json.load(f)["model"]["linear_proj"] is True

  # The phase-2 export streams.
  frames = stream_frames(str(phase2_dir / "export" / f"{PHASE2_STEPS:08d}"), root)
  assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8 and frames.std() > 0


def stream_frames(export: str, root) -> np.ndarray:
  """Three chunks of the hybrid stream from `export` through StreamingPipeline (tiny VAE, tiny umT5)."""
  import jax.numpy as jnp

  from configs import hybrid
  from hybrid_forcing_jax.checkpoint import load_checkpoint
  from hybrid_forcing_jax.dit import WanDiT
  from hybrid_forcing_jax.pipeline import StreamingPipeline
  from hybrid_forcing_jax.streaming.config import from_config
  from hybrid_forcing_jax.training.data.prompts import build_text_encoder
  from hybrid_forcing_jax.training.dmd_stage import random_tiny_vae

  cfg = hybrid.get_config("tiny")
  config, params = load_checkpoint(export, "wan_dit", dtype=jnp.float32)
  assert config.linear_proj
  encoder, tokenize = build_text_encoder(cfg.text)
  vae, vae_params = random_tiny_vae(config.in_dim, seed=0)
  pipe = StreamingPipeline(WanDiT(config, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla"),
                           params, from_config(cfg.stream), vae, vae_params,
                           lambda prompts: encoder.encode_ids(*tokenize(prompts)))
  chunks = [frames for _, frames in pipe.frames([(0, "tiny prompt number 0")], height=64, width=64, seed=0,
                                                num_chunks=3)]
  return np.concatenate(chunks)
