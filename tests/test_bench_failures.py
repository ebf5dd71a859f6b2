"""benchmarks/failures.failure_line: a failed benchmark run is recorded by its exception's line, not by the
traceback's last frames (the 4-GPU FSDP runs of 2026-11-27 kept only JAX's stack-trace footer)."""
from benchmarks.failures import failure_line

# The shape of what a JAX runtime error leaves on stderr: the exception line, then XLA's Python stack trace
# and JAX's note on filtered frames after it.
JAX_FAILURE = """Traceback (most recent call last):
  File "/tmp/snap/benchmarks/bench_train_step.py", line 180, in <module>
    app.run(main)
jax.errors.JaxRuntimeError: INTERNAL: ncclCommInitRank failed: unhandled cuda error
  <frozen runpy>:198:11 [_run_module_as_main] [xla::PythonStackTrace='']
--------------------
For simplicity, JAX has removed its internal frames from the traceback of the following exception. Set JAX_TRACEBACK_FILTERING=off to include these.
"""


def test_the_exception_line_not_the_footer():
  assert failure_line(JAX_FAILURE) == "jax.errors.JaxRuntimeError: INTERNAL: ncclCommInitRank failed: unhandled cuda error"


def test_the_last_exception_of_a_chain():
  text = "ValueError: first\n\nThe above exception was the direct cause of the following exception:\n\nRuntimeError: second\n"
  assert failure_line(text) == "RuntimeError: second"


def test_out_of_memory_wins():
  text = JAX_FAILURE.replace("INTERNAL: ncclCommInitRank failed", "RESOURCE_EXHAUSTED: Out of memory while trying")
  assert failure_line(text) == "out of memory"


def test_no_exception_line():
  assert failure_line("step 1\nKilled\n") == "Killed"
  assert failure_line("", 137) == "exit status 137 without output"


def test_long_messages_are_cut():
  assert len(failure_line("ValueError: " + "x" * 5000)) == 600
