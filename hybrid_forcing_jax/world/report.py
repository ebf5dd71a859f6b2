"""One markdown table from evaluate_world's JSON files (`--output_json`), one file per evaluated model and
seed (scripts/world_ablation.sh writes them): a row per model, a column per measurement, each cell the
mean over the seeds with their range, `mean (min..max)`, and the seeds listed per row.

  python -m hybrid_forcing_jax.world.report \
      --results=runs/world/ablation/seed0/window.json,runs/world/ablation/seed1/window.json,...

Rows come in the order they first appear in --results; a file holds every row it evaluated (the model,
the teacher, "ground truth", "random weights"), the seed is the file's evaluation seed (`seed`). A
measurement a row does not have (the teacher's long horizon, a task not run) is "-". The long-memory
chance (1 / number of colours) is a row of its own. Files evaluated on another world or number of videos
than the first are refused: their numbers would not be comparable. Exit statuses: cli.py.
"""
from __future__ import annotations

import json

import numpy as np
from absl import flags

from hybrid_forcing_jax import cli
from hybrid_forcing_jax.cli import BadInput

FLAGS = flags.FLAGS
flags.DEFINE_list("results", None, "evaluate_world --output_json files, comma-separated")

# Column -> (task, how its value is read from the task's results).
METRICS = {
    "colour": ("prompt_following", lambda r: r["colour"]),
    "shape": ("prompt_following", lambda r: r["shape"]),
    "direction": ("prompt_following", lambda r: r["direction"]),
    "all correct": ("prompt_following", lambda r: r["all"]),
    "object, mean over windows": ("long_horizon", lambda r: float(np.mean(r["object"]))),
    "object, last window": ("long_horizon", lambda r: r["object"][-1]),
    "drift, last window": ("long_horizon", lambda r: r["drift"][-1]),
    "colour at return": ("long_memory", lambda r: r["colour"]),
    "object back": ("long_memory", lambda r: r["back"]),
}
CHANCE_ROW = "chance"


def load(paths: list[str]) -> list[dict]:
  """The files' contents; refuses unreadable files and files not comparable with the first."""
  runs = []
  for path in paths:
    try:
      with open(path) as f:
        run = json.load(f)
    except (OSError, ValueError) as e:
      raise BadInput(f"--results: {path}: cannot be read as JSON ({type(e).__name__}: {e})") from None
    if not isinstance(run, dict) or not isinstance(run.get("results"), dict) or "seed" not in run:
      raise BadInput(f"--results: {path}: not an evaluate_world --output_json file (it needs 'results' and 'seed')")
    for key in ("world", "num_videos", "prompt_split"):
      if runs and run.get(key) != runs[0].get(key):
        raise BadInput(f"--results: {path} was evaluated with another {key} than {paths[0]}: not comparable")
    runs.append(run)
  return runs


def collect(runs: list[dict]) -> dict[str, dict[int, dict]]:
  """Row -> seed -> {column: value or None}, rows in order of first appearance."""
  rows: dict[str, dict[int, dict]] = {}
  for run in runs:
    for name, tasks in run["results"].items():
      seeds = rows.setdefault(name, {})
      if run["seed"] in seeds:
        raise BadInput(f"--results: row {name!r} of seed {run['seed']} is in two files")
      seeds[run["seed"]] = {column: read(tasks.get(task)) if tasks.get(task) else None
                            for column, (task, read) in METRICS.items()}
  return rows


def chance(runs: list[dict]) -> float | None:
  for run in runs:
    for tasks in run["results"].values():
      if tasks.get("long_memory"):
        return tasks["long_memory"]["chance"]
  return None


def cell(values: list[float | None]) -> str:
  """Mean (min..max) over the seeds that have the value; "-" if none has it."""
  values = [v for v in values if v is not None]
  if not values:
    return "-"
  mean = f"{np.mean(values):.3f}"
  return mean if len(values) == 1 else f"{mean} ({min(values):.3f}..{max(values):.3f})"


def table(runs: list[dict]) -> str:
  rows = collect(runs)
  header = ["row", "seeds"] + list(METRICS)
  body = [[name, ",".join(str(s) for s in sorted(seeds))] + [cell([v[c] for v in seeds.values()]) for c in METRICS]
          for name, seeds in rows.items()]
  p = chance(runs)
  if p is not None:
    body.append([CHANCE_ROW, "-"] + [f"{p:.3f}" if c == "colour at return" else "-" for c in METRICS])
  lines = ["| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header)] + body]
  return "\n".join(lines)


def describe(runs: list[dict]) -> str:
  """What the table's numbers are, and the files' long-memory notes (a student's stream under which the
  task is no memory test), each with the rows of the files that carry it (a file's first row: its --dit)."""
  world = runs[0].get("world") or {}
  notes: dict[str, list[str]] = {}
  for run in runs:
    if run.get("memory_note"):
      row = next(iter(run["results"]))
      notes.setdefault(run["memory_note"], [])
      if row not in notes[run["memory_note"]]:
        notes[run["memory_note"]].append(row)
  # Files from before --prompt_split have no key: they were held-out captions.
  captions = {"heldout": "held-out", "train": "training"}[runs[0].get("prompt_split") or "heldout"]
  text = (f"{runs[0].get('num_videos')} videos per task and seed, world {world.get('width')}x{world.get('height')} "
          f"of {world.get('num_frames')} frames; each cell: mean over the row's seeds (min..max); prompt following "
          f"({captions} captions): colour, shape, direction, all correct; long horizon: object present with the "
          "caption's colour, drift = colour-histogram distance to the first 5-second window; long memory: colour "
          "at the return (chance below), object back.")
  return text + "".join(f"\nNOTE ({', '.join(rows)}): {note}" for note, rows in notes.items())


def main(argv) -> int:
  if not FLAGS.results:
    raise BadInput("give --results: evaluate_world --output_json files, comma-separated")
  runs = load(FLAGS.results)
  print(describe(runs) + "\n\n" + table(runs))
  return cli.EXIT_OK


if __name__ == "__main__":
  cli.run(main, "world.report")
