# Shell functions of scripts/world_pipeline.sh and scripts/world_ablation.sh (sourced; the caller sets SCRIPT,
# its name for messages, and may set STOP_AFTER, a step's name: the script exits 0 once that step is done).

step() {  # step NAME COMMAND...: run it, say how long it took
  local name="$1" start=$SECONDS
  shift
  echo "== $SCRIPT: $name: $*"
  "$@"
  echo "== $SCRIPT: $name done in $((SECONDS - start)) s"
  if [[ "$name" == "${STOP_AFTER:-}" ]]; then
    echo "== $SCRIPT: stopped after $name (--until)"
    exit 0
  fi
}

latest_export() {  # the newest EMA export of a run (the trainer writes export/<8-digit step>), or nothing
  local newest
  newest=$(ls -d "$1"/export/*/ 2>/dev/null | sort | tail -n 1)
  echo "${newest%/}"
}

require_export() {  # latest_export, or exit 1 naming the run
  local found
  found=$(latest_export "$1")
  [[ -n "$found" ]] || { echo "$SCRIPT: error: no export in $1/export" >&2; exit 1; }
  echo "$found"
}

world_variant() {  # world_variant SIZE LAYOUT -> one line "VARIANT DATA RUNS TEMPORAL_FACTOR": the configs/world
  # variant ("tiny,frame"; "-" for none), its default data and runs folders and its codec's temporal factor
  # (configs/world/common.py); an unknown layout fails, naming the choices
  local v
  v=$(IFS=,; parts=($1 $2); echo "${parts[*]}")
  python -c "import sys; from configs.world import common as c
v = '$v'
try: print(v or '-', c.data_folder(v), c.runs_folder(v), c.codec(v).temporal_factor)
except ValueError as e: sys.exit(f'$SCRIPT: error: {e}')"
}
