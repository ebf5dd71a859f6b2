"""What every command-line entry point shares: exit statuses, one-line errors, help, a quiet start.

Exit statuses (README: Exit statuses), the same for `sample`, `convert`, `train` and `make_ode_pairs`:
  0    success, and `--help` / `--helpfull`;
  1    the run itself failed: one line where the cause is known (`RunFailed`: ffmpeg's reason, a full
       disk), else Python's traceback (a bug, a device error);
  2    bad input (a flag, a file, a config key): one line `<command>: error: <what, named>`, nothing
       written over;
  130  interrupted (Ctrl-C): one line, no traceback.

  from hybrid_forcing_jax import cli
  def main(argv): ...; raise cli.BadInput("--prompt is empty"); ...; return 0
  if __name__ == "__main__":
    cli.run(main, "sample")
"""
from __future__ import annotations

import logging
import os
import re
import signal
import sys
from typing import Callable, Sequence

from absl import app, flags
from ml_collections.config_flags import config_flags

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class BadInput(Exception):
  """Bad input from the user: printed as one line, exit status 2."""


class RunFailed(Exception):
  """A failure with a known cause outside the program (ffmpeg, the disk): one line, exit status 1."""


def define_config_flag(name: str, default: str | None, help_text: str, command: str) -> None:
  """config_flags.DEFINE_config_file, but an override of a key the config lacks (`--config.x.typo=1`),
  which config_flags finds while a flag with a default is defined, ends in one line naming it.
  Every command defines its own `--config`; allow_override lets several commands be imported into one
  process (tests, notebooks): the last import's definition holds there."""
  try:
    config_flags.DEFINE_config_file(name, default, help_text, allow_override=True)
  except (AttributeError, KeyError) as e:
    _exit(command, f"error: {_unknown_override(e, sys.argv) or _one_line(e)}", EXIT_BAD_INPUT)


def _unknown_override(error: BaseException, argv: Sequence[str]) -> str | None:
  """'--config.stream.windw_frames: the config has no key ...' for config_flags' KeyError, if an
  override names that key."""
  text = str(error).replace("\\", "")
  key = re.search(r"'(\w+)'", text)
  if not key:
    return None
  overrides = [arg.split("=", 1)[0] for arg in argv[1:] if re.match(r"--\w+\.", arg)]
  named = [arg for arg in overrides if key.group(1) in arg.split(".")[1:]]
  if not named:
    return None
  hint = re.search(r'Did you mean "(\w+)"', text)
  return (f"{', '.join(named)}: the config has no key {key.group(1)!r}"
          + (f" (did you mean {hint.group(1)!r}?)" if hint else ""))


_interrupt_requested = False


def _on_sigint(signum, frame):
  """Ctrl-C: remember it, then raise KeyboardInterrupt as Python's own handler does. The exception is lost
  when it lands in a garbage-collector callback or a __del__ (seen: in JAX's _xla_gc_callback while the
  model loaded, and `sample` then wrote the whole video and exited 0), so long loops also call
  `check_interrupted()` at safe points and `run` exits with EXIT_INTERRUPTED whenever it was pressed."""
  global _interrupt_requested
  _interrupt_requested = True
  raise KeyboardInterrupt


def check_interrupted() -> None:
  """Raise KeyboardInterrupt if Ctrl-C was pressed, even if its first KeyboardInterrupt was swallowed."""
  if _interrupt_requested:
    raise KeyboardInterrupt


def run(main: Callable[[Sequence[str]], int | None], command: str) -> None:
  """absl's app.run with this project's exit statuses. `main(argv)` returns the exit status (None = 0)."""
  _quiet_backend_probe()
  signal.signal(signal.SIGINT, _on_sigint)
  try:
    app.run(lambda argv: _interrupted_exits_now(_no_extra_arguments(argv) or main(argv)),
            flags_parser=_parse_flags(command))
  except BadInput as e:
    _exit(command, f"error: {e}", EXIT_BAD_INPUT)
  except RunFailed as e:
    _exit(command, f"error: {e}", EXIT_FAILURE)
  except KeyboardInterrupt:
    print(f"{command}: interrupted", file=sys.stderr)
    _interrupted_exits_now(EXIT_INTERRUPTED)


def _interrupted_exits_now(status):
  """Leave at once with EXIT_INTERRUPTED, skipping the interpreter's teardown: Ctrl-C can land while JAX's
  runtime threads start, and a normal teardown then sometimes crashes in them (SIGSEGV seen under load).
  Everything worth keeping is closed by then (the MP4 writer, the trainer's checkpoint manager)."""
  if status == EXIT_INTERRUPTED or _interrupt_requested:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_INTERRUPTED)
  return status


def _exit(command: str, message: str, status: int) -> None:
  print(f"{command}: {message}", file=sys.stderr)
  sys.exit(status)


def _no_extra_arguments(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise BadInput(f"unexpected arguments {list(argv[1:])} (flags are written --name=value)")


def _parse_flags(command: str) -> Callable[[list[str]], list[str]]:
  def parse(argv: list[str]) -> list[str]:
    try:
      rest = flags.FLAGS(argv)
    except flags.Error as e:
      _exit(command, f"error: {str(e).strip().splitlines()[0]}", EXIT_BAD_INPUT)
    except SystemExit as e:
      # absl's --help, --helpshort, --helpfull and --helpxml print and then exit with status 1.
      sys.exit(EXIT_OK if e.code == 1 else e.code)
    except Exception as e:  # a config override of a missing key; a config file that raises
      _exit(command, f"error: {_unknown_override(e, argv) or _one_line(e)}", EXIT_BAD_INPUT)
    for flag in flags.FLAGS:
      _check_config_loaded(command, flags.FLAGS[flag])
    return rest
  return parse


def _check_config_loaded(command: str, flag) -> None:
  """config_flags defers a missing file's error to the first use of the config; report it now."""
  if not config_flags.is_config_flag(flag) or flag.value is None:
    return
  try:
    flag.value.keys()
  except OSError:
    path = config_flags.get_config_filename(flag)
    reason = "no such file" if not os.path.exists(path) else "cannot be read as a Python config file"
    _exit(command, f"error: --{flag.name}={path}: {reason}", EXIT_BAD_INPUT)


def _one_line(error: BaseException) -> str:
  lines = [line for line in str(error).strip().splitlines() if line.strip()]
  return f"{type(error).__name__}: {lines[-1].strip() if lines else ''}"


class _DropTpuProbe(logging.Filter):
  """JAX probes for a TPU on every start and logs the failure; on a CPU or GPU machine that is noise."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


def _quiet_backend_probe() -> None:
  logging.getLogger("jax._src.xla_bridge").addFilter(_DropTpuProbe())
