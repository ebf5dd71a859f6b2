"""What the world pipeline's configs share: the world's DiT, its text encoder and codec folders
(written by `python -m hybrid_forcing_jax.world.prepare --output=data/world`), the latent layouts and geometry
of its videos, and the variants: `tiny` (a smaller world and DiT for the CPU) and a layout (`frame`, `frame4`),
comma-separated (configs/world/teacher.py:tiny,frame). configs/world/{ode_init,self_forcing,hybrid}.py are
the top-level configs of the same name with `apply_world` on top; configs/world/teacher.py is the
flow_matching stage's.
"""
import dataclasses
from typing import NamedTuple

import ml_collections

from hybrid_forcing_jax.world.codec import PixelCodecConfig
from hybrid_forcing_jax.world.scene import WorldConfig
from hybrid_forcing_jax.world.text import TEXT_LEN, world_tokenizer, world_umt5_config

DATA = "data/world"   # world.prepare's output: text/, codec/, prompts.txt; ODE pairs and the text cache
RUNS = "runs/world"   # the stages' workdirs: runs/world/<stage>
TEACHER_STEPS = 10000   # configs/world/teacher.py's train.steps: the export the later stages start from


class Layout(NamedTuple):
  """How a world video becomes the DiT's tokens: the codec's video frames a latent frame, the video length that
  makes 21 latent frames of it, the long-memory timing (seen from, to, back at; in video frames) and the DiT's
  patch (frames, latent pixels, latent pixels)."""
  temporal_factor: int
  frames: int
  long_memory: tuple[int, int, int]
  patch: tuple[int, int, int] = (1, 2, 2)


# The layouts by variant keyword. "" (the default; the shipped model v0's): 4 video frames a latent frame, 81 frames
# (5 s). "frame" (the shipped model v1's): one video frame a latent frame, 21 frames (1.3 s), so that motion lies
# between tokens instead of inside a token's channels; its teacher is the first to draw the caption's shape
# (docs/world.md, "Layout and learning rate, side by side"). The same 5376 tokens a video either way.
# "frame4": "frame" with 4x4 patches, 1344 tokens a video: its teacher, trained from scratch, reached the best
# scores yet with almost no jumps in 20 minutes of one H200 (tf1b: ~34; docs/world.md, "The frame-layout chain"),
# and its students stream ~3x faster on a CPU.
# Long memory in 21 frames under sink 3 + window 9: seen from frame 3 (after the sink) to 14, back at 18, when the
# window holds frames 15-20 only (scene.long_memory_fits); the crossing takes 12 frames (~6.5 px a frame at 64x64).
LAYOUTS = {"": Layout(4, 81, (12, 32, 68)), "frame": Layout(1, 21, (3, 15, 18)),
           "frame4": Layout(1, 21, (3, 15, 18), patch=(1, 4, 4))}

# One architecture for the teacher, the student and the critic (Self-Forcing with the 1.3B as its own
# teacher does the same): width 256 carries the 192 values a token holds (world/codec.py), head_dim 64,
# 8 layers: 9.1M parameters (18 MB in bf16), trained in minutes on one GPU, streamed on a CPU.
# It predicts x0 (WanConfig.prediction): trained side by side from scratch on two H200s, the velocity-predicting
# one still scattered single-pixel noise over every frame after 2500 steps where the x0 one drew clean
# backgrounds, and at 4000 steps solid objects of the caption's colour (docs/world.md, "The x0-predicting teacher").
# The patch is the layout's (set_dit).
WORLD_DIT = dict(dim=256, ffn_dim=1024, num_heads=4, num_layers=8, prediction="x0")
# `:tiny`: the tiny preset's 2 layers, but 192 wide, so the 192 values of a token (the noise included)
# still pass through: at tiny's 48 the flow-matching loss cannot fall far (it must return eps - x0). It keeps
# predicting the velocity, which the CPU tests' step sizes are set for (the x0 path has tests of its own:
# test_dit_modes, test_train_flow_matching).
TINY_WORLD_DIT = dict(dim=192, ffn_dim=384, num_heads=4, prediction="velocity")
# The top-level LRs are for fine-tuning the 1.3B (width 1536) over hundreds of GPU-hours; a 6x narrower net
# distilled in minutes takes larger steps. A starting point for the GPU runs, not a tuned value.
LR_SCALE = 25.0
# A world stage runs minutes, not days: export often (a run stopped by its time budget leaves a recent
# student for the next stage) and let DMD's EMA follow its ~100 generator updates (Self-Forcing's 0.99
# from step 200 would still be mostly the starting weights).
EXPORT_EVERY = {"ode_init": 200, "dmd": 100}
# The world teacher's CFG when it is sampled (ODE pairs, evaluate_world --teacher): Wan's 6 is too strong for
# this small model, whose samples at 6 are covered in saturated stray blocks (docs/world.md, "Teacher4 and the
# teacher's CFG"); 3 keeps the caption's colour (1.0 on 16 videos) with few stray blocks, as DMD's real score is
# guided at about that scale.
TEACHER_CFG = 3.0
DMD_EMA = dict(ema_decay=0.95, ema_start=0)


def parse_variant(variant: str) -> tuple[str, str]:
  """A world config's variant, comma-separated keywords -> (size: '' or 'tiny', layout: a key of LAYOUTS):
  '' -> ('', ''), 'tiny' -> ('tiny', ''), 'frame' -> ('', 'frame'), 'tiny,frame' -> ('tiny', 'frame')."""
  parts = [p for p in variant.split(",") if p]
  size = "tiny" if "tiny" in parts else ""
  layouts = [p for p in parts if p != "tiny"]
  if len(layouts) > 1 or (layouts and layouts[0] not in LAYOUTS) or len(parts) != len(layouts) + bool(size):
    raise ValueError(f"configs/world: variant {variant!r}: use comma-separated keywords, 'tiny' and at most one "
                     f"layout of {[k for k in LAYOUTS if k]} (e.g. 'frame' or 'tiny,frame')")
  return size, (layouts[0] if layouts else "")


def data_folder(variant: str) -> str:
  """world.prepare's output for the variant's layout: DATA, or DATA_<layout> (its own codec and ODE pairs)."""
  return _of_layout(DATA, variant)


def runs_folder(variant: str) -> str:
  """The stages' workdirs for the variant's layout: RUNS, or RUNS_<layout>."""
  return _of_layout(RUNS, variant)


def _of_layout(folder: str, variant: str) -> str:
  layout = parse_variant(variant)[1]
  return f"{folder}_{layout}" if layout else folder


def codec(variant: str) -> PixelCodecConfig:
  """The variant's pixel codec (what world.prepare --temporal_factor writes)."""
  return PixelCodecConfig(temporal_factor=LAYOUTS[parse_variant(variant)[1]].temporal_factor)


def world(variant: str) -> WorldConfig:
  """The world's videos: 64x64 at the layout's length (81 frames, or 21 for 'frame': 21 latent frames either
  way); `tiny` 32x32, 6 latent frames (two chunks of 3) for the CPU."""
  size, layout = parse_variant(variant)
  if size == "tiny":   # 6 latent frames in every layout (21 video frames, or 6 with one a latent frame)
    if LAYOUTS[layout].temporal_factor == 1:
      return WorldConfig(height=32, width=32, num_frames=6, long_memory_frames=(1, 2, 4))
    return WorldConfig(height=32, width=32, num_frames=21, long_memory_frames=(4, 8, 16))
  return WorldConfig(num_frames=LAYOUTS[layout].frames, long_memory_frames=LAYOUTS[layout].long_memory)


def latent_geometry(variant: str) -> tuple[int, tuple[int, int]]:
  """-> (latent frames, (latent height, latent width)) of the variant's videos through its codec."""
  w, c = world(variant), codec(variant)
  return (1 + (w.num_frames - 1) // c.temporal_factor, (w.height // c.spatial_factor, w.width // c.spatial_factor))


def channels(variant: str) -> dict:
  """What the variant's layout fixes of the DiT: its input / output channels (the codec's), its patch and its text
  width (the world umT5's)."""
  z = codec(variant).z_dim
  return dict(in_dim=z, out_dim=z, patch_size=LAYOUTS[parse_variant(variant)[1]].patch,
              text_dim=world_umt5_config(world_tokenizer().vocab_size).dim)


def text(variant: str) -> ml_collections.ConfigDict:
  """The frozen world umT5 and its word tokenizer; CFG's unconditional branch is the empty prompt
  (the flow_matching stage drops captions to it)."""
  data = data_folder(variant)
  return ml_collections.ConfigDict(dict(
      encoder=f"{data}/text/text_encoder", tokenizer=f"{data}/text/tokenizer", text_len=TEXT_LEN,
      cache_dir=f"{data}/text_cache", negative_prompt=""))


def export(variant: str, stage: str, steps: int) -> str:
  """The final EMA export of a stage's run of the variant's layout (the trainer writes export/<step>)."""
  return f"{runs_folder(variant)}/{stage}/export/{steps:08d}"


def set_dit(section: ml_collections.ConfigDict, checkpoint: str, variant: str) -> None:
  """A `model`-shaped section -> the world's DiT for the variant's layout (its codec's channels): its overrides
  keep theirs (linear_proj); `tiny` keeps the tiny preset, random weights and float32 of the top-level
  `:tiny`, with TINY_WORLD_DIT's widths."""
  tiny = parse_variant(variant)[0] == "tiny"
  section.overrides = {**dict(section.overrides), **(TINY_WORLD_DIT if tiny else WORLD_DIT), **channels(variant)}
  if not tiny:
    section.update(dict(preset="wan_1_3b", checkpoint=checkpoint))


def apply_world(c: ml_collections.ConfigDict, variant: str, *, model: str) -> None:
  """A top-level config (ode_init / self_forcing / hybrid, already of the variant's size) -> its world version
  for the variant's size and layout: the generator starts from `model` (a converted folder), the teacher (and
  DMD's critic) from the world teacher's export; world text, prompts and latent geometry; DMD's long rollouts
  through the pixel codec; the LRs scaled by LR_SCALE."""
  data = data_folder(variant)
  teacher = export(variant, "teacher", TEACHER_STEPS)
  set_dit(c.model, model, variant)
  set_dit(c.teacher, teacher, variant)
  if "critic" in c:
    set_dit(c.critic, teacher, variant)
  c.text = text(variant)
  c.world = dataclasses.asdict(world(variant))   # the world it is distilled for: evaluate_world's default
  frames, hw = latent_geometry(variant)
  c.data.update(dict(prompts=f"{data}/prompts.txt", num_frames=frames, latent_hw=hw))
  if "ode_pairs" in c:
    c.ode_pairs.update(dict(output_dir=f"{data}/ode_pairs", guidance=TEACHER_CFG))
  if "dmd" in c:
    c.dmd.vae = f"{data}/codec"
  if parse_variant(variant)[0] != "tiny":
    c.optim.lr *= LR_SCALE
    c.train.update(dict(export_every=EXPORT_EVERY[c.stage], checkpoint_every=EXPORT_EVERY[c.stage], keep_every=0))
    # 9.1M parameters: activations fit without recomputation (the teacher's training step peaks at 48 GiB).
    for section in ("model", "critic"):
      if section in c:
        c[section].remat_policy = "none"
    if "dmd" in c:
      c.dmd.critic_lr *= LR_SCALE
      c.optim.update(DMD_EMA)
