#!/usr/bin/env bash
# The world pipeline end to end with the project's own commands (issue 12; docs/training.md, "The world
# pipeline"): world assets -> teacher (flow matching) -> ODE pairs -> ODE init -> DMD phase 1 (dense)
# -> DMD phase 2 (hybrid) -> export (the phase-2 EMA student with its text encoder and codec).
#
#   scripts/world_pipeline.sh                    # the GPU run: data/world, runs/world
#   scripts/world_pipeline.sh --tiny --data=/tmp/world/data --runs=/tmp/world/runs   # CPU, tiny models
#   scripts/world_pipeline.sh --layout=frame     # one video frame a latent frame: data/world_frame, runs/world_frame
#   scripts/world_pipeline.sh --layout=frame4    # the same with the DiTs' 4x4 patches: data/world_frame4, runs/world_frame4
#   scripts/world_pipeline.sh --teacher=FOLDER   # an existing teacher export instead of the teacher step
#   scripts/world_pipeline.sh --steps=ode_init=600,hybrid=400   # a stage's train.steps instead of its config's
#   scripts/world_pipeline.sh --long_memory_fraction=0.3 --data=data/world_memory   # prompts with long-memory captions
#   scripts/world_pipeline.sh --until=ode_init   # stop after that step (prepare, teacher, ode_pairs, ode_init,
#                                                # self_forcing, hybrid, export): run later steps as soon as it is done
#
# Every step resumes: run the same command again after an interruption and each finished step returns
# quickly (train continues from its last checkpoint, make_ode_pairs skips finished shards, world.prepare
# keeps what exists). Any --config.* flag is passed to every train command (e.g. --config.train.log_every=10).
set -euo pipefail

size="" layout="" data="" runs="" teacher="" num_prompts=1000 memory=0 until="" extra=()
declare -A steps=()
for arg in "$@"; do
  case "$arg" in
    --tiny) size="tiny" num_prompts=8 ;;
    --layout=*) layout="${arg#--layout=}" ;;
    --data=*) data="${arg#--data=}" ;;
    --runs=*) runs="${arg#--runs=}" ;;
    --teacher=*) teacher="${arg#--teacher=}" ;;
    --long_memory_fraction=*) memory="${arg#--long_memory_fraction=}" ;;
    --until=*)
      until="${arg#--until=}"
      [[ " prepare teacher ode_pairs ode_init self_forcing hybrid export " == *" $until "* ]] || {
        echo "world_pipeline.sh: error: --until: '$until' is not a step; steps: prepare, teacher, ode_pairs," \
             "ode_init, self_forcing, hybrid, export" >&2; exit 2; } ;;
    --steps=*)
      IFS=, read -r -a pairs <<< "${arg#--steps=}"
      for pair in "${pairs[@]}"; do
        stage=${pair%%=*} n=${pair#*=}
        [[ " teacher ode_init self_forcing hybrid " == *" $stage "* && "$n" =~ ^[1-9][0-9]*$ ]] || {
          echo "world_pipeline.sh: error: --steps: '$pair' is not STAGE=N with STAGE one of teacher, ode_init," \
               "self_forcing, hybrid and N a positive integer" >&2; exit 2; }
        steps[$stage]=$n
      done ;;
    --help|-h) sed -n '2,18p' "$0"; exit 0 ;;
    --config.*) extra+=("$arg") ;;
    *) echo "world_pipeline.sh: error: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
SCRIPT=world_pipeline.sh STOP_AFTER=$until
# shellcheck source=scripts/world_lib.sh
source "$(dirname "$0")/world_lib.sh"
found=$(world_variant "$size" "$layout") || exit 2
read -r variant default_data default_runs temporal_factor <<< "$found"
[[ "$variant" == - ]] && variant="" || variant=":$variant"
data=${data:-$default_data} runs=${runs:-$default_runs}
[[ -z "$teacher" || -f "$teacher/config.json" ]] ||
  { echo "world_pipeline.sh: error: --teacher=$teacher has no config.json (not an exported model folder)" >&2; exit 2; }

text=(--config.text.encoder="$data/text/text_encoder" --config.text.tokenizer="$data/text/tokenizer"
      --config.text.cache_dir="$data/text_cache")
prompts=(--config.data.prompts="$data/prompts.txt")

train() {  # train STAGE_CONFIG WORKDIR OVERRIDES...
  local limit=()
  [[ -n "${steps[$1]:-}" ]] && limit=(--config.train.steps="${steps[$1]}")
  python -m hybrid_forcing_jax.train --config="configs/world/$1.py$variant" --workdir="$2" "${text[@]}" \
    "${@:3}" "${limit[@]}" "${extra[@]}"
}

step prepare python -m hybrid_forcing_jax.world.prepare --output="$data" --num_prompts="$num_prompts" \
  --temporal_factor="$temporal_factor" --long_memory_fraction="$memory"

adopt_teacher() {  # --teacher: its export becomes the teacher run's (the later steps and world_ablation.sh read it there)
  [[ -n "$(latest_export "$runs/teacher")" ]] && return
  mkdir -p "$runs/teacher/export"
  cp -r "$teacher" "$runs/teacher/export/$(basename "$teacher")"
}
if [[ -n "$teacher" ]]; then
  step teacher adopt_teacher
else
  step teacher train teacher "$runs/teacher" --config.data.codec="$data/codec"
fi
teacher=$(require_export "$runs/teacher")

step ode_pairs python -m hybrid_forcing_jax.make_ode_pairs --config="configs/world/ode_init.py$variant" "${text[@]}" \
  "${prompts[@]}" --config.ode_pairs.output_dir="$data/ode_pairs" --config.teacher.checkpoint="$teacher"

step ode_init train ode_init "$runs/ode_init" "${prompts[@]}" --config.ode_pairs.output_dir="$data/ode_pairs" \
  --config.model.checkpoint="$teacher" --config.teacher.checkpoint="$teacher"

dmd=("${prompts[@]}" --config.teacher.checkpoint="$teacher" --config.critic.checkpoint="$teacher"
     --config.dmd.vae="$data/codec")
ode_init=$(require_export "$runs/ode_init")
step self_forcing train self_forcing "$runs/self_forcing" "${dmd[@]}" --config.model.checkpoint="$ode_init"

self_forcing=$(require_export "$runs/self_forcing")
step hybrid train hybrid "$runs/hybrid" "${dmd[@]}" --config.model.checkpoint="$self_forcing"
student=$(require_export "$runs/hybrid")

export_model() {  # the shipped layout: the student, its text encoder + tokenizer and its codec side by side
  rm -rf "$1.tmp"
  mkdir -p "$1.tmp"
  cp -r "$student" "$1.tmp/dit"
  cp -r "$data/text" "$1.tmp/text"
  cp -r "$data/codec" "$1.tmp/codec"
  rm -rf "$1"
  mv "$1.tmp" "$1"
}
model="$runs/model"
step export export_model "$model"
read -r width height < <(python -c "from configs.world import common; w = common.world('${variant#:}'); print(w.width, w.height)")
echo "== world_pipeline: the student is in $model; stream it with
  python -m hybrid_forcing_jax.sample --config=configs/world/hybrid.py$variant --dit=$model/dit --vae=$model/codec \\
    --text_encoder=$model/text/text_encoder --tokenizer=$model/text/tokenizer --width=$width --height=$height \\
    --prompt=\"a blue square bouncing\" --seconds=10 --output=world.mp4"
