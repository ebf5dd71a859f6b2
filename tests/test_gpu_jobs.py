"""scripts/gpu_jobs.py: a plan of resumable jobs over one host's GPUs, until a time budget ends."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp_path, plan: str, *flags, timeout=120):
  path = tmp_path / "plan.py"
  path.write_text("import os, sys\nsys.path.insert(0, %r)\nfrom gpu_jobs import Job\n" % os.path.join(ROOT, "scripts")
                  + textwrap.dedent(plan))
  return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_jobs.py"), f"--plan={path}",
                         f"--work={tmp_path / 'w'}", *flags], capture_output=True, text=True, timeout=timeout,
                        cwd=tmp_path)


PLAN = """
def jobs(work, settings):
  out = os.path.join(work, "out")
  return [Job("a", f"echo a $CUDA_VISIBLE_DEVICES >> {out}"),
          Job("b", f"echo b >> {out}", ("a",)),
          Job("bad", "exit 7", gpus=()),
          Job("after_bad", f"echo never >> {out}", ("bad",)),
          Job("cpu", f"echo cpu $CUDA_VISIBLE_DEVICES. >> {out}", ("b",), gpus=())]
"""


def test_runs_by_dependency_and_resumes_from_the_markers(tmp_path):
  done = run(tmp_path, PLAN, "--budget_s=60", "--gpus=0,1")
  assert done.returncode == 1, done.stdout + done.stderr
  lines = (tmp_path / "w" / "out").read_text().split("\n")
  assert lines[:3] == ["a 0", "b", "cpu ."]          # b after a; the CPU job sees no GPU
  assert sorted(os.listdir(tmp_path / "w" / "done")) == ["a", "b", "cpu"]
  assert "FAILED bad (exit 7)" in done.stdout and "not done: bad, after_bad" in done.stdout
  again = run(tmp_path, PLAN, "--budget_s=60", "--gpus=0,1")   # done jobs are not run again; bad is retried
  assert (tmp_path / "w" / "out").read_text().count("\n") == 3 and again.returncode == 1
  assert (tmp_path / "w" / "logs" / "bad.log").read_text().count("=====") == 2


def test_the_budget_stops_running_jobs_with_sigterm_and_no_marker(tmp_path):
  plan = """
  def jobs(work, settings):
    saved = os.path.join(work, "saved")
    return [Job("long", f"trap 'echo saved > {saved}; exit 0' TERM; sleep 60 & wait"),
            Job("later", "true", ("long",))]
  """
  done = run(tmp_path, plan, "--budget_s=2", "--grace_s=10", "--gpus=0")
  assert done.returncode == 3, done.stdout + done.stderr
  assert (tmp_path / "w" / "saved").read_text() == "saved\n"   # it had its chance to save
  assert not os.path.exists(tmp_path / "w" / "done" / "long")  # stopped is not done, even with exit 0
  assert "budget over: SIGTERM long" in done.stdout and "not done: long, later" in done.stdout


def test_an_exclusive_job_holds_its_gpus_alone(tmp_path):
  plan = """
  def jobs(work, settings):
    log = lambda n: f"echo {n} start $CUDA_VISIBLE_DEVICES >> {work}/out; sleep 1; echo {n} end >> {work}/out"
    return [Job("teacher", log("teacher"), gpus=(0, 1), exclusive=True),
            Job("s1", log("s1")), Job("s2", log("s2")), Job("s3", log("s3"))]
  """
  done = run(tmp_path, plan, "--budget_s=60", "--gpus=0,1,2", "--per_gpu=2")
  assert done.returncode == 0, done.stdout + done.stderr
  lines = (tmp_path / "w" / "out").read_text().split("\n")
  first_end = min(i for i, l in enumerate(lines) if l.endswith(" end"))
  # Started together (in either order: each job echoes from its own process): the teacher on its GPUs and, beside
  # it, shared jobs on GPU 2 only, two at most; the third waits for room.
  assert sorted(lines[:first_end]) == ["s1 start 2", "s2 start 2", "teacher start 0,1"]
  assert next(i for i, l in enumerate(lines) if l.startswith("s3 start")) > first_end


def test_refuses_a_plan_it_cannot_run(tmp_path):
  done = run(tmp_path, 'def jobs(work, settings):\n  return [Job("a", "true", ("nope",))]\n', "--budget_s=5", "--gpus=0")
  assert done.returncode == 2 and "jobs depend on jobs the plan does not have: ['nope']" in done.stderr
  done = run(tmp_path, 'def jobs(work, settings):\n  return [Job("a", "true"), Job("a", "false")]\n', "--budget_s=5")
  assert done.returncode == 2 and "job names must be unique; repeated: ['a']" in done.stderr
  done = run(tmp_path, PLAN, "--budget_s=5", "--gpus=0", "--only=a,zzz")
  assert done.returncode == 2 and "--only: the plan has no job ['zzz']" in done.stderr
  assert not os.path.exists(tmp_path / "w" / "out")


def test_world_plan_lists_its_jobs(tmp_path):
  """The world's plan loads and wires its jobs: with --set teacher= no teacher is trained; every ablation row of
  each seed and the memory pair are there, after the runs they start from."""
  listing = subprocess.run([sys.executable, "scripts/gpu_jobs.py", "--plan=scripts/world_plan.py",
                            f"--work={tmp_path}", "--budget_s=1", "--gpus=0", "--dry_run", "--set", "teacher=/t/00010000",
                            "--set", "seeds=0,1"], capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert listing.returncode == 0, listing.stderr
  rows = {line.split()[0]: line for line in listing.stdout.splitlines()}
  assert "teacher" not in rows and "ode_init" in rows and "after: prepare" in rows["ode_init"]
  for seed in (0, 1):
    for name in ("window", "hybrid", "relative_rope", "regulariser"):
      assert "after: ode_init" in rows[f"rA_seed{seed}_{name}"]
    assert "after: phase1" in rows[f"rA_seed{seed}_decoupled"]
    assert "after: ode_init_memory" in rows[f"rB_seed{seed}_hybrid"]
  # 2 prepare, 4 chain (ODE init, phase 1, both phase 2), 1 memory ODE init, 2 x 2 memory pair, 3 + 2 evaluations
  # (ODE init, phase 1, the shipped model; teacher per seed), 2 x 5 ablation rows
  assert "(alone)" not in listing.stdout and len(rows) == 2 + 4 + 1 + 4 + 3 + 2 + 10


def test_world_plan_starts_from_the_kept_teacher_unless_told_to_train(tmp_path):
  def listing(*sets):
    done = subprocess.run([sys.executable, "scripts/gpu_jobs.py", "--plan=scripts/world_plan.py", f"--work={tmp_path}",
                           "--budget_s=1", "--gpus=0", "--dry_run", *sets], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return {line.split()[0]: line for line in done.stdout.splitlines()}
  kept = listing()
  assert "teacher" not in kept and kept["ode_init"].rstrip().endswith("after: prepare")
  trained = listing("--set", "teacher=train")
  assert "GPUs [0, 1, 2] (alone)" in trained["teacher"] and trained["ode_init"].rstrip().endswith("after: teacher")


def test_the_kept_teacher_is_the_frame4_world_teacher():
  """hybrid_forcing_jax/world/teacher loads as the DiT that configs/world (frame4) trains and distils from."""
  from configs.world import ode_init
  from hybrid_forcing_jax.checkpoint import load_checkpoint
  from hybrid_forcing_jax.training.builders import wan_config
  config, params = load_checkpoint(os.path.join(ROOT, "hybrid_forcing_jax", "world", "teacher"), "wan_dit")
  assert config == wan_config(ode_init.get_config("frame4").teacher)
  assert config.prediction == "x0" and tuple(config.patch_size) == (1, 4, 4) and not config.linear_proj


def test_pack_gathers_the_small_results(tmp_path):
  """--pack: the JSONs, the done markers and each log's end; not what is big (checkpoints, exports)."""
  import tarfile
  (tmp_path / "make.sh").write_text(
      'mkdir -p "$1/run/export"\n'
      'head -c 3000000 /dev/zero > "$1/run/export/model.json"\n'   # over --pack_max_mb: left out
      'echo \'{"loss": 1}\' > "$1/run/metrics.jsonl"\n'
      'echo "{}" > "$1/run.json"\n'
      'head -c 100000 /dev/zero | tr "\\0" x\n'                   # a long log: its end is kept
      'echo END\n')
  plan = f"""
  def jobs(work, settings):
    return [Job("train", f"bash {tmp_path / 'make.sh'} {{work}}")]
  """
  done = run(tmp_path, plan, "--budget_s=30", "--gpus=0", f"--pack={tmp_path / 'out.tar.gz'}")
  assert done.returncode == 0, done.stdout + done.stderr
  with tarfile.open(tmp_path / "out.tar.gz") as tar:
    names = sorted(tar.getnames())
    log = tar.extractfile("logs/train.log").read()
  assert names == ["done/train", "logs/train.log", "run.json", "run/metrics.jsonl"], names
  assert len(log) == 65536 and log.endswith(b"xxxEND\n")
  assert "packed 4 files into" in done.stdout


def test_a_waiting_exclusive_job_is_not_starved_by_shared_jobs_ahead_of_it(tmp_path):
  plan = """
  def jobs(work, settings):
    log = lambda n: f"echo {n} start $CUDA_VISIBLE_DEVICES >> {work}/out; sleep 1; echo {n} end >> {work}/out"
    return [Job("s1", log("s1")), Job("s2", log("s2")), Job("s3", log("s3")),
            Job("bench", log("bench"), gpus=(1,), exclusive=True)]
  """
  done = run(tmp_path, plan, "--budget_s=60", "--gpus=0,1", "--per_gpu=1")
  assert done.returncode == 0, done.stdout + done.stderr
  lines = (tmp_path / "w" / "out").read_text().split("\n")
  first_end = min(i for i, l in enumerate(lines) if l.endswith(" end"))
  # GPU 1 kept for the benchmark, last in the plan: it starts with s1, before s2 and s3.
  assert sorted(lines[:first_end]) == ["bench start 1", "s1 start 0"]
  assert sorted(l.split()[0] for l in lines[first_end:] if "start" in l) == ["s2", "s3"]


def test_plans_run_as_one(tmp_path):
  """--plan twice: the world's and the speed benchmarks' jobs in one listing, the benchmarks alone on their GPU."""
  done = subprocess.run([sys.executable, "scripts/gpu_jobs.py", "--plan=scripts/world_plan.py",
                         "--plan=benchmarks/speed_plan.py", f"--work={tmp_path}", "--budget_s=1", "--gpus=0,1,2,3",
                         "--dry_run", "--set", "bench_gpu=2"], capture_output=True, text=True, cwd=ROOT, timeout=60)
  assert done.returncode == 0, done.stderr
  rows = {line.split()[0]: line for line in done.stdout.splitlines()}
  assert "GPUs [2] (alone)" in rows["bench_cold_start"] and "GPUs [2] (alone)" in rows["bench_vae_tail_off"]
  assert "ode_init" in rows and len(rows) == 26 + 5
  twice = run(tmp_path, 'def jobs(work, settings):\n  return [Job("a", "true")]\n', "--budget_s=5", "--gpus=0",
              f"--plan={tmp_path / 'plan.py'}")
  assert twice.returncode == 2 and "job names must be unique; repeated: ['a']" in twice.stderr


def test_without_a_gpu_only_cpu_jobs_run(tmp_path):
  """No nvidia-smi (a CPU machine), no --gpus: the CPU jobs run, the GPU ones are left, exit 3, saying why."""
  env = {**os.environ, "PATH": os.path.dirname(sys.executable) + ":/usr/bin:/bin"}
  path = tmp_path / "plan.py"
  path.write_text("import sys\nsys.path.insert(0, %r)\nfrom gpu_jobs import Job\n" % os.path.join(ROOT, "scripts")
                  + 'def jobs(work, settings):\n  return [Job("cpu", "true", gpus=()), Job("gpu", "true")]\n')
  done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "gpu_jobs.py"), f"--plan={path}",
                         f"--work={tmp_path / 'w'}", "--budget_s=20"], capture_output=True, text=True, timeout=60,
                        env=env)
  if subprocess.run(["which", "nvidia-smi"], capture_output=True, env=env).returncode == 0:
    pytest.skip("nvidia-smi is here: a GPU machine")
  assert done.returncode == 3, done.stdout + done.stderr
  assert "no GPU listed by nvidia-smi; only CPU jobs will run" in done.stderr
  assert os.listdir(tmp_path / "w" / "done") == ["cpu"] and "not done: gpu" in done.stdout
