"""benchmarks/bench_end_to_end.py --cold_start on the shipped world model (--tiny, CPU): two fresh processes
share one new compilation cache; each prints its row (with jax's compile log summed), and the first one fills
the cache the second reads.
The times themselves are for the benchmark's table, not asserted. ~10 s on the 2-core dev box."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.train_fixtures import REPO


def test_cold_start_runs_twice_on_one_cache():
  done = subprocess.run([sys.executable, "-m", "benchmarks.bench_end_to_end", "--tiny", "--setting=hybrid",
                         "--cold_start"], capture_output=True, text=True, cwd=REPO, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
  assert [row["run"] for row in rows] == ["empty cache", "filled cache"]
  for row in rows:
    assert row["cache_files"] >= 1 and row["device"] == "cpu"
    assert row["start_to_first_frame_s"] > row["import_s"] + row["weights_s"] > 0
    # jax's compile log, summed: the stream's denoising program among the slowest to compile (or to read back)
    assert "denoise" in row["compile_log"]["compile"]["top"]
  # the same programs, compiled by the first process and read from the cache by the second
  assert rows[0]["compile_log"]["compile"]["programs"] == rows[1]["compile_log"]["compile"]["programs"] >= 3
