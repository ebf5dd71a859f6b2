"""The world ablation (configs/world/ablation.py, scripts/world_ablation.sh, world/report.py): each row
differs from the one before it in exactly the part it adds, `decoupled` is the world phase 2, the
long-memory pair's streams make the long-memory task a memory test and run it without a linear memory,
the report's cells are the seeds' mean and range, and the script refuses to start without the main
pipeline's outputs. The script's --tiny run itself takes minutes (docs/world.md); it is not run here."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs.world import ablation, common, hybrid, self_forcing
from hybrid_forcing_jax.dit import WanDiT, init_params
from hybrid_forcing_jax.streaming.config import from_config
from hybrid_forcing_jax.training.config import parse
from hybrid_forcing_jax.world import eval_tasks
from hybrid_forcing_jax.world.codec import PixelCodec
from hybrid_forcing_jax.world.eval_generators import StreamGenerator
from hybrid_forcing_jax.world.scene import WorldConfig, long_memory_fits
from hybrid_forcing_jax.world.text import world_text_encoder
from tests.world_fixtures import world_dit_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat(config) -> dict:
  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v
  walk(config.to_dict(), "")
  return out


def changes(a, b) -> dict:
  """key -> (a's value, b's value) where they differ."""
  fa, fb = flat(a), flat(b)
  assert fa.keys() == fb.keys()
  return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]}


@pytest.mark.parametrize("size", ["", "tiny"])
def test_each_row_adds_exactly_its_part(size):
  rows = {row: ablation.get_config(f"{row},{size}" if size else row) for row in ablation.ROWS}
  assert changes(rows["window"], rows["hybrid"]) == {"stream.linear": (False, True),
                                                     "model.overrides.linear_proj": (False, True)}
  assert changes(rows["hybrid"], rows["relative_rope"]) == {"stream.rope": ("absolute", "relative")}
  assert changes(rows["relative_rope"], rows["regulariser"]) == {"regulariser.weight": (0.0, 0.05)}
  # Hybrid from the start (from ODE init) against decoupled (from phase 1): only where the generator starts.
  ode_init, phase_1 = self_forcing.get_config(size).model.checkpoint, hybrid.get_config(size).model.checkpoint
  assert changes(rows["regulariser"], rows["decoupled"]) == ({"model.checkpoint": (ode_init, phase_1)} if not size
                                                               else {})   # :tiny's models are random
  assert rows["decoupled"].to_dict() == hybrid.get_config(size).to_dict()
  for row, config in rows.items():
    run = parse(config)   # the trainer accepts every row
    assert run.stream.sink_frames == 3 and run.stream.window_frames == 9, row
  window = rows["window"]
  assert window.stream.linear is False and window.stream.rope == "absolute" and window.regulariser.weight == 0.0
  assert window.model.overrides.linear_proj is False
  if not size:
    assert ode_init.startswith("runs/world/ode_init/export/") and phase_1.startswith("runs/world/self_forcing/export/")


@pytest.mark.parametrize("variant", ["", "tiny", "window,hybrid", "windows", "window,tiny,x", "window,frame,frame"])
def test_a_variant_must_name_one_row(variant):
  with pytest.raises(ValueError, match="name one row of"):
    ablation.get_config(variant)


def test_the_long_memory_pair_is_a_memory_test_and_runs_without_a_linear_memory():
  world = WorldConfig()
  for row in ("window", "hybrid"):   # the default world under either stream: the colour is only in the linear memory
    s = from_config(ablation.get_config(row).stream)
    long_memory_fits(world, sink_frames=s.sink_frames, window_frames=s.window_frames, chunk_frames=s.chunk_frames,
                     temporal_factor=PixelCodec().config.temporal_factor)
  stream = from_config(ablation.get_config("window,tiny").stream)
  assert not stream.linear
  config = world_dit_config(linear_proj=False)   # the window row's student has no linear_proj
  model = WanDiT(config, dtype=jnp.float32, param_dtype=jnp.float32, attention_backend="xla")
  params = init_params(config, jax.random.key(0), param_dtype=jnp.float32)
  generate = StreamGenerator(model, params, stream, PixelCodec(), {}, world_text_encoder().encode)
  memory = eval_tasks.long_memory(generate, common.world("tiny"), num_videos=1, seed=0, batch_size=1)
  assert memory["prefix_frames"] == 9 and 0.0 <= memory["colour"] <= memory["back"] <= 1.0   # one chunk, then one


WORLD = {"height": 64, "width": 64, "num_frames": 81}


def evaluation(rows: dict, seed: int, teacher: bool = False, note: str | None = None, world=WORLD) -> dict:
  """evaluate_world's --output_json layout; rows: name -> (prompt colour, long-memory colour) or None per task."""
  results = {}
  for name, (colour, memory) in rows.items():
    results[name] = {
        "prompt_following": {"colour": colour, "shape": 1.0, "direction": 0.5, "all": 0.25, "videos": 4},
        "long_horizon": None if teacher else {"window_seconds": 5, "object": [1.0, 0.5], "drift": [0.0, 0.4],
                                              "videos": 4},
        "long_memory": None if memory is None else {"colour": memory, "back": 1.0, "chance": 1 / 6,
                                                    "prefix_frames": 33, "videos": 4}}
  return {"results": results, "dit": "x", "stream": {}, "world": world, "num_videos": 4, "seed": seed,
          "teacher": teacher, "memory_note": note}


def write(tmp_path, name: str, content: dict) -> str:
  path = tmp_path / name
  path.write_text(json.dumps(content))
  return str(path)


def run_report(*args):
  return subprocess.run([sys.executable, "-m", "hybrid_forcing_jax.world.report", *args], capture_output=True,
                        text=True, cwd=ROOT, timeout=120)


def test_report_gives_mean_and_range_over_seeds_in_row_order(tmp_path):
  files = [write(tmp_path, "h0.json", evaluation({"hybrid": (0.5, 0.75)}, seed=0)),
           write(tmp_path, "w1.json", evaluation({"window": (0.25, None)}, seed=1, note="window too long")),
           write(tmp_path, "h1.json", evaluation({"hybrid": (1.0, 0.25)}, seed=1)),
           write(tmp_path, "w0.json", evaluation({"window": (0.75, None)}, seed=0, note="window too long")),
           write(tmp_path, "t0.json", evaluation({"teacher": (1.0, 1.0), "ground truth": (1.0, 1.0)}, seed=0,
                                                 teacher=True))]
  done = run_report(f"--results={','.join(files)}")
  assert done.returncode == 0, done.stderr
  lines = done.stdout.splitlines()
  header = next(line for line in lines if line.startswith("| row"))
  rows = {line.split(" | ")[0][2:]: line.strip("| ").split(" | ") for line in lines if line.startswith("| ")}
  columns = header.strip("| ").split(" | ")
  assert [r for r in rows if r not in ("row", "---")] == ["hybrid", "window", "teacher", "ground truth", "chance"]
  cell = lambda row, column: rows[row][columns.index(column)]  # noqa: E731
  assert cell("hybrid", "seeds") == "0,1" and cell("teacher", "seeds") == "0"
  assert cell("hybrid", "colour") == "0.750 (0.500..1.000)"
  assert cell("window", "colour") == "0.500 (0.250..0.750)"
  assert cell("hybrid", "colour at return") == "0.500 (0.250..0.750)"
  assert cell("window", "colour at return") == "-"                     # long memory not run
  assert cell("teacher", "object, last window") == "-"                  # the teacher makes no long videos
  assert cell("hybrid", "object, mean over windows") == "0.750 (0.750..0.750)"
  assert cell("hybrid", "drift, last window") == "0.400 (0.400..0.400)"
  assert cell("teacher", "colour") == "1.000"                           # one seed: the mean alone
  assert cell("chance", "colour at return") == "0.167" and cell("chance", "colour") == "-"
  assert "NOTE (window): window too long" in done.stdout and "4 videos per task and seed" in done.stdout
  assert "(held-out captions)" in done.stdout   # files without prompt_split: the held-out ones


def test_report_names_the_prompt_split_and_refuses_to_mix_splits(tmp_path):
  train = [write(tmp_path, f"t{seed}.json", {**evaluation({"hybrid": (0.5, 0.5)}, seed=seed), "prompt_split": "train"})
           for seed in (0, 1)]
  done = run_report(f"--results={','.join(train)}")
  assert done.returncode == 0 and "(training captions)" in done.stdout, done.stderr
  heldout = write(tmp_path, "h.json", {**evaluation({"window": (0.5, 0.5)}, seed=0), "prompt_split": "heldout"})
  done = run_report(f"--results={train[0]},{heldout}")
  assert done.returncode == 2 and "another prompt_split" in done.stderr, done.stderr


def test_report_refuses_files_it_cannot_compare(tmp_path):
  a = write(tmp_path, "a.json", evaluation({"hybrid": (0.5, 0.5)}, seed=0))
  other_world = write(tmp_path, "b.json", evaluation({"window": (0.5, 0.5)}, seed=0, world={**WORLD, "width": 32}))
  again = write(tmp_path, "c.json", evaluation({"hybrid": (0.5, 0.5)}, seed=0))
  broken = write(tmp_path, "d.json", {"seed": 0})
  for files, needle in (([a, other_world], "another world"), ([a, again], "row 'hybrid' of seed 0 is in two files"),
                        ([broken], "not an evaluate_world --output_json file"), ([], "give --results")):
    done = run_report(f"--results={','.join(files)}")
    assert done.returncode == 2 and needle in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def run_script(*args):
  return subprocess.run(["bash", "scripts/world_ablation.sh", *args], capture_output=True, text=True, cwd=ROOT,
                        timeout=120)


def test_script_refuses_without_the_main_pipelines_outputs(tmp_path):
  data, runs = tmp_path / "data", tmp_path / "runs"
  where = [f"--data={data}", f"--runs={runs}"]
  for args, needle in ((["--rows=window,windw"], "--rows: unknown row 'windw'"),
                       (["--seeds=0,x"], "--seeds: 'x'"),
                       ([], f"{data}/text/text_encoder is missing")):
    done = run_script(*where, *args)
    assert done.returncode == 2 and needle in done.stderr, done.stderr
  for path in ("text/text_encoder", "text/tokenizer", "codec"):
    (data / path).mkdir(parents=True)
  (data / "prompts.txt").write_text("a red circle bouncing\n")
  done = run_script(*where)
  assert done.returncode == 2 and f"no export in {runs}/teacher/export" in done.stderr, done.stderr
  (runs / "teacher/export/00000010").mkdir(parents=True)
  (runs / "ode_init/export/00000005").mkdir(parents=True)
  done = run_script(*where, "--rows=window,decoupled")   # decoupled starts from phase 1, which is missing
  assert done.returncode == 2 and f"no export in {runs}/self_forcing/export" in done.stderr, done.stderr
  done = run_script(*where, "--out=")
  assert done.returncode == 2 and "--out= is empty" in done.stderr, done.stderr
  assert not (runs / "ablation").exists()


def test_evaluate_world_takes_the_world_from_world_config(tmp_path):
  """The ablation's students are evaluated on the world the teacher learnt: --world_config's `world`, else their
  own config's (the same world); a --world_config without one is refused."""
  base = [sys.executable, "-m", "hybrid_forcing_jax.evaluate_world", "--config=configs/world/ablation.py:window,tiny",
          "--ground_truth", "--tasks=long_memory", "--num_videos=1"]
  for flags in (["--world_config=configs/world/teacher.py:tiny"], []):
    out = tmp_path / f"truth{len(flags)}.json"
    done = subprocess.run(base + flags + [f"--output_json={out}"], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["world"] == common.world("tiny").to_dict(), flags
    assert result["results"]["ground truth"]["long_memory"]["colour"] == 1.0
  done = subprocess.run(base + ["--world_config=configs/hybrid.py"], capture_output=True, text=True, cwd=ROOT,
                        timeout=300)
  assert done.returncode == 2 and "--world_config has no 'world' section" in done.stderr, done.stderr[-2000:]
