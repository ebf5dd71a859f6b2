"""What the DMD stage's two losses are built from (training/losses/generator.py, critic_step.py): the three
DiTs, the optional VAE of the long-rollout rule, the rollout and the timestep law, the regulariser.

The trainer builds one from the config (sections model / teacher / critic, stream, data, dmd, regulariser)
and binds it into both losses; the parameters themselves travel as the losses' arguments:
  generator_loss(gen_params, frozen, batch, rng)   frozen = {"teacher", "critic", "negative_context"[, "vae"]}
  critic_loss(critic_params, frozen, batch, rng)   frozen = {"generator", "negative_context"[, "vae"]}
negative_context: umT5 embeddings of the negative prompt, [1, Lt, text_dim]; vae: the VAE's parameters
(only when `vae` is set).
"""
from __future__ import annotations

import dataclasses

from hybrid_forcing_jax.dit import WanDiT
from hybrid_forcing_jax.streaming.config import StreamConfig
from hybrid_forcing_jax.vae import WanVAE
from hybrid_forcing_jax.world.codec import PixelCodec

REGULARISER_SOURCES = ("online", "records")


@dataclasses.dataclass(frozen=True, eq=False)
class DmdSetup:
  generator: WanDiT
  teacher: WanDiT
  critic: WanDiT
  stream: StreamConfig
  latent_hw: tuple[int, int]
  min_chunks: int              # rollout length, drawn per step (phase 1: 7..7, phase 2: 7..18)
  max_chunks: int
  loss_frames: int = 21        # the loss window: the last frames of the rollout
  vae: WanVAE | PixelCodec | None = None   # the long-rollout rule's codec (needed when max_chunks passes the window)
  context_noise: float = 0.0   # timestep of the cache writes
  guidance: float = 4.0        # DMD's real score, x0_u + g (x0_c - x0_u): 4.0 = Self-Forcing's "3.0"
  shift: float = 5.0           # DMD's / the critic's timestep law, clamped to [t_min, t_max]
  t_min: float = 20.0
  t_max: float = 980.0
  regulariser_weight: float = 0.0      # Eq. 9's weight (phase 2: 0.05); 0 = off, the teacher never rolls out
  regulariser_source: str = "online"   # "online": the teacher's rollout in the step; "records": batch
  regulariser_steps: int = 25          # teacher Euler steps (online)
  regulariser_shift: float = 5.0
  regulariser_guidance: float = 3.5    # the published code's (hard-coded) value, in the same form as guidance

  def __post_init__(self):
    object.__setattr__(self, "latent_hw", tuple(int(x) for x in self.latent_hw))
    window = self.loss_frames // self.stream.chunk_frames
    if self.loss_frames % self.stream.chunk_frames or not window <= self.min_chunks <= self.max_chunks:
      raise ValueError(f"DmdSetup: need loss_frames ({self.loss_frames}) a multiple of chunk_frames "
                       f"({self.stream.chunk_frames}) and {window} <= min_chunks ({self.min_chunks}) <= "
                       f"max_chunks ({self.max_chunks})")
    if self.max_chunks > window and self.vae is None:
      raise ValueError(f"DmdSetup: rollouts longer than the loss window ({self.max_chunks} > {window} chunks) "
                       "re-encode the window's first frame: set vae")
    if self.regulariser_source not in REGULARISER_SOURCES:
      raise ValueError(f"DmdSetup: regulariser_source {self.regulariser_source!r} is not one of "
                       f"{list(REGULARISER_SOURCES)}")
