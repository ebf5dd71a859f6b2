"""Run a plan of resumable jobs over the GPUs of one host until a time budget ends (docs/world.md, "Running the
world's experiments on one host").

  python scripts/gpu_jobs.py --plan=scripts/world_plan.py [--plan=benchmarks/speed_plan.py] --work=/root/w
      --budget_s=530 [--per_gpu=3] [--gpus=0,1,2,3] [--only=NAME,...] [--set KEY=VALUE ...] [--dry_run]

A plan is a Python file whose `jobs(work, settings)` returns `Job`s in priority order; several plans run as one,
the first's jobs first (names unique across them; a job may depend on another plan's). A job starts as soon as the
jobs it depends on are done and a GPU has room: a shared job takes one GPU, beside up to --per_gpu - 1 others
(tiny models: several trainers per GPU keep it busier); an exclusive job holds the GPUs it names alone (a
data-parallel teacher, a benchmark); `gpus=()` runs on the CPU. Each job runs in its own process group with
`CUDA_VISIBLE_DEVICES` set and `XLA_PYTHON_CLIENT_PREALLOCATE=false`, its output appended to WORK/logs/NAME.log.
Exit 0 writes WORK/done/NAME (what makes a job done, here and in every later run); a failed job is not retried
in this run and its dependants wait. At the budget's end every running job gets SIGTERM (the trainer saves and
stops), then SIGKILL after --grace_s: run the same command again to go on where it stopped.

--pack=FILE.tar.gz then gathers what the jobs made that is small (every file of --pack_suffixes up to --pack_max_mb,
the done markers, the last 64 KB of each log) into one archive: on a machine lent for a while, the one file to bring
back at the end of each call, whatever the runs' checkpoints weigh.

Exit status: 0 when every job of the plan is done, 1 when one failed, 3 when the budget ended first.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import signal
import io
import subprocess
import sys
import tarfile
import time


@dataclasses.dataclass(frozen=True)
class Job:
  name: str
  cmd: str                      # a bash command line, run in the current folder
  deps: tuple[str, ...] = ()    # names of jobs that must be done first
  gpus: tuple[int, ...] | None = None   # None: any one GPU, shared; (): the CPU; (i, ...): these GPUs
  exclusive: bool = False       # hold `gpus` alone (no other job on them while it runs)


def load_plans(paths: list[str], work: str, settings: dict[str, str]) -> list[Job]:
  jobs = []
  for i, path in enumerate(paths):
    spec = importlib.util.spec_from_file_location(f"gpu_jobs_plan_{i}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    jobs += module.jobs(work, settings)
  where = ", ".join(paths)
  names = [j.name for j in jobs]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"{where}: job names must be unique; repeated: {duplicates}")
  unknown = sorted({d for j in jobs for d in j.deps if d not in names})
  if unknown:
    raise ValueError(f"{where}: jobs depend on jobs the plan does not have: {unknown}")
  return jobs


class Runner:
  def __init__(self, jobs: list[Job], work: str, gpus: list[int], per_gpu: int):
    self.jobs, self.work, self.gpus, self.per_gpu = jobs, work, gpus, per_gpu
    self.running: dict[str, tuple[subprocess.Popen, tuple[int, ...], bool, float]] = {}
    self.failed: set[str] = set()
    for sub in ("done", "logs"):
      os.makedirs(os.path.join(work, sub), exist_ok=True)

  def done(self, name: str) -> bool:
    return os.path.exists(os.path.join(self.work, "done", name))

  def load(self, gpu: int) -> int:
    return sum(gpu in gpus for _, gpus, _, _ in self.running.values())

  def held_alone(self, gpu: int) -> bool:
    return any(exclusive and gpu in gpus for _, gpus, exclusive, _ in self.running.values())

  def say(self, message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] gpu_jobs: {message}", flush=True)

  def start(self, job: Job, gpus: tuple[int, ...]) -> None:
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)))
    with open(os.path.join(self.work, "logs", f"{job.name}.log"), "a") as log:
      log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} on GPUs {list(gpus)}: {job.cmd}\n")
      log.flush()
      process = subprocess.Popen(["bash", "-c", "set -o pipefail; " + job.cmd], stdout=log, stderr=subprocess.STDOUT,
                                 env=env, start_new_session=True)
    self.running[job.name] = (process, gpus, job.exclusive, time.time())
    self.say(f"start {job.name} on {'GPUs ' + ','.join(map(str, gpus)) if gpus else 'the CPU'}")

  def reap(self) -> None:
    for name, (process, _, _, started) in list(self.running.items()):
      code = process.poll()
      if code is None:
        continue
      del self.running[name]
      took = time.time() - started
      if code == 0:
        with open(os.path.join(self.work, "done", name), "w") as f:
          f.write(f"{took:.0f} s\n")
        self.say(f"done {name} in {took:.0f} s")
      else:
        self.failed.add(name)
        self.say(f"FAILED {name} (exit {code}) after {took:.0f} s: see {self.work}/logs/{name}.log")

  def schedule(self) -> None:
    ready = [j for j in self.jobs if j.name not in self.running and j.name not in self.failed
             and not self.done(j.name) and all(self.done(d) for d in j.deps)]
    # The GPUs of every ready exclusive job, whatever its priority: no shared job starts there while it waits for
    # them to empty (else shared jobs ahead of it in the plan would keep them busy for good).
    reserved = {g for j in ready if j.exclusive and j.gpus for g in j.gpus}
    for job in ready:
      if job.gpus == ():
        self.start(job, ())
      elif job.gpus is not None:
        if job.exclusive:
          if all(self.load(g) == 0 for g in job.gpus):
            self.start(job, job.gpus)
        elif all(not self.held_alone(g) and g not in reserved and self.load(g) < self.per_gpu for g in job.gpus):
          self.start(job, job.gpus)
      else:
        room = [g for g in self.gpus if g not in reserved and not self.held_alone(g) and self.load(g) < self.per_gpu]
        if room:
          self.start(job, (min(room, key=self.load),))

  def pending(self) -> list[str]:
    return [j.name for j in self.jobs if not self.done(j.name)]

  def stop_all(self, grace_s: float) -> None:
    for name, (process, *_) in self.running.items():
      self.say(f"budget over: SIGTERM {name}")
      os.killpg(process.pid, signal.SIGTERM)
    end = time.time() + grace_s
    while any(p.poll() is None for p, *_ in self.running.values()) and time.time() < end:
      time.sleep(0.2)
    for name, (process, *_) in self.running.items():
      if process.poll() is None:
        self.say(f"SIGKILL {name}")
        os.killpg(process.pid, signal.SIGKILL)
    self.running.clear()

  def run(self, budget_s: float, grace_s: float, poll_s: float = 1.0) -> int:
    deadline = time.time() + budget_s
    while time.time() < deadline:
      self.reap()
      self.schedule()
      if not self.running:
        break   # all done, or nothing can start (failed dependencies)
      time.sleep(poll_s)
    self.reap()
    over = bool(self.running)
    self.stop_all(grace_s)
    pending = self.pending()
    self.say(f"done {len(self.jobs) - len(pending)} of {len(self.jobs)}; failed: {', '.join(sorted(self.failed)) or '-'}; "
             f"not done: {', '.join(pending) or '-'}")
    if self.failed:
      return 1
    return 3 if over or pending else 0


def pack(work: str, path: str, suffixes: tuple[str, ...], max_bytes: int) -> int:
  """WORK's small results into a gzipped tar at `path` (names relative to WORK) -> the number of files packed."""
  count = 0
  with tarfile.open(path + ".tmp", "w:gz") as tar:
    for folder, dirs, files in os.walk(work):
      dirs.sort()
      rel = os.path.relpath(folder, work)
      for name in sorted(files):
        full, arcname = os.path.join(folder, name), os.path.normpath(os.path.join(rel, name))
        if os.path.abspath(full) == os.path.abspath(path + ".tmp"):
          continue
        if rel == "logs" and name.endswith(".log"):   # the end of the log: what a failure or a stop says
          with open(full, "rb") as f:
            f.seek(max(0, os.path.getsize(full) - 65536))
            tail = f.read()
          info = tarfile.TarInfo(arcname)
          info.size, info.mtime = len(tail), int(os.path.getmtime(full))
          tar.addfile(info, io.BytesIO(tail))
        elif rel == "done" or (name.endswith(suffixes) and os.path.getsize(full) <= max_bytes):
          tar.add(full, arcname)
        else:
          continue
        count += 1
  os.replace(path + ".tmp", path)
  return count


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--plan", required=True, action="append",
                      help="Python file with jobs(work, settings) -> [Job, ...]; repeat it to run several as one")
  parser.add_argument("--work", required=True, help="folder of the markers (done/) and logs (logs/), and the plan's outputs")
  parser.add_argument("--budget_s", type=float, required=True, help="seconds until the running jobs are stopped")
  parser.add_argument("--grace_s", type=float, default=40.0, help="seconds between SIGTERM and SIGKILL at the end")
  parser.add_argument("--gpus", default=None, help="GPU indices to use (default: all that nvidia-smi lists)")
  parser.add_argument("--per_gpu", type=int, default=3, help="shared jobs at most on one GPU at once")
  parser.add_argument("--only", default=None, help="comma-separated job names: run only these")
  parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a setting the plan reads")
  parser.add_argument("--dry_run", action="store_true", help="list the plan's jobs and their state, run nothing")
  parser.add_argument("--pack", default=None, help="after the run, the small results into this .tar.gz")
  parser.add_argument("--pack_suffixes", default=".json,.jsonl,.md,.txt", help="file endings --pack takes")
  parser.add_argument("--pack_max_mb", type=float, default=2.0, help="larger files are left out of --pack")
  args = parser.parse_args(argv)
  if args.budget_s <= 0 or args.per_gpu < 1:
    parser.error(f"--budget_s must be > 0 and --per_gpu >= 1, got {args.budget_s} and {args.per_gpu}")
  settings = {}
  for item in args.set:
    if "=" not in item:
      parser.error(f"--set {item!r}: expected KEY=VALUE")
    key, value = item.split("=", 1)
    settings[key] = value
  try:
    jobs = load_plans(args.plan, args.work, settings)
  except (OSError, ValueError, KeyError) as e:
    print(f"gpu_jobs: error: {e}", file=sys.stderr)
    return 2
  if args.only:
    wanted = args.only.split(",")
    unknown = sorted(set(wanted) - {j.name for j in jobs})
    if unknown:
      print(f"gpu_jobs: error: --only: the plan has no job {unknown}", file=sys.stderr)
      return 2
    jobs = [j for j in jobs if j.name in wanted]
  if args.gpus is None:
    try:
      listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:   # no NVIDIA driver here: only the plan's CPU jobs can run
      listed = ""
    gpus = list(range(sum(line.startswith("GPU ") for line in listed.splitlines())))
    if not gpus:
      print("gpu_jobs: no GPU listed by nvidia-smi; only CPU jobs will run (--gpus=... to name them)", file=sys.stderr)
  else:
    gpus = [int(g) for g in args.gpus.split(",") if g != ""]
  runner = Runner(jobs, args.work, gpus, args.per_gpu)
  if args.dry_run:
    for j in jobs:
      where = "CPU" if j.gpus == () else ("any GPU" if j.gpus is None else f"GPUs {list(j.gpus)}")
      state = "done" if runner.done(j.name) else "to do"
      print(f"{j.name:40s} {state:6s} {where}{' (alone)' if j.exclusive else ''}  after: {', '.join(j.deps) or '-'}")
    return 0
  status = runner.run(args.budget_s, args.grace_s)
  if args.pack:
    packed = pack(args.work, args.pack, tuple(args.pack_suffixes.split(",")), int(args.pack_max_mb * 2**20))
    runner.say(f"packed {packed} files into {args.pack} ({os.path.getsize(args.pack) / 2**20:.1f} MiB)")
  return status


if __name__ == "__main__":
  sys.exit(main())
