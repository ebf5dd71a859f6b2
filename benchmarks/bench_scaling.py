"""Scaling over meshes (issue 15): the DMD phase-2 step or the ODE-init step on each mesh data x fsdp of
--meshes at batch 1 per device, then a markdown table of what --results_jsonl holds: seconds per step, samples/s
(and per device), scaling efficiency (samples/s per device over the 1-device row's) and peak memory per device,
and the fastest mesh of each device count.

On a 4-GPU machine, a device call of at most 10 minutes each; the same command again continues where the
results file leaves off (keep the file between calls: a fresh machine starts without it):

  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 PYTHONUNBUFFERED=1 python -m benchmarks.bench_scaling --bench=dmd_step \\
      --meshes=1x1,1x2,2x1,1x4,2x2,4x1 --results_jsonl=/root/scaling.jsonl --budget_s=540 \\
      -- --teacher_preset=wan_14b --generator_steps=3 --critic_steps=3
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 PYTHONUNBUFFERED=1 python -m benchmarks.bench_scaling --bench=ode_init_step \\
      --meshes=1x1,1x2,2x1,1x4,2x2,4x1 --results_jsonl=/root/scaling.jsonl --budget_s=540 -- --remat=full --iters=3
  python -m benchmarks.bench_scaling --report_only --results_jsonl=/root/scaling.jsonl

The 14B teacher does not fit one 80 GB H100 at mesh 1x1. From the 2-GPU step measured in docs/benchmarks.md
("The phase-2 step on two GPUs with the 14B teacher sharded": per GPU 13.5 GiB teacher and 18.5 GiB train state
of a 59.9 GiB peak) one GPU holds 64 GiB of teacher and state before the generator update's ~28-30 GiB of working
memory, about 94 GiB: the 14B's 1x1 row (the efficiency's baseline) is for an H200. On H100s leave 1x1 out of
--meshes (it would end as an out-of-memory row after minutes of building and compiling).

Each mesh runs in a subprocess of its own, benchmarks/bench_dmd_step.py or bench_train_step.py (--pairs=false)
told --mesh and --results_jsonl, with the flags after `--` passed on: a fresh peak-memory counter per mesh, and
CUDA_VISIBLE_DEVICES left as it is (a run takes the first data x fsdp devices). A mesh whose results (same
bench, device kind and setting) the file holds already is not run again; one needing more devices than the
machine has is skipped with a note; no run starts once the last run's duration would carry the sweep past
--budget_s, so a call ends before its limit. A failed run leaves a line with its error (out of memory, or its
last line), which the table shows and a resume skips: delete the line to try again.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import time

from absl import flags

from benchmarks.failures import failure_line
from hybrid_forcing_jax import cli

FLAGS = flags.FLAGS
flags.DEFINE_enum("bench", "dmd_step", ["dmd_step", "ode_init_step"], "What each mesh times")
flags.DEFINE_list("meshes", ["1x1", "1x2", "2x1", "1x4", "2x2", "4x1"], "Meshes DATAxFSDP, run in this order")
flags.DEFINE_string("results_jsonl", None, "The runs' results, one JSON line each: appended to, resumed from, "
                    "reported")
flags.DEFINE_float("budget_s", None, "Start no run that the last run's duration would carry past this many "
                   "seconds of the sweep (default: no limit)")
flags.DEFINE_boolean("report_only", False, "Print the table of --results_jsonl; run nothing")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# bench -> (module, how it is told a mesh, the flags it always gets, the settings a run of it measures: an
# expression in PROBE, where the module is `bench`). bench_train_step's pairs row is no mesh's.
BENCHES = {"dmd_step": ("bench_dmd_step", "--mesh={},{}", [], "[bench.settings()]"),
           "ode_init_step": ("bench_train_step", "--mesh={}x{}", ["--pairs=false"],
                             "[bench.ode_settings(r) for r in flags.FLAGS.remat]")}


# Run in a subprocess of its own: the bench's flags clash with this module's (--results_jsonl), and
# jax.device_count() here would start the GPU backend, whose preallocated memory the runs need.
PROBE = """
import json, sys
from absl import flags
from benchmarks import {module} as bench
try:
  flags.FLAGS(sys.argv)
except flags.Error as e:
  sys.exit(str(e).strip().splitlines()[0])
import jax
print(json.dumps(dict(devices=jax.device_count(), device_kind=jax.devices()[0].device_kind, settings={settings})))
"""


def _meshes() -> list[tuple[int, int]]:
  meshes = []
  for text in FLAGS.meshes:
    m = re.fullmatch(r"(\d+)x(\d+)", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
      raise cli.BadInput(f"--meshes: DATAxFSDP of positive integers expected (e.g. 1x2), got {text!r}")
    meshes.append((int(m.group(1)), int(m.group(2))))
  return meshes


def _read(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _append(path: str, line: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(line) + "\n")


def _holds(lines, bench, device_kind, data, fsdp, setting) -> bool:
  return any((l["bench"], l["device_kind"], l["mesh_data"], l["mesh_fsdp"], l["setting"])
             == (bench, device_kind, data, fsdp, setting) for l in lines)


def _probe(module: str, settings: str, args: list[str]) -> dict:
  """-> devices, device_kind and the settings the runs measure, with the runs' flags parsed by the bench."""
  done = subprocess.run([sys.executable, "-c", PROBE.format(module=module, settings=settings), *args], cwd=REPO,
                        capture_output=True, text=True, env={**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
  if done.returncode != 0:
    raise cli.BadInput(f"flags after -- ({' '.join(args)}): {failure_line(done.stderr, done.returncode)}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _failure(done: subprocess.CompletedProcess) -> str:
  """One line for a run that left no results line."""
  # bench_train_step catches its rows' errors, prints each as a JSON line on stdout and exits 0.
  for line in reversed(done.stdout.splitlines()):
    if line.startswith("{") and '"error"' in line:
      return json.loads(line)["error"]
  return failure_line(done.stdout + done.stderr, done.returncode)


def sweep(bench_args: list[str]) -> None:
  start = time.perf_counter()
  path = os.path.abspath(FLAGS.results_jsonl)
  meshes = _meshes()
  for arg in bench_args:
    if arg.split("=")[0] in ("--mesh", "--results_jsonl"):
      raise cli.BadInput(f"{arg} after --: bench_scaling sets it for each run (--meshes, --results_jsonl)")
  module, mesh_flag, fixed, settings = BENCHES[FLAGS.bench]
  args = fixed + bench_args
  machine = _probe(module, settings, args)
  last_run_s = None
  for data, fsdp in meshes:
    name, n = f"{data}x{fsdp}", data * fsdp
    todo = [s for s in machine["settings"]
            if not _holds(_read(path), FLAGS.bench, machine["device_kind"], data, fsdp, s)]
    if not todo:
      print(f"mesh {name}: in {path} already", flush=True)
      continue
    if n > machine["devices"]:
      print(f"mesh {name}: needs {n} devices, this machine has {machine['devices']}; skipped", flush=True)
      continue
    spent = time.perf_counter() - start
    if FLAGS.budget_s is not None and last_run_s is not None and spent + last_run_s > FLAGS.budget_s:
      print(f"mesh {name} and after: not started ({spent:.0f} s spent + {last_run_s:.0f} s of the last run > "
            f"--budget_s={FLAGS.budget_s:g}); the same command again continues", flush=True)
      break
    print(f"mesh {name}: running {module} {' '.join(args)}", flush=True)
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args, mesh_flag.format(data, fsdp),
                           f"--results_jsonl={path}"], cwd=REPO, capture_output=True, text=True)
    last_run_s = time.perf_counter() - t0
    print(done.stdout, end="", flush=True)
    if done.returncode == cli.EXIT_BAD_INPUT:
      raise cli.BadInput(f"mesh {name}: {failure_line(done.stderr, done.returncode)}")
    failed = [s for s in todo if not _holds(_read(path), FLAGS.bench, machine["device_kind"], data, fsdp, s)]
    for setting in failed:
      _append(path, dict(bench=FLAGS.bench, device_kind=machine["device_kind"], devices=n, mesh_data=data,
                         mesh_fsdp=fsdp, global_batch=n, setting=setting, error=_failure(done)))
    print(f"mesh {name}: {last_run_s:.0f} s" + (f", failed: {_failure(done)}" if failed else ""), flush=True)


def report(lines: list[dict]) -> None:
  """A table per bench, device kind and setting (the latest line of each mesh), in the file's order."""
  groups = {}
  for line in lines:
    key = (line["bench"], line["device_kind"], json.dumps(line["setting"]))
    groups.setdefault(key, {})[(line["mesh_data"], line["mesh_fsdp"])] = line
  for (bench, device_kind, setting), rows in groups.items():
    ok = [r for r in rows.values() if "error" not in r]
    base = next((r["samples_per_s_per_device"] for r in ok if r["devices"] == 1), None)
    print(f"\n{bench} on {device_kind}: " + ", ".join(f"{k} {v}" for k, v in json.loads(setting).items()))
    print("\n| mesh (data x fsdp) | devices | generator s | critic s | per step s | samples/s | samples/s per device "
          "| scaling efficiency | peak GiB per device |\n" + "| --- " * 9 + "|")
    for (data, fsdp), r in sorted(rows.items(), key=lambda item: (item[1]["devices"], item[0])):
      if "error" in r:
        cells = ["error: " + r["error"].replace("|", "\\|")] + ["-"] * 6
      else:
        cells = [f"{r['generator_s']:.3f}" if "generator_s" in r else "-",
                 f"{r['critic_s']:.3f}" if "critic_s" in r else "-",
                 f"{r['per_step_s']:.3f}", f"{r['samples_per_s']:.3f}", f"{r['samples_per_s_per_device']:.3f}",
                 f"{r['samples_per_s_per_device'] / base:.0%}" if base else "-", f"{r['peak_gib_per_device_max']:.2f}"]
      print(f"| {data}x{fsdp} | {r['devices']} | " + " | ".join(cells) + " |")
    print()
    for n in sorted({r["devices"] for r in ok}):
      best = max((r for r in ok if r["devices"] == n), key=lambda r: r["samples_per_s"])
      print(f"fastest on {n} device{'s' if n > 1 else ''}: {best['mesh_data']}x{best['mesh_fsdp']} "
            f"({best['samples_per_s']:.3f} samples/s)")


def main(argv, bench_args: list[str]) -> None:
  del argv
  if not FLAGS.results_jsonl:
    raise cli.BadInput("--results_jsonl: required (the runs' results, resumed from and reported)")
  path = os.path.abspath(FLAGS.results_jsonl)
  if not os.path.isdir(os.path.dirname(path)):
    raise cli.BadInput(f"--results_jsonl={FLAGS.results_jsonl}: its folder does not exist")
  if FLAGS.report_only and not os.path.exists(path):
    raise cli.BadInput(f"--results_jsonl={FLAGS.results_jsonl}: no such file")
  if not FLAGS.report_only:
    sweep(bench_args)
  report(_read(path))


if __name__ == "__main__":
  # The flags after "--" are the runs'; absl would hand them to main as arguments, which cli.run refuses.
  split = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
  bench_args, sys.argv = sys.argv[split + 1:], sys.argv[:split]
  cli.run(functools.partial(main, bench_args=bench_args), "bench_scaling")
