"""Train one stage per config file: ODE init, DMD (phases 1 and 2) or flow matching (the world's teacher).

  python -m hybrid_forcing_jax.train --config=configs/ode_init.py --workdir=runs/ode_init
  python -m hybrid_forcing_jax.train --config=configs/ode_init.py:tiny --workdir=/tmp/tiny   # CPU
  python -m hybrid_forcing_jax.train --config=configs/ode_init.py --config.optim.lr=1e-6 --workdir=...

The same command resumes from the workdir's last checkpoint (state, RNG and data position), so a
killed run continues with exactly the losses of an uninterrupted one. SIGTERM saves a checkpoint and
exits with status 143. Workdir layout: docs/training.md.
"""
from __future__ import annotations

import signal
import time

from absl import flags, logging

from hybrid_forcing_jax import cli

FLAGS = flags.FLAGS
cli.define_config_flag(
    "config", None, "Training config, e.g. configs/ode_init.py (or configs/ode_init.py:tiny); override any key "
    "with --config.section.key=value", "train")
flags.DEFINE_string("workdir", None, "Run folder: checkpoints, metrics, exported models; reused to resume")

EXIT_TERMINATED = 143  # 128 + SIGTERM: saved and stopped, not finished


def main(argv) -> int:
  if FLAGS.config is None or not FLAGS.workdir:
    raise cli.BadInput("--config and --workdir are required (see --help)")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO; the bar and metrics say enough
  from hybrid_forcing_jax.training import trainer
  from hybrid_forcing_jax.training.sharding import initialize_distributed
  initialize_distributed()
  try:
    job = trainer.prepare(FLAGS.config, FLAGS.workdir)
  except trainer.ConfigError as e:
    raise cli.BadInput(str(e)) from None
  terminated = []
  signal.signal(signal.SIGTERM, lambda *_: terminated.append(time.time()))
  finished = job.run(should_stop=lambda: bool(terminated))
  return 0 if finished else EXIT_TERMINATED


if __name__ == "__main__":
  cli.run(main, "train")
