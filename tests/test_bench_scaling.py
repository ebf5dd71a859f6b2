"""benchmarks/bench_scaling.py (issue 15's sweep over meshes) on 2 simulated CPU devices in subprocesses
(XLA_FLAGS=--xla_force_host_platform_device_count=2), tiny presets:

  * dmd_step over 4x1: skipped with a note (2 devices), no run;
  * ode_init_step over 1x1 and 1x2: no second run once the first's duration would pass --budget_s; the same
    command again runs only the missing mesh, and the table has the scaling efficiency against the 1x1 row;
    --report_only prints the same table;
  * a failed run leaves an error line that the table shows and a resume skips;
  * bad flags of the sweep and of the runs end in one line naming them;
  * the sweep's own process starts no backend (on a GPU it would take the memory its runs need).

No DMD run here (each compiles ~35 s on the 2-core dev box; tests/test_bench_dmd_step.py runs one and checks
its results line); the sweep's machinery is the same for both benches and runs ODE-init steps (~8 s each).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.train_fixtures import REPO

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
TINY_DMD = ["--phase=1", "--preset=tiny", "--teacher_preset=tiny", "--latent_hw=8,8", "--text_len=16",
            "--remat=none", "--generator_steps=1", "--critic_steps=1"]
TINY_ODE = ["--preset=tiny", "--latent_hw=8,8", "--remat=none", "--iters=1"]


def _sweep(*args, bench_args=(), timeout=400):
  argv = [sys.executable, "-m", "benchmarks.bench_scaling", *args] + (["--", *bench_args] if bench_args else [])
  return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=timeout)


def _lines(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _table_row(out, mesh):
  """The cells of the table's row for `mesh` after the mesh's (a cell's own "|" is written "\\|")."""
  row = re.search(rf"^\| {mesh} \|(.*)\|$", out, re.M)
  assert row, out
  return [cell.strip() for cell in re.split(r"(?<!\\)\|", row.group(1))]


def test_dmd_sweep_skips_a_mesh_larger_than_the_machine(tmp_path):
  """The DMD bench's wiring (its settings probe) without a run: bench_dmd_step's results line itself is checked
  in tests/test_bench_dmd_step.py, the sweep's machinery on ODE-init runs below (a DMD run compiles ~35 s)."""
  results = tmp_path / "scaling.jsonl"
  done = _sweep("--bench=dmd_step", "--meshes=4x1", f"--results_jsonl={results}", bench_args=TINY_DMD)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "mesh 4x1: needs 4 devices, this machine has 2; skipped" in done.stdout
  assert "running" not in done.stdout and not results.exists()


def test_ode_sweep_stops_at_the_budget_resumes_and_reports_efficiency(tmp_path):
  """The first run always starts; the second would carry the sweep past --budget_s=1 and does not; the same
  command without the budget runs only what is missing, and the table compares it with the 1x1 row."""
  results = str(tmp_path / "scaling.jsonl")
  args = ("--bench=ode_init_step", "--meshes=1x1,1x2", f"--results_jsonl={results}")
  done = _sweep(*args, "--budget_s=1", bench_args=TINY_ODE)
  assert done.returncode == 0, done.stderr[-3000:]
  assert re.search(r"^mesh 1x2 and after: not started \(\d+ s spent \+ \d+ s of the last run > --budget_s=1\); "
                   r"the same command again continues$", done.stdout, re.M), done.stdout
  [line] = _lines(results)
  assert (line["bench"], line["mesh_data"], line["mesh_fsdp"], line["global_batch"], line["steps"]) == (
      "ode_init_step", 1, 1, 1, 1)
  assert line["setting"] == dict(preset="tiny", remat="none", frames=21, latent_hw=[8, 8], text_len=512)
  assert abs(line["samples_per_s"] - 1 / line["per_step_s"]) < 1e-6
  row = _table_row(done.stdout, "1x1")
  assert row[1] == row[2] == "-" and row[6] == "100%", row   # no generator and critic updates in ODE init
  assert "ode pairs" not in done.stdout   # --pairs=false: the pairs row is no mesh's

  rest = _sweep(*args, bench_args=TINY_ODE)
  assert rest.returncode == 0, rest.stderr[-3000:]
  assert f"mesh 1x1: in {results} already" in rest.stdout
  lines = _lines(results)
  assert [(l["mesh_data"], l["mesh_fsdp"]) for l in lines] == [(1, 1), (1, 2)]
  out = rest.stdout
  one, two = _table_row(out, "1x1"), _table_row(out, "1x2")
  assert one[0] == "1" and one[6] == "100%" and one[7] == "0.00", one
  efficiency = lines[1]["samples_per_s_per_device"] / lines[0]["samples_per_s_per_device"]
  assert two[0] == "2" and two[6] == f"{efficiency:.0%}" and two[3] == f"{lines[1]['per_step_s']:.3f}", two
  assert "fastest on 1 device: 1x1" in out and "fastest on 2 devices: 1x2" in out
  table = out[out.index("ode_init_step on cpu"):]
  report = _sweep("--report_only", f"--results_jsonl={results}", timeout=60)
  assert report.returncode == 0, report.stderr[-3000:]
  assert report.stdout.strip() == table.strip()


def test_a_failed_run_is_recorded_and_not_retried(tmp_path):
  results = str(tmp_path / "scaling.jsonl")
  # 20 frames are no whole number of 3-frame chunks: the ODE-init row fails as soon as it is traced.
  args = ("--bench=ode_init_step", "--meshes=1x1", f"--results_jsonl={results}")
  done = _sweep(*args, bench_args=TINY_ODE + ["--frames=20"])
  assert done.returncode == 0, done.stderr[-3000:]
  [line] = _lines(results)
  assert line["error"].startswith("ValueError: batch['latents'] has 20 frames, not a multiple of chunk_frames 3")
  assert "mesh 1x1: " in done.stdout and ", failed: ValueError: batch['latents']" in done.stdout
  row = _table_row(done.stdout, "1x1")
  assert row[1].startswith("error: ValueError") and row[2:] == ["-"] * 6, row
  assert "fastest" not in done.stdout
  again = _sweep(*args, bench_args=TINY_ODE + ["--frames=20"])
  assert again.returncode == 0 and "running" not in again.stdout and len(_lines(results)) == 1


def test_bad_flags_are_one_line_errors(tmp_path):
  results = f"--results_jsonl={tmp_path / 'scaling.jsonl'}"
  cases = [(["--meshes=1x2,2"], [], "bench_scaling: error: --meshes: DATAxFSDP of positive integers expected "
                                     "(e.g. 1x2), got '2'"),
           ([], ["--mesh=1,2"], "bench_scaling: error: --mesh=1,2 after --: bench_scaling sets it for each run"),
           ([], ["--no_such_flag=1"], "Unknown command line flag 'no_such_flag'"),
           (["--report_only"], [], "bench_scaling: error: --results_jsonl="),
           # The run's own bad input (checked once its setting is built) stops the sweep with its line.
           (["--meshes=1x1"], ["--preset=tiny", "--teacher_preset=wan_1_3b"],
            "bench_scaling: error: mesh 1x1: bench_dmd_step: error: --teacher_preset=wan_1_3b: text_dim")]
  for args, bench_args, message in cases:
    done = _sweep(results, *args, bench_args=bench_args, timeout=120)
    assert done.returncode == 2, (args, bench_args, done.stderr[-3000:])
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


NO_BACKEND = """
import sys
from absl import flags
from jax._src import xla_bridge
from benchmarks import bench_scaling
flags.FLAGS(["bench_scaling", "--meshes=4x1", "--results_jsonl=" + sys.argv[1]])
bench_scaling.main([], bench_args=["--preset=tiny"])
print(sorted(xla_bridge._backends))
"""


def test_the_sweep_starts_no_backend_itself(tmp_path):
  """On a GPU a backend preallocates most of each device's memory, which the runs it starts need: the sweep
  asks a subprocess for the device count."""
  done = subprocess.run([sys.executable, "-c", NO_BACKEND, str(tmp_path / "scaling.jsonl")], capture_output=True,
                        text=True, cwd=REPO, env=ENV, timeout=120)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "mesh 4x1: needs 4 devices, this machine has 2; skipped" in done.stdout
  assert done.stdout.strip().splitlines()[-1] == "[]"
