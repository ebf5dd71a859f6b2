"""`python -m hybrid_forcing_jax.sample`: the out-of-the-box run (the shipped world model) writes a real
MP4 and `--seconds=inf` streams until Ctrl-C; bad input exits 2 with one line naming the problem, before
any work and without touching an existing file; Ctrl-C before the first frame leaves no file and exits
130. The pipeline's own behaviour (prompt switches, flat memory) runs on a tiny Wan-shaped model."""
import dataclasses
import itertools
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from hybrid_forcing_jax.checkpoint import save_checkpoint
from hybrid_forcing_jax.config import tiny_config
from hybrid_forcing_jax.dit import init_params as init_dit_params
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.param_tree import flatten
from hybrid_forcing_jax.pipeline import SHIPPED_MODEL, model_folders
from hybrid_forcing_jax.vae import init_params as init_vae_params
from hybrid_forcing_jax.vae import tiny_vae_config
from hybrid_forcing_jax.world.text import save_world_text, world_tokenizer, world_umt5_config

imageio = pytest.importorskip("imageio")  # the test extra; without it this module is skipped

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sample(*args, timeout=600):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  return subprocess.run([sys.executable, "-m", "hybrid_forcing_jax.sample", *args], capture_output=True, text=True,
                        cwd=ROOT, env=env, timeout=timeout)


def hybrid_stream():
  from configs import hybrid
  from hybrid_forcing_jax.streaming.config import from_config
  return from_config(hybrid.get_config().stream)


def save_tiny_wan_model(root) -> dict[str, str]:
  """A tiny DiT over the tiny Wan VAE's 16 channels (random weights; the output head random too, not
  Wan's zeros, so the video depends on the prompt) with the world's small text encoder, as folders: a
  128x128 chunk costs 0.17 s on the CPU."""
  text_dim = world_umt5_config(world_tokenizer().vocab_size).dim
  dit_config, vae_config = tiny_config(in_dim=16, out_dim=16, text_dim=text_dim), tiny_vae_config()
  params = init_dit_params(dit_config, jax.random.key(0))
  head = params["head"]["head"]["weight"]
  params["head"]["head"]["weight"] = (0.05 * jax.random.normal(jax.random.key(1), head.shape)).astype(head.dtype)
  folders = dict(dit=f"{root}/dit", vae=f"{root}/vae", text_encoder=f"{root}/text/text_encoder",
                 tokenizer=f"{root}/text/tokenizer")
  save_checkpoint(folders["dit"], "wan_dit", dit_config, {k: np.asarray(v) for k, v in flatten(params).items()})
  save_checkpoint(folders["vae"], "wan_vae", vae_config,
                  {k: np.asarray(v) for k, v in flatten(init_vae_params(vae_config, 0)).items()})
  save_world_text(f"{root}/text")
  return folders


@pytest.fixture(scope="module")
def tiny_wan_model(tmp_path_factory):
  return save_tiny_wan_model(str(tmp_path_factory.mktemp("tiny_wan")))


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """One persistent XLA cache for this module's runs of the shipped model: later runs skip compiling."""
  return tmp_path_factory.mktemp("xla_cache")


def test_default_run_streams_the_shipped_model_over_an_existing_file(tmp_path, compilation_cache):
  """No model flags: the shipped world model, 2 seconds at the world's 64x64, 16 fps."""
  out = tmp_path / "square.mp4"
  out.write_bytes(b"an older video")
  done = run_sample(f"--output={out}", "--overwrite", f"--compilation_cache_dir={compilation_cache}",
                    "--prompt_schedule=0:a blue square bouncing;1:a red circle bouncing")
  assert done.returncode == 0, done.stderr[-2000:]
  assert any(compilation_cache.iterdir()), "the compiled chunk step should be in the persistent cache"
  assert "streaming the world model shipped in" in done.stderr
  # The switch asked for at 1 s happens at the first chunk starting after it. A chunk is 3 latent frames: 1 + 2 *
  # the codec's temporal factor video frames first, then 3 * that (v1's one frame a latent frame: frame 18, 1.12 s).
  factor = load_latent_codec(model_folders(SHIPPED_MODEL)["vae"])[0].config.temporal_factor
  switch = next(start for start in range(1 + 2 * factor, 100, 3 * factor) if start >= 16)
  assert f"prompt switch at {switch / 16:.2f} s of video: 'a red circle bouncing'" in done.stderr, done.stderr[-500:]
  reader = imageio.get_reader(str(out))
  meta = reader.get_meta_data()
  assert meta["fps"] == 16 and tuple(meta["size"]) == (64, 64)
  frames = np.stack([frame for frame in reader])
  assert len(frames) == 32  # trimmed to the default 2 seconds
  assert "wrote" in done.stdout and "32 frames" in done.stdout
  # Not a constant picture: colours vary within frames and the frames change over time.
  assert min(np.ptp(f) for f in frames) > 0 and np.ptp(frames.astype(np.int16), axis=0).max() > 0


def test_seconds_inf_streams_until_ctrl_c(tmp_path, compilation_cache):
  """`--seconds=inf` keeps making chunks past any preset length; Ctrl-C ends it with a playable file."""
  out = tmp_path / "forever.mp4"
  process = subprocess.Popen(
      [sys.executable, "-m", "hybrid_forcing_jax.sample", "--seconds=inf", f"--output={out}",
       f"--compilation_cache_dir={compilation_cache}"],
      stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  # Past the default 2 seconds (32 frames; 33 made in 3 chunks): more frames than that in the file.
  deadline = time.monotonic() + 300
  while process.poll() is None and time.monotonic() < deadline and _frames_in(out) <= 33:
    time.sleep(1)
  assert process.poll() is None, process.communicate()[1][-2000:]
  assert _frames_in(out) > 33, "the file should grow, in whole fragments, while the stream runs"
  process.send_signal(signal.SIGINT)
  stdout, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr[-2000:]
  assert "Traceback" not in stderr, stderr[-2000:]
  frames = _frames_in(out)
  assert frames > 33 and f"wrote {out} (interrupted): {frames} frames" in stdout, (frames, stdout)


def _frames_in(path) -> int:
  """Frames of a fragmented MP4, also while it grows (0 before its first fragment is complete)."""
  if not path.exists():
    return 0
  try:
    return imageio.get_reader(str(path)).count_frames()
  except OSError:   # ffmpeg cannot read the file yet
    return 0


@pytest.mark.parametrize("args,needle", [
    (["--width=100"], "--width=100 must be a positive multiple of 16"),
    (["--height=0"], "--height=0 must be a positive multiple of 16"),
    (["--prompt= "], "--prompt is empty"),
    (["--num_frames=0"], "length must be positive"),
    (["--seconds=0"], "length must be positive"),
    (["--output=/nonexistent_dir/x.mp4"], "does not exist"),
    (["--output=/tmp"], "'/tmp' is a folder"),
    (["--output=video.avi"], "'video.avi' must end in .mp4"),
    (["--output=/proc/x.mp4"], "'/proc/x.mp4' cannot be written"),
    (["--dit=/nonexistent"], "missing ['--vae', '--text_encoder', '--tokenizer']"),
    (["--vae_frames_per_call=0"], "--vae_frames_per_call=0 must be >= 1"),
    (["--prompt_schedule=5:late start"], "times must start at 0"),
    (["--config=/nonexistent/hybrid.py"], "sample: error: --config=/nonexistent/hybrid.py: no such file"),
    (["--config.stream.windw_frames=9"], "--config.stream.windw_frames: the config has no key 'windw_frames'"),
    (["--config.stream.shift=fast"], "--config.stream.shift=fast"),
    (["--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
    (["a fox"], "unexpected arguments ['a fox']"),
])
def test_bad_input_exits_2_with_one_line(args, needle):
  done = run_sample(*args, timeout=120)
  assert done.returncode == 2, done.stderr[-1000:]
  assert needle in done.stderr, done.stderr[-1000:]
  assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_existing_output_is_kept(tmp_path):
  (tmp_path / "fox.mp4").write_bytes(b"the user's video")
  done = run_sample(f"--output={tmp_path}/fox.mp4", timeout=120)
  assert done.returncode == 2 and "fox.mp4' exists; pass --overwrite" in done.stderr
  assert (tmp_path / "fox.mp4").read_bytes() == b"the user's video"
  # --prompts_file: every output is checked before the first video is made.
  (tmp_path / "prompts.txt").write_text("a fox\na storm\n")
  (tmp_path / "fox_001.mp4").write_bytes(b"another video")
  done = run_sample(f"--prompts_file={tmp_path}/prompts.txt", f"--output={tmp_path}/fox.mp4", timeout=120)
  assert done.returncode == 2 and "fox_001.mp4' exists" in done.stderr
  assert not (tmp_path / "fox_000.mp4").exists()


class _InterruptedPipe:
  """Stands in for the pipeline: Ctrl-C arrives while the first chunk is being made."""

  def chunk_start_frame(self, index):
    return 0 if index == 0 else 9 + 12 * (index - 1)

  def chunks_for(self, num_frames):
    return 3

  def frames(self, *args, **kwargs):
    raise KeyboardInterrupt
    yield


def test_interrupt_before_the_first_frame_writes_no_file(tmp_path):
  from hybrid_forcing_jax import sample
  out = tmp_path / "fox.mp4"
  out.write_bytes(b"the user's video")
  summary = sample.generate(_InterruptedPipe(), str(out), [(0.0, "a fox")], 30, 64, 64, overwrite=True)
  assert summary["interrupted"] and summary["frames"] == 0
  assert out.read_bytes() == b"the user's video"
  assert sample.summary_line(summary, 64, 64) == f"interrupted before the first frame of {out}: no file written"


class _SwallowedInterruptPipe(_InterruptedPipe):
  """Ctrl-C arrived while the model loaded, and its KeyboardInterrupt was lost in a garbage-collector
  callback (seen under load: JAX's _xla_gc_callback): the chunks come as if nothing happened."""

  def frames(self, *args, **kwargs):
    yield 0, np.zeros((9, 64, 64, 3), np.uint8)


def test_a_swallowed_interrupt_still_stops_before_the_first_frame(tmp_path, monkeypatch):
  from hybrid_forcing_jax import cli, sample
  monkeypatch.setattr(cli, "_interrupt_requested", False)
  try:
    cli._on_sigint(signal.SIGINT, None)
  except KeyboardInterrupt:
    pass   # swallowed, as in a gc callback
  out = tmp_path / "fox.mp4"
  summary = sample.generate(_SwallowedInterruptPipe(), str(out), [(0.0, "a fox")], 30, 64, 64)
  assert summary["interrupted"] and summary["frames"] == 0 and not out.exists()


def test_ctrl_c_in_the_first_seconds_exits_130_without_traceback(tmp_path):
  """Ctrl-C while JAX starts and the model is built (before the first frame: no file, one line)."""
  out = tmp_path / "fox.mp4"
  process = subprocess.Popen(
      [sys.executable, "-m", "hybrid_forcing_jax.sample", f"--output={out}", f"--compilation_cache_dir={tmp_path}/c"],
      stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  time.sleep(2)
  process.send_signal(signal.SIGINT)
  _, stderr = process.communicate(timeout=120)
  assert process.returncode == 130, stderr
  assert "interrupted" in stderr and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
  assert not out.exists()


def test_wrong_checkpoint_folder(tmp_path):
  for name in ("dit", "vae", "t5", "tok"):
    (tmp_path / name).mkdir()
  done = run_sample(f"--dit={tmp_path}/dit", f"--vae={tmp_path}/vae", f"--text_encoder={tmp_path}/t5",
                    f"--tokenizer={tmp_path}/tok", timeout=300)
  assert done.returncode == 2
  assert "cannot load the model" in done.stderr and "not a converted checkpoint folder" in done.stderr


def test_prompt_schedule_switches_at_the_chunk_holding_that_time(tiny_wan_model):
  from hybrid_forcing_jax import sample
  from hybrid_forcing_jax.pipeline import from_checkpoints
  pipe = from_checkpoints(hybrid_stream(), **tiny_wan_model)
  # chunk 0 = frames [0, 9), chunk 1 = [9, 21), chunk 2 = [21, 33) at 16 fps
  assert [pipe.chunk_start_frame(i) for i in range(4)] == [0, 9, 21, 33]
  schedule = sample.parse_schedule("0:a calm sea; 1.0:a storm;2.0:night")
  assert [(sample._chunk_at(pipe, s), p) for s, p in schedule] == [(0, "a calm sea"), (2, "a storm"), (3, "night")]
  assert pipe.chunks_for(30) == 3 and pipe.chunks_for(9) == 1 and pipe.chunks_for(10) == 2

  # The video itself: the same frames as the unswitched stream up to the switch, different from there.
  def video(schedule):
    return [f for _, f in pipe.frames(schedule, height=64, width=64, seed=0, num_chunks=3)]
  calm, switched = video([(0, "a blue square bouncing")]), video([(0, "a blue square bouncing"), (2, "a red circle")])
  assert all(np.array_equal(a, b) for a, b in zip(calm[:2], switched[:2]))
  assert not np.array_equal(calm[2], switched[2])


MEMORY_PROBE = """
import json, resource, sys
from hybrid_forcing_jax import sample
from configs import hybrid
from hybrid_forcing_jax.pipeline import from_checkpoints
from hybrid_forcing_jax.streaming.config import from_config
pipe = from_checkpoints(from_config(hybrid.get_config().stream), **json.loads(sys.argv[2]))
out = {}
for chunks in (20, 200):
  frames = pipe.video_frames_of_chunk(0) + (chunks - 1) * pipe.video_frames_of_chunk(1)
  summary = sample.generate(pipe, f"{sys.argv[1]}/v{chunks}.mp4", [(0.0, "a blue square")], frames, 128, 128)
  out[chunks] = dict(frames=summary["frames"], peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def test_pieces_of_one_latent_frame_give_the_same_video_first_frame_first(tiny_wan_model):
  """vae_frames_per_call=1: the pipeline yields each latent frame's frames as it is decoded (the video's first
  frame alone first, issue 14's first-frame latency), and they make the same video as whole chunks."""
  from hybrid_forcing_jax.pipeline import from_checkpoints
  whole = from_checkpoints(hybrid_stream(), **tiny_wan_model)
  pieces = from_checkpoints(hybrid_stream(), vae_frames_per_call=1, **tiny_wan_model)

  def items(pipe):
    return list(pipe.frames([(0, "a blue square bouncing")], height=64, width=64, seed=0, num_chunks=2))

  a, b = items(whole), items(pieces)
  assert [(i, len(f)) for i, f in a] == [(0, 9), (1, 12)]
  assert [(i, len(f)) for i, f in b] == [(0, 1), (0, 4), (0, 4), (1, 4), (1, 4), (1, 4)]
  video_a, video_b = (np.concatenate([f for _, f in x]).astype(int) for x in (a, b))
  # The same video up to bfloat16 rounding (the VAE runs in bfloat16 here: convolutions over 1 latent frame
  # round differently from those over 3; in float32 pieces equal one call, tests/test_vae_streaming.py).
  diff = np.abs(video_a - video_b)
  assert video_a.shape == video_b.shape and diff.max() <= 16 and diff.mean() < 1.0


def test_first_frames_leave_before_the_cache_write_and_the_later_pieces(tiny_wan_model, monkeypatch):
  """The video's first piece is yielded before the chunk's cache write is called (or, on a cold start, compiled)
  and before the chunk's later pieces are decoded: a cold start's first frame waits for none of their programs."""
  from hybrid_forcing_jax import pipeline
  from hybrid_forcing_jax.streaming import sampler
  calls = []
  phases = sampler.jitted_phases

  def recorded_phases(dit, stream):
    denoise, write = phases(dit, stream)
    return denoise, lambda *a: (calls.append("write"), write(*a))[1]

  monkeypatch.setattr(sampler, "jitted_phases", recorded_phases)
  pipe = pipeline.from_checkpoints(hybrid_stream(), vae_frames_per_call=1, **tiny_wan_model)
  decode_pieces = pipe.vae.decode_pieces

  def recorded_pieces(*a):
    for piece in decode_pieces(*a):
      calls.append("piece")
      yield piece

  monkeypatch.setattr(pipe.vae, "decode_pieces", recorded_pieces)
  stream = pipe.frames([(0, "a blue square bouncing")], height=64, width=64, seed=0)
  index, first = next(stream)
  assert (index, len(first), calls) == (0, 1, ["piece"])
  assert [(i, len(f)) for i, f in itertools.islice(stream, 3)] == [(0, 4), (0, 4), (1, 4)]
  assert calls[:4] == ["piece", "piece", "piece", "write"]


def test_precompiled_programs_are_the_ones_the_stream_runs(tiny_wan_model, monkeypatch):
  """from_checkpoints(precompile_size=...) compiles `start` and `denoise` from shapes on a background thread; the
  stream then runs those programs: it neither compiles nor traces and lowers them again (jax's compile log names
  each compilation and lowering) and makes the same frames."""
  import logging
  from hybrid_forcing_jax.pipeline import from_checkpoints
  from hybrid_forcing_jax.streaming import sampler
  compiled, lowered = [], []

  class Log(logging.Handler):
    def emit(self, record):
      message = record.getMessage()
      if message.startswith("Finished XLA compilation of jit("):
        compiled.append(message.split("(")[1].split(")")[0])
      if message.startswith("Finished jaxpr to MLIR module conversion jit("):
        lowered.append(message.split("(")[1].split(")")[0])

  # A stream of its own (sparse_ratio 0.5): programs no other test has compiled in this process.
  stream = dataclasses.replace(hybrid_stream(), sparse_ratio=0.5)
  traces = []   # denoise_chunk runs in Python once per trace of `denoise`
  denoise_chunk = sampler.denoise_chunk
  monkeypatch.setattr(sampler, "denoise_chunk", lambda *a, **k: traces.append(1) or denoise_chunk(*a, **k))
  handler, logger = Log(), logging.getLogger("jax")
  logger.addHandler(handler)
  jax.config.update("jax_log_compiles", True)   # globally: jax.log_compiles() would not reach the background thread
  try:
    pipe = from_checkpoints(stream, precompile_size=(64, 64), **tiny_wan_model)
    assert set(pipe.precompiled) == {"start", "denoise"}
    first = list(pipe.frames([(0, "a blue square bouncing")], height=64, width=64, seed=0, num_chunks=2))
  finally:
    jax.config.update("jax_log_compiles", False)
    logger.removeHandler(handler)
  assert compiled.count("_start") == 1 and compiled.count("denoise") == 1, compiled   # compiled once, not again
  assert lowered.count("_start") == 1 and lowered.count("denoise") == 1, lowered     # nor lowered
  # nor traced (jitted_phases is one jit object per model and stream, whose lowering the precompile filled): the
  # first frame waits for no second trace of the 30-layer DiT
  assert len(traces) == 1
  assert pipe.precompiled == {}   # each waited for once
  again = list(from_checkpoints(stream, **tiny_wan_model).frames([(0, "a blue square bouncing")], height=64,
                                                                  width=64, seed=0, num_chunks=2))
  assert all(i == j and np.array_equal(a, b) for (i, a), (j, b) in zip(first, again)) and len(first) == 2


def test_sample_writes_pieces_and_counts_chunks(tiny_wan_model, tmp_path, capsys):
  """sample's writer loop on a pipeline that yields pieces: every frame in the MP4, a prompt switch said once."""
  from hybrid_forcing_jax import sample
  from hybrid_forcing_jax.pipeline import from_checkpoints
  pipe = from_checkpoints(hybrid_stream(), vae_frames_per_call=1, **tiny_wan_model)
  out = tmp_path / "pieces.mp4"
  summary = sample.generate(pipe, str(out), [(0.0, "a blue square bouncing"), (0.5, "a red circle")], 21, 64, 64)
  assert summary["frames"] == 21 and not summary["interrupted"]
  assert imageio.get_reader(str(out)).count_frames() == 21
  assert capsys.readouterr().err.count("prompt switch at 0.56 s of video: 'a red circle'") == 1


def test_memory_stays_flat_over_200_chunks(tmp_path, tiny_wan_model):
  """The process's peak memory after a 200-chunk video (2397 frames, 113 MiB of uint8 pixels at 128x128) is
  that of a 20-chunk one: frames go to the MP4 as they are made and nothing accumulates per chunk."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(tmp_path), json.dumps(tiny_wan_model)],
                        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
  assert done.returncode == 0, done.stderr[-2000:]
  runs = json.loads(done.stdout.strip().splitlines()[-1])
  assert runs["20"]["frames"] == 9 + 19 * 12 and runs["200"]["frames"] == 9 + 199 * 12
  assert imageio.get_reader(str(tmp_path / "v200.mp4")).count_frames() == runs["200"]["frames"]
  growth = runs["200"]["peak_mib"] - runs["20"]["peak_mib"]
  # Keeping the extra 180 chunks' frames would add about 100 MiB; flat runs measured +11.5 and +18.8 MiB
  # (the allocator settles over the first ~100 chunks, then the peak stays put).
  assert growth < 50, runs


def test_sample_precompiles_by_default_on_accelerators_only(monkeypatch):
  """Not told, `sample` precompiles where it was measured to pay (a GPU host) and not on a CPU, where it was
  measured to delay the first frame; --precompile / --noprecompile override either way."""
  from hybrid_forcing_jax import pipeline
  for backend, expected in (("cpu", False), ("gpu", True), ("tpu", True)):
    monkeypatch.setattr(pipeline.jax, "default_backend", lambda b=backend: b)
    assert pipeline.precompile_by_default() is expected, backend
