"""Training metrics: one JSON line per logged step (`metrics.jsonl`) and TensorBoard events (`tb/`),
written by process 0; a tqdm bar with the step, loss, steps/s and ETA.

On resume from step k the records after k (written by the killed run, about to be redone) are
dropped from the JSONL and purged from TensorBoard, so the logs read as one uninterrupted run.
"""
from __future__ import annotations

import json
import os

import jax
import tqdm
from tensorboardX import SummaryWriter

JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"


class MetricsLog:
  def __init__(self, workdir: str, *, start_step: int, total_steps: int):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, JSONL_FILE)
    self.bar = tqdm.tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True,
                         disable=not self.enabled)
    if not self.enabled:
      return
    if start_step:
      drop_after(self.path, start_step)
    self.jsonl = open(self.path, "a")
    self.tb = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    """metrics: host floats (loss, grad_norm, lr, step_time, samples_per_s, memory...)."""
    if not self.enabled:
      return
    self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
    self.jsonl.flush()
    for name, value in metrics.items():
      self.tb.add_scalar(name, value, step)
    self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics.items() if k == "loss" or k.endswith("/loss")},
                         refresh=False)

  def advance(self, steps: int = 1) -> None:
    self.bar.update(steps)

  def close(self) -> None:
    self.bar.close()
    if self.enabled:
      self.jsonl.close()
      self.tb.close()


def drop_after(path: str, step: int) -> None:
  """Keep only the records of steps <= step (atomic rewrite)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    kept = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
  with open(path + ".tmp", "w") as f:
    f.writelines(kept)
  os.replace(path + ".tmp", path)


def device_memory() -> dict[str, float]:
  """Peak and in-use bytes of device 0 in GiB, where the backend reports them (not on CPU)."""
  stats = jax.local_devices()[0].memory_stats() or {}
  gib = 1024.0 ** 3
  return {f"memory/{k}_gib": stats[k] / gib for k in ("bytes_in_use", "peak_bytes_in_use") if k in stats}


def read_jsonl(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
