"""The paper's ablation (Table 3) in miniature on the world, one config per row; each row adds one part
of Hybrid Forcing to the row before it (docs/world.md, "Ablation and long memory"):

  window         sink 3 + window 9 softmax only: no linear memory (nor linear_proj), absolute RoPE, no regulariser
  hybrid         + the linear memory of evicted frames (hybrid attention; linear_proj added at zero)
  relative_rope  + relative RoPE capped at 21
  regulariser    + the teacher regulariser (Eq. 9, weight 0.05): Hybrid Forcing trained from the start
  decoupled      = configs/world/hybrid.py: the same, but from the dense phase 1 (decoupled distillation)

Every row is configs/world/hybrid.py (phase 2's optimiser, rollouts, steps, sparsity) with only the keys
its row list names changed; the first four start from the world ODE-init export (the one phase 1 starts
from), `decoupled` from phase 1's export. Rows `window` and `hybrid` are the long-memory pair (the linear
memory off and on). Give the row, and `tiny` for the CPU or a layout (`frame`), as the variant:

  python -m hybrid_forcing_jax.train --config=configs/world/ablation.py:window \
      --workdir=runs/world/ablation/seed0/window --config.train.seed=0 --config.data.seed=0
  python -m hybrid_forcing_jax.train --config=configs/world/ablation.py:window,tiny --workdir=/tmp/window   # CPU
  scripts/world_ablation.sh      # every row and seed, then the evaluation and the table
"""
import ml_collections

from configs.world import common, hybrid, self_forcing

ROWS = ("window", "hybrid", "relative_rope", "regulariser", "decoupled")
# The part each row adds, as what the rows before it have instead (keys of configs/world/hybrid.py).
WITHOUT = {
    "hybrid": {"stream.linear": False, "model.overrides.linear_proj": False},
    "relative_rope": {"stream.rope": "absolute"},
    "regulariser": {"regulariser.weight": 0.0},
}


def parse_variant(variant: str) -> tuple[str, str]:
  """'window', 'window,tiny' or 'window,tiny,frame' -> (row, the rest: a world variant of configs/world/common)."""
  parts = [p for p in variant.split(",") if p]
  rows = [p for p in parts if p in ROWS]
  rest = ",".join(p for p in parts if p not in ROWS)
  try:
    common.parse_variant(rest)
  except ValueError:
    rows = []
  if len(rows) != 1:
    raise ValueError(f"configs/world/ablation.py: variant {variant!r}: name one row of {list(ROWS)}, optionally "
                     "with the world's variant: 'tiny' and a layout of configs/world/common.LAYOUTS "
                     "(e.g. configs/world/ablation.py:window,tiny)")
  return rows[0], rest


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  row, world = parse_variant(variant)
  c = hybrid.get_config(world)
  if row == "decoupled":
    return c
  c.model.checkpoint = self_forcing.get_config(world).model.checkpoint   # the ODE-init export
  for part in ROWS[ROWS.index(row) + 1:]:
    for key, value in WITHOUT.get(part, {}).items():
      *path, name = key.split(".")
      section = c
      for p in path:
        section = section[p]
      section[name] = value
  return c
