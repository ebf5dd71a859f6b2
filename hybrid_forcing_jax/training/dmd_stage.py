"""The DMD stage in the trainer (issue 11; training_spec.md 2-3): what `configs/self_forcing.py` (phase 1)
and `configs/hybrid.py` (phase 2) run.

Two updates per the loop's step s (stages.Update): a generator update when s % dmd.generator_every == 0
(first, as Self-Forcing), then a critic update, each on a batch of its own, so a step counts critic
updates (steps.make_dmd_steps: each differentiates its own network, the other one and the teacher frozen).

Built here from the config: the frozen teacher (loaded at every start from `teacher.checkpoint`, never
checkpointed; sharded over the mesh's fsdp axis by sharding.py's rules, so a 14B teacher is split when
fsdp > 1), the critic (from `critic.checkpoint`, the base model; float32 masters with their own AdamW at
`dmd.critic_lr`, the rest of `optim` shared), the VAE of the long-rollout rule (only when rollouts pass
the loss window), and the datasets: prompts for both, or for the generator in the regulariser's
"records" mode, make_teacher_rollouts' records with each example's noise key and teacher latents.
"""
from __future__ import annotations

import dataclasses
import functools

import grain
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from hybrid_forcing_jax import dit, vae as wan_vae
from hybrid_forcing_jax.checkpoint import read_meta
from hybrid_forcing_jax.latent_codec import load_latent_codec
from hybrid_forcing_jax.training import builders, optim, sharding, steps
from hybrid_forcing_jax.training.config import ConfigError, RunConfig
from hybrid_forcing_jax.training.data import teacher_rollouts
from hybrid_forcing_jax.training.data.prompts import PromptEmbeddings, negative_context, prompt_dataset, read_prompts
from hybrid_forcing_jax.training.dmd_setup import DmdSetup
from hybrid_forcing_jax.training.losses.critic_step import critic_loss
from hybrid_forcing_jax.training.losses.generator import generator_loss
from hybrid_forcing_jax.training.stages import Stage, Update

GENERATOR, CRITIC = "generator", "critic"


def check_inputs(run: RunConfig) -> None:
  """Refuse missing checkpoints and records made for another setting, before the run writes anything."""
  folders = [("model.checkpoint", run.model.checkpoint), ("teacher.checkpoint", run.teacher.checkpoint),
             ("critic.checkpoint", run.critic.checkpoint)]
  if needs_vae(run) and run.dmd.vae:
    folders.append(("dmd.vae", run.dmd.vae))
  for key, folder in folders:
    if folder:
      try:
        read_meta(folder)
      except (OSError, ValueError) as e:
        raise ConfigError(f"config.{key}: {e}") from None
  if uses_records(run):
    try:
      teacher_rollouts.check_folder(run, read_prompts(run.data.prompts))
    except (OSError, ValueError) as e:
      raise ConfigError(f"config.regulariser.records: {e}") from None


def needs_vae(run: RunConfig) -> bool:
  """Rollouts longer than the loss window re-encode the window's first frame (the long-rollout rule)."""
  return run.dmd.max_frames > run.data.num_frames


def uses_records(run: RunConfig) -> bool:
  return run.regulariser.weight > 0 and run.regulariser.source == "records"


def build(run: RunConfig, model: dit.WanDiT, optimizer) -> Stage:
  embeddings = PromptEmbeddings(read_prompts(run.data.prompts), run.text, progress=True)
  teacher, teacher_params = builders.build_dit(run.teacher)
  critic, critic_params = builders.build_dit(run.critic, seed=run.train.seed + 1, param_dtype=jnp.float32)
  for name, net in (("model", model), ("teacher", teacher), ("critic", critic)):
    if net.config.text_dim != embeddings.dim or net.config.in_dim != model.config.in_dim:
      raise ConfigError(f"config.{name}: text_dim {net.config.text_dim} / in_dim {net.config.in_dim} do not fit "
                        f"the text encoder's {embeddings.dim}-dim embeddings and the generator's latents")
  vae, vae_params = build_vae(run, model.config.in_dim) if needs_vae(run) else (None, None)
  setup = dmd_setup(run, model, teacher, critic, vae)
  frozen = {"teacher": teacher_params, "negative_context": negative_context(run)[None]}
  if vae is not None:
    frozen["vae"] = vae_params
  critic_optimizer = optim.make_optimizer(dataclasses.replace(run.optim, lr=run.dmd.critic_lr))
  generator_step, critic_step = steps.make_dmd_steps(
      functools.partial(generator_loss, setup=setup), functools.partial(critic_loss, setup=setup), optimizer,
      critic_optimizer, ema_decay=run.optim.ema_decay, ema_start=run.optim.ema_start,
      generator_dtype=_compute_dtypes(model), critic_dtype=_compute_dtypes(critic))
  # The critic's prompts in an order of their own (another seed), so the two updates see different batches.
  critic_run = dataclasses.replace(run, data=dataclasses.replace(run.data, seed=run.data.seed + 1))
  return Stage(
      updates=(Update(GENERATOR, generator_dataset(run, embeddings), generator_step, every=run.dmd.generator_every),
               Update(CRITIC, prompt_dataset(critic_run, embeddings=embeddings), critic_step)),
      frozen=frozen, frozen_shardings=functools.partial(frozen_shardings, frozen=frozen),
      critic=critic_params, critic_optimizer=critic_optimizer)


def dmd_setup(run: RunConfig, model, teacher, critic, vae) -> DmdSetup:
  m, r, chunk = run.dmd, run.regulariser, run.stream.chunk_frames
  return DmdSetup(
      generator=model, teacher=teacher, critic=critic, stream=run.stream, latent_hw=tuple(run.data.latent_hw),
      min_chunks=m.min_frames // chunk, max_chunks=m.max_frames // chunk, loss_frames=run.data.num_frames, vae=vae,
      context_noise=m.context_noise, guidance=m.guidance, shift=run.stream.shift, t_min=m.t_min, t_max=m.t_max,
      regulariser_weight=r.weight, regulariser_source=r.source, regulariser_steps=r.num_steps,
      regulariser_shift=r.shift, regulariser_guidance=r.guidance)


def build_vae(run: RunConfig, channels: int):
  """-> (codec, params): the codec folder of `dmd.vae` (a converted Wan VAE or the world's pixel codec:
  latent_codec.load_latent_codec), or "" = a tiny random VAE (tests)."""
  if run.dmd.vae:
    codec, params = load_latent_codec(run.dmd.vae)
    if codec.config.z_dim != channels:
      raise ConfigError(f"config.dmd.vae: {run.dmd.vae!r} has {codec.config.z_dim} latent channels, the generator "
                        f"{channels}")
    return codec, params
  return random_tiny_vae(channels, seed=run.train.seed)


def random_tiny_vae(channels: int, seed: int):
  """-> (WanVAE, params): a float32 tiny VAE with random weights for `channels` latent channels
  (identity latent normalisation)."""
  config = wan_vae.tiny_vae_config(z_dim=channels, latents_mean=(0.0,) * channels, latents_std=(1.0,) * channels)
  return (wan_vae.WanVAE(config, dtype=jnp.float32),
          wan_vae.init_params(config, seed=seed, param_dtype=jnp.float32))


def frozen_shardings(mesh, *, frozen: dict) -> dict:
  """The teacher by sharding.py's rule table (split over fsdp), everything else (the negative prompt,
  the VAE) replicated."""
  replicated = NamedSharding(mesh, P())
  return {name: sharding.param_shardings(mesh, value) if name == "teacher"
          else jax.tree.map(lambda _: replicated, value) for name, value in frozen.items()}


def _compute_dtypes(net: dit.WanDiT):
  """The network's storage dtypes: bf16 matmul weights, float32 norms / modulation (optim.cast_for_compute)."""
  return dit.param_shapes(net.config, net.param_dtype)


def generator_dataset(run: RunConfig, embeddings: PromptEmbeddings) -> grain.MapDataset:
  if uses_records(run):
    return teacher_rollouts.dataset(run, embeddings)
  return prompt_dataset(run, embeddings=embeddings)
