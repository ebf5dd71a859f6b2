"""The world's experiments as one plan for scripts/gpu_jobs.py (docs/world.md, "Running the world's experiments on one
host"): the chain in the `frame4` layout (phase 2 block-sparse, as configs/world/hybrid.py, and with the window
dense), the ablation with the window dense, the long-memory pair on prompts with long-memory captions, and the
evaluations (with the shipped model's, to compare on one device); every command is the project's own (scripts/world_pipeline.sh, train, evaluate_world), in the order
of what the results need most.

  python scripts/gpu_jobs.py --plan=scripts/world_plan.py --work=/root/w --budget_s=530 \\
      [--set teacher=FOLDER] [--set seeds=0,1]

Settings: `teacher`, an exported world teacher to start from (default: the kept tf4, hybrid_forcing_jax/world/teacher;
`train`: train tf4's recipe on GPUs 0-2 first, into WORK/tf4); `seeds` of the ablation (default 0,1); `memory_fraction` of the long-memory prompts (0.3).
Outputs under WORK: dA/ and rA/ (the chain's data and runs), dB/ and rB/ (the long-memory prompts'), and one
evaluation JSON beside each student (`python -m hybrid_forcing_jax.world.report --results=...` tabulates them).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_jobs import Job  # noqa: E402  (scripts/ is no package)

LAYOUT = "frame4"
STEPS = {"ode_init": 400, "self_forcing": 700, "hybrid": 400}   # the chain's, and each ablation row's 400
DENSE = "--config.stream.sparse_ratio=1.0"
KEPT_TEACHER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "hybrid_forcing_jax", "world",
                            "teacher")
ROWS = ("window", "hybrid", "relative_rope", "regulariser", "decoupled")


def jobs(work: str, settings: dict) -> list:
  dA, rA, dB, rB = (f"{work}/{name}" for name in ("dA", "rA", "dB", "rB"))
  seeds = [int(s) for s in settings.get("seeds", "0,1").split(",")]
  memory = float(settings.get("memory_fraction", "0.3"))
  plan = []

  def text(d):
    return (f"--config.text.encoder={d}/text/text_encoder --config.text.tokenizer={d}/text/tokenizer "
            f"--config.text.cache_dir={d}/text_cache")

  def export(run, step):
    return f"{run}/export/{step:08d}"

  def dmd(d, r):   # the teacher as world_pipeline.sh adopts it: RUNS/teacher/export/<its folder name>
    t = f"{r}/teacher/export/{os.path.basename(teacher.rstrip('/'))}"
    return (f"{text(d)} --config.data.prompts={d}/prompts.txt --config.teacher.checkpoint={t} "
            f"--config.critic.checkpoint={t} --config.dmd.vae={d}/codec")

  def evaluate(d, config, dit, name, seed, out, extra=""):
    return (f"python -m hybrid_forcing_jax.evaluate_world --config={config} {extra} --dit={dit} --name={name} "
            f"--seed={seed} --world_config=configs/world/teacher.py:{LAYOUT} --text={d}/text --codec={d}/codec "
            f"--num_videos=48 --output_json={out}")

  def pipeline(d, r, until, fraction):
    steps = ",".join(f"{k}={v}" for k, v in STEPS.items())
    return (f"bash scripts/world_pipeline.sh --layout={LAYOUT} --teacher={teacher} --data={d} --runs={r} "
            f"--long_memory_fraction={fraction} --steps={steps} --until={until}")

  prepare = "JAX_PLATFORMS=cpu python -m hybrid_forcing_jax.world.prepare --num_prompts=1000 --temporal_factor=1"
  plan.append(Job("prepare", f"{prepare} --output={dA}", gpus=()))
  # The long-memory prompts with the same text encoder and codec (the teacher reads that text encoder).
  plan.append(Job("prepare_memory", f"mkdir -p {dB} && cp -rn {dA}/text {dA}/codec {dB}/ && {prepare} --output={dB} "
                  f"--long_memory_fraction={memory}", ("prepare",), gpus=()))
  teacher = settings.get("teacher", KEPT_TEACHER)
  first = ("prepare",)
  if teacher == "train":   # tf4's recipe (docs/training.md, "tf4 again, data-parallel")
    teacher = export(f"{work}/tf4", 10000)
    plan.append(Job("teacher", f"python -m hybrid_forcing_jax.train --config=configs/world/teacher.py:{LAYOUT} "
                    f"--workdir={work}/tf4 {text(dA)} --config.data.codec={dA}/codec --config.data.batch_size=96 "
                    "--config.data.num_workers=40 --config.optim.warmup_steps=200 --config.optim.ema_start=500 "
                    "--config.train.export_every=2500", first, gpus=(0, 1, 2), exclusive=True))
    first = ("teacher",)
  ode_init, phase1 = export(f"{rA}/ode_init", STEPS["ode_init"]), export(f"{rA}/self_forcing", STEPS["self_forcing"])
  plan.append(Job("ode_init", pipeline(dA, rA, "ode_init", 0), first))
  plan.append(Job("phase1", pipeline(dA, rA, "self_forcing", 0), ("ode_init",)))
  hybrid = f"configs/world/hybrid.py:{LAYOUT}"
  plan.append(Job("phase2_dense", f"python -m hybrid_forcing_jax.train --config={hybrid} --workdir={rA}/hybrid_dense "
                  f"{dmd(dA, rA)} --config.model.checkpoint={phase1} --config.train.steps={STEPS['hybrid']} {DENSE} && "
                  + evaluate(dA, hybrid, export(f"{rA}/hybrid_dense", STEPS["hybrid"]), "phase2_dense", 0,
                             f"{rA}/hybrid_dense.json", DENSE), ("phase1",)))
  plan.append(Job("phase2", pipeline(dA, rA, "export", 0) + " && "
                  + evaluate(dA, hybrid, export(f"{rA}/hybrid", STEPS["hybrid"]), "phase2", 0, f"{rA}/hybrid.json"),
                  ("phase1",)))
  plan.append(Job("ode_init_memory", pipeline(dB, rB, "ode_init", memory), first + ("prepare_memory",)))

  def row(d, r, name, seed, after):
    workdir = f"{r}/ablation_dense/seed{seed}/{name}"
    config = f"configs/world/ablation.py:{name},{LAYOUT}"
    start = phase1 if name == "decoupled" else export(f"{r}/ode_init", STEPS["ode_init"])
    steps = f"--config.train.steps={STEPS['hybrid']}"
    plan.append(Job(f"{os.path.basename(r)}_seed{seed}_{name}",
                    f"python -m hybrid_forcing_jax.train --config={config} --workdir={workdir} {dmd(d, r)} "
                    f"--config.model.checkpoint={start} --config.train.seed={seed} --config.data.seed={seed} {steps} "
                    f"{DENSE} && " + evaluate(d, config, export(workdir, STEPS["hybrid"]), name, seed,
                                              f"{workdir}.json", f"{steps} {DENSE}"), after))

  for seed in seeds:   # the memory pair: the linear memory off and on, prompts with long-memory captions
    for name in ("window", "hybrid"):
      row(dB, rB, name, seed, ("ode_init_memory",))
  plan.append(Job("evaluate_ode_init", evaluate(dA, f"configs/world/self_forcing.py:{LAYOUT}", ode_init, "ode_init", 0,
                                                f"{rA}/ode_init.json", "--tasks=prompt_following"), ("ode_init",)))
  plan.append(Job("evaluate_phase1", evaluate(dA, f"configs/world/self_forcing.py:{LAYOUT}", phase1, "phase1", 0,
                                              f"{rA}/self_forcing.json"), ("phase1",)))
  model = os.path.join(os.path.dirname(KEPT_TEACHER), "model")   # the shipped v1, on the same device as the above
  plan.append(Job("evaluate_shipped", f"python -m hybrid_forcing_jax.evaluate_world --config=configs/world/hybrid.py:frame "
                  f"--dit={model}/dit --text={model}/text --codec={model}/codec --name=v1 --seed=0 --num_videos=48 "
                  f"--tasks=prompt_following --output_json={work}/v1.json"))
  for seed in seeds:
    plan.append(Job(f"evaluate_teacher_seed{seed}",
                    evaluate(dA, f"configs/world/ode_init.py:{LAYOUT}", teacher, "teacher", seed,
                             f"{work}/teacher_seed{seed}.json", "--teacher --ground_truth"), first))
    for name in ROWS:
      row(dA, rA, name, seed, ("phase1",) if name == "decoupled" else ("ode_init",))
  return plan
