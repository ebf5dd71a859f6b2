#!/usr/bin/env bash
# The world ablation (paper Table 3 in miniature) and the long-memory pair (issue 12; docs/world.md,
# "Ablation and long memory"): for each seed and row of configs/world/ablation.py, distil a student (DMD)
# from the main pipeline's exports and evaluate it (evaluate_world); evaluate the teacher, the ceiling,
# once per seed; then print the table (python -m hybrid_forcing_jax.world.report) into RUNS/ablation/table.md.
#
#   scripts/world_ablation.sh                    # the GPU run, after scripts/world_pipeline.sh
#   scripts/world_ablation.sh --layout=frame     # after scripts/world_pipeline.sh --layout=frame
#   scripts/world_ablation.sh --tiny --data=/tmp/world/data --runs=/tmp/world/runs --rows=window --seeds=0  # CPU
#
# --data, --runs: scripts/world_pipeline.sh's folders (its exports are read, RUNS/ablation is written; --out=FOLDER
# writes there instead, e.g. a variant of every row: --out=RUNS/ablation_dense --config.stream.sparse_ratio=1.0);
# --seeds=0,1; --rows=window,hybrid,... (default: all five); --num_videos=N per task and seed (default 48,
# --tiny 2); any --config.* flag goes to every train command and to the students' evaluation. Run it again
# to resume: training continues from its checkpoint, an evaluation of the current student is kept.
set -euo pipefail

size="" layout="" data="" runs="" out="" seeds=0,1 rows=window,hybrid,relative_rope,regulariser,decoupled
num_videos=48 eval_flags=() extra=()
for arg in "$@"; do
  case "$arg" in
    --tiny) size="tiny" num_videos=2 eval_flags=(--horizon_seconds=5) ;;
    --layout=*) layout="${arg#--layout=}" ;;
    --data=*) data="${arg#--data=}" ;;
    --runs=*) runs="${arg#--runs=}" ;;
    --out=*) out="${arg#--out=}"; [[ -n "$out" ]] || { echo "world_ablation.sh: error: --out= is empty" >&2; exit 2; } ;;
    --seeds=*) seeds="${arg#--seeds=}" ;;
    --rows=*) rows="${arg#--rows=}" ;;
    --num_videos=*) num_videos="${arg#--num_videos=}" ;;
    --help|-h) sed -n '2,15p' "$0"; exit 0 ;;
    --config.*) extra+=("$arg") ;;
    *) echo "world_ablation.sh: error: unknown argument $arg (see --help)" >&2; exit 2 ;;
  esac
done
bad() { echo "world_ablation.sh: error: $*" >&2; exit 2; }
IFS=, read -r -a seeds <<< "$seeds"
IFS=, read -r -a rows <<< "$rows"
for seed in "${seeds[@]}"; do [[ "$seed" =~ ^[0-9]+$ ]] || bad "--seeds: '$seed' is not a non-negative integer"; done
for row in "${rows[@]}"; do
  [[ " window hybrid relative_rope regulariser decoupled " == *" $row "* ]] ||
    bad "--rows: unknown row '$row'; rows: window, hybrid, relative_rope, regulariser, decoupled"
done
[[ "$num_videos" =~ ^[1-9][0-9]*$ ]] || bad "--num_videos=$num_videos must be a positive integer"

SCRIPT=world_ablation.sh
# shellcheck source=scripts/world_lib.sh
source "$(dirname "$0")/world_lib.sh"
found=$(world_variant "$size" "$layout") || exit 2
read -r world default_data default_runs _ <<< "$found"
# variant: the world configs' (":tiny,frame"); size: the same after an ablation row ("window,tiny,frame")
if [[ "$world" == - ]]; then variant="" size=""; else variant=":$world" size=",$world"; fi
data=${data:-$default_data} runs=${runs:-$default_runs}

first="run scripts/world_pipeline.sh first (same --tiny, --layout, --data, --runs)"
needs() {  # needs RUN: the newest export of the main pipeline's stage RUN, or refuse
  local found
  found=$(latest_export "$runs/$1")
  [[ -n "$found" ]] || bad "no export in $runs/$1/export: $first"
  echo "$found"
}

for path in text/text_encoder text/tokenizer codec prompts.txt; do
  [[ -e "$data/$path" ]] || bad "$data/$path is missing: $first"
done
teacher=$(needs teacher) ode_init="" self_forcing=""
for row in "${rows[@]}"; do   # where each row starts: decoupled from phase 1, the others from ODE init
  if [[ "$row" == decoupled ]]; then self_forcing=${self_forcing:-$(needs self_forcing)}
  else ode_init=${ode_init:-$(needs ode_init)}; fi
done

out=${out:-$runs/ablation}
dmd=(--config.text.encoder="$data/text/text_encoder" --config.text.tokenizer="$data/text/tokenizer"
     --config.text.cache_dir="$data/text_cache" --config.data.prompts="$data/prompts.txt"
     --config.teacher.checkpoint="$teacher" --config.critic.checkpoint="$teacher" --config.dmd.vae="$data/codec")
evaluate=(--world_config="configs/world/teacher.py$variant" --text="$data/text" --codec="$data/codec"
          --num_videos="$num_videos" "${eval_flags[@]}")

evaluated() {  # evaluated JSON DIT: JSON holds an evaluation of DIT with these settings
  [[ -f "$1" ]] && python -c "import json, sys; r = json.load(open(sys.argv[1]));
sys.exit(r['dit'] != sys.argv[2] or r['num_videos'] != int(sys.argv[3]))" "$1" "$2" "$num_videos"
}

students=() teachers=()
for seed in "${seeds[@]}"; do
  for row in "${rows[@]}"; do
    workdir="$out/seed$seed/$row"
    start=$([[ "$row" == decoupled ]] && echo "$self_forcing" || echo "$ode_init")
    step "seed $seed $row: train" python -m hybrid_forcing_jax.train --config="configs/world/ablation.py:$row$size" \
      --workdir="$workdir" "${dmd[@]}" --config.model.checkpoint="$start" --config.train.seed="$seed" \
      --config.data.seed="$seed" "${extra[@]}"
    student=$(latest_export "$workdir")
    [[ -n "$student" ]] || { echo "world_ablation.sh: error: the run left no export in $workdir/export" >&2; exit 1; }
    evaluated "$workdir.json" "$student" || step "seed $seed $row: evaluate" \
      python -m hybrid_forcing_jax.evaluate_world --config="configs/world/ablation.py:$row$size" "${extra[@]}" \
      --dit="$student" --name="$row" --seed="$seed" "${evaluate[@]}" --output_json="$workdir.json"
    students+=("$workdir.json")
  done
  json="$out/seed$seed/teacher.json"
  evaluated "$json" "$teacher" || step "seed $seed teacher: evaluate" python -m hybrid_forcing_jax.evaluate_world \
    --config="configs/world/ode_init.py$variant" --teacher --dit="$teacher" --name=teacher --ground_truth \
    --seed="$seed" "${evaluate[@]}" --output_json="$json"
  teachers+=("$json")
done

results=$(IFS=,; echo "${students[*]},${teachers[*]}")
python -m hybrid_forcing_jax.world.report --results="$results" | tee "$out/table.md"
echo "== world_ablation: the table is in $out/table.md"
