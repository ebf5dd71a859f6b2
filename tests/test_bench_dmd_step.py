"""benchmarks/bench_dmd_step.py on a mesh (issue 11: the DMD step on two GPUs with the 14B teacher sharded),
on 2 simulated CPU devices in subprocesses (XLA_FLAGS=--xla_force_host_platform_device_count=2):

  * the benchmark runs on --mesh=1,2 with tiny presets, prints its table, and the teacher's largest weight
    is held half on each device (the only tiny-sized preset is "tiny", so the teacher's preset is the
    generator's, passed through --teacher_preset); --results_jsonl writes the run's line for bench_scaling.py;
  * the 14B teacher's init program, as dmd_full_size.build jits it, makes only half the teacher on each
    device and never the whole (XLA's memory analysis of the compiled program; nothing is allocated);
  * bench_dmd_breakdown, which stays on one device, refuses --mesh other than 1,1, naming the flag.

~50 s on the 2-core dev box, nearly all of it compiling the two updates.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.train_fixtures import REPO

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}

TEACHER_14B = """
import json
import jax
import ml_collections
from benchmarks import dmd_full_size
from hybrid_forcing_jax.training import builders, sharding
teacher = builders.build_module(ml_collections.ConfigDict(dict(
    preset="wan_14b", overrides={}, checkpoint="", dtype="bfloat16", remat_policy="none", attention_backend="auto")))
init, shardings = dmd_full_size.frozen_program(teacher, 512, sharding.make_mesh(1, 2))
memory = jax.jit(init, out_shardings=shardings).lower().compile().memory_analysis()
weights = jax.eval_shape(init)["teacher"]
q = weights["blocks"]["self_attn"]["q"]["weight"]
q_sharding = shardings["teacher"]["blocks"]["self_attn"]["q"]["weight"]
print(json.dumps({"whole": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(weights)),
                  "out": memory.output_size_in_bytes, "temp": memory.temp_size_in_bytes,
                  "q": q.shape, "q_shard": q_sharding.shard_shape(q.shape)}))
"""


def _run(args, timeout=300):
  return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


def test_bench_dmd_step_runs_on_two_devices_with_the_teacher_split(tmp_path):
  results = tmp_path / "dmd.jsonl"
  done = _run(["-m", "benchmarks.bench_dmd_step", "--preset=tiny", "--teacher_preset=tiny", "--latent_hw=8,8",
               "--text_len=16", "--remat=none", "--mesh=1,2", "--generator_steps=1", "--critic_steps=1",
               f"--results_jsonl={results}"])
  assert done.returncode == 0, done.stderr[-3000:]
  # --results_jsonl (what bench_scaling.py sweeps with): one line, the table's numbers and the per-step formula.
  [line] = [json.loads(l) for l in results.read_text().splitlines()]
  assert line["bench"] == "dmd_step" and line["device_kind"] == "cpu"
  assert (line["mesh_data"], line["mesh_fsdp"], line["devices"], line["global_batch"]) == (1, 2, 2, 2)
  assert line["setting"] == dict(phase=2, preset="tiny", teacher_preset="tiny", remat="none", critic_remat="none",
                                 latent_hw=[8, 8], text_len=16)
  assert line["generator_updates"] == line["critic_updates"] == 1
  assert abs(line["per_step_s"] - (line["critic_s"] + line["generator_s"] / 5)) < 1e-9
  assert abs(line["samples_per_s"] - line["global_batch"] / line["per_step_s"]) < 1e-6
  assert abs(line["samples_per_s_per_device"] - line["samples_per_s"] / line["devices"]) < 1e-6
  assert line["peak_gib_per_device_max"] == 0.0   # the CPU keeps no memory statistics
  assert f"per step (one critic update + 1/5 of a generator update): {line['per_step_s']:.3f} s" in done.stdout
  out = done.stdout
  assert "(mesh data 1 x fsdp 2, batch 2 = 1 per device), generator and critic tiny, teacher tiny" in out
  assert re.search(r"^generator +all +1 ", out, re.M) and re.search(r"^critic +all +1 ", out, re.M), out
  assert re.search(r"^memory per device, GiB +max +device 0 +device 1$", out, re.M), out
  for row in ("teacher held", "train state held", "generator update program", "critic update program",
              "peak at the end"):
    assert re.search(rf"^{row} +(\d+\.\d\d +){{2}}\d+\.\d\d$", out, re.M), row
  # The tiny teacher's largest weight, time_projection.1.weight [6 dim, dim], split on its first axis.
  assert "teacher tiny: largest weight time_projection.1.weight (288, 48) held as (144, 48) on device 0" in out


def test_the_14b_teacher_is_made_half_on_each_device():
  done = _run(["-c", TEACHER_14B], timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  r = json.loads(done.stdout.strip().splitlines()[-1])
  assert 28.9e9 < r["whole"] < 29.0e9   # 14.3B parameters, bf16 (norms and modulation float32)
  # Each device's program outputs its half (the small replicated parameters on top) ...
  assert 0.5 * r["whole"] < r["out"] < 0.501 * r["whole"]
  # ... and its temporaries (random bits of a shard) stay well under the other half: never the whole teacher.
  assert r["temp"] < 0.15 * r["whole"]
  assert r["q"] == [40, 5120, 5120] and r["q_shard"] == [40, 2560, 5120]


def test_bench_dmd_breakdown_refuses_a_mesh():
  done = _run(["-m", "benchmarks.bench_dmd_breakdown", "--preset=tiny", "--mesh=1,2"], timeout=120)
  assert done.returncode == 2, done.stderr[-3000:]
  assert "bench_dmd_breakdown: error: --mesh=1,2: bench_dmd_breakdown times its parts on one device" in done.stderr


CRITIC_REMAT = """
import sys
from absl import flags
from benchmarks import dmd_full_size
flags.FLAGS(["x", "--preset=tiny", "--latent_hw=8,8", "--text_len=16", "--remat=none"] + sys.argv[1:])
setup = dmd_full_size.build().setup
print(setup.generator.remat, setup.critic.remat, dmd_full_size.setting(setup))
"""


def test_the_critic_gets_its_own_remat_policy():
  """--critic_remat (the first lever for the critic's backward) applies to the critic alone; without it the
  critic follows --remat."""
  own = _run(["-c", CRITIC_REMAT, "--critic_remat=dots_saveable"], timeout=120)
  assert own.returncode == 0, own.stderr[-3000:]
  assert own.stdout.strip().startswith("none dots_saveable ") and "remat none (critic dots_saveable)" in own.stdout
  same = _run(["-c", CRITIC_REMAT], timeout=120)
  assert same.returncode == 0, same.stderr[-3000:]
  assert same.stdout.strip().startswith("none none ") and "(critic" not in same.stdout
