"""Issue 14's GPU measurements as a plan for scripts/gpu_jobs.py, each alone on one GPU (`--set bench_gpu=N`,
default 3), beside another plan's jobs on the other GPUs:

  python scripts/gpu_jobs.py --plan=scripts/world_plan.py --plan=benchmarks/speed_plan.py --work=/root/w \\
      --budget_s=530 --pack=OUT/results.tar.gz

Each job writes the benchmark's JSON lines to WORK/bench/<job>.jsonl (in --pack): the cold start reading full-size
weights as `sample` does (written once into WORK/weights, untimed), the VAE's full-resolution layers one frame at a
time against all at once (peak memory and VAE time), and XLA's command buffers extended to loops and conditionals
against the default (idle gaps between kernels)."""
import os

E2E = "python -m benchmarks.bench_end_to_end --setting=hybrid"
COMMAND_BUFFERS = "--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"


def jobs(work: str, settings: dict) -> list:
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
  from gpu_jobs import Job

  gpu = (int(settings.get("bench_gpu", "3")),)
  out = f"{work}/bench"

  def bench(name, command):
    return Job(name, f"mkdir -p {out} && {command} | tee {out}/{name}.log | grep '^{{' > {out}/{name}.jsonl",
               gpus=gpu, exclusive=True)
  return [
      bench("bench_cold_start", f"{E2E} --cold_start --text_encoder_weights=device --vae_frames_per_call=1 "
                                f"--weights_dir={work}/weights"),
      bench("bench_vae_tail_on", f"{E2E} --chunks=30 --vae_frames_per_call=1 --vae_tail_by_frame=on"),
      bench("bench_vae_tail_off", f"{E2E} --chunks=30 --vae_frames_per_call=1 --vae_tail_by_frame=off"),
      bench("bench_command_buffers_default", f"{E2E} --chunks=15"),
      bench("bench_command_buffers_loops", f"XLA_FLAGS={COMMAND_BUFFERS} {E2E} --chunks=15"),
  ]
