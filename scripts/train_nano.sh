#!/usr/bin/env bash
# Train lion-nano stage-wise (stage 0, then stages 1 and 2 side by side, then stage 3) and evaluate
# the stage-3 model on the test and compositional splits.
#
#   bash scripts/train_nano.sh [--gpu | --from-stage0] [--baseline] [--eval-scenes N] [--ship]
#
# (no option)    stage 0 from scratch on the CPU (nano-stage0.yaml, with its own vocabularies).
# --gpu          the shipped model's recipe: its stage-0 lineage (nano-lineage.yaml: stage 0 on a CUDA
#                GPU, then restarts and a first pass of stages 1-3 on the CPU), then stages 1-3 into
#                runs/nano/pass2/.
# --from-stage0  re-run the shipped model's stages 1-3 (8.5 minutes on 2 CPU cores) from its stage-0
#                weights (lion_ros/assets/lion-nano with stage0.safetensors) into runs/nano/from-stage0/,
#                then compare the weights with the shipped ones: bit-identical on the CPU that trained
#                them; another CPU may round differently, so compare the metrics there.
# --baseline     also train the one-stage baseline (nano-one-stage.yaml) and evaluate it.
# --eval-scenes  scenes per evaluation split (default 200).
# --ship         copy the stage-3 model, its evaluation and its stage-0 overlay (scripts/stage0_overlay.py)
#                into lion_ros/assets/lion-nano.
# Logs: runs/nano/<run>.log; models: runs/nano/<run>/model. An interrupted run resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0
from_stage0=0
baseline=0
ship=0
eval_scenes=200
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpu) gpu=1 ;;
    --from-stage0) from_stage0=1 ;;
    --baseline) baseline=1 ;;
    --eval-scenes) eval_scenes="$2"; shift ;;
    --ship) ship=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;  # the header comment, whatever its length
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $from_stage0 == 1 && ( $gpu == 1 || $ship == 1 ) ]]; then
  echo "--from-stage0 re-runs the shipped stages: it does not combine with --gpu or --ship" >&2; exit 2
fi

bash scripts/bootstrap.sh
bin=.venv/bin
configs=lion_ros/configs/train
lineage=(--lineage "$configs/nano-lineage.yaml")
assets=lion_ros/assets/lion-nano
runs=runs/nano
mkdir -p "$runs"

pass=""  # where the final stages 1-3 write under runs/nano: pass2/ after the lineage, from-stage0/

stage() {  # stage NAME PROCESSES LION-TRAIN-ARGS...: one training run (PROCESSES > 1: DDP under
           # torchrun), logged to runs/nano/<pass>NAME.log, with its wall time reported
  local start=$SECONDS name=$1 processes=$2
  shift 2
  local launch=("$bin/lion-train")
  if [[ $processes -gt 1 ]]; then
    launch=("$bin/torchrun" --standalone --nproc_per_node "$processes" -m lion_ros.train)
  fi
  "${launch[@]}" "$@" > "$runs/$pass$name.log" 2>&1 \
    || { echo "$pass$name failed, see $runs/$pass$name.log" >&2; return 1; }
  echo "$pass$name: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}

await() {  # await PID...: wait for every one; fail if any failed
  local pid failed=0
  for pid in "$@"; do wait "$pid" || failed=1; done
  return "$failed"
}

stagewise() {  # stagewise [key=value ...]: stages 1 || 2 (|| the baseline) from the stage 0 the
               # overrides name, then stage 3, into runs/nano/<pass>
  local start=$SECONDS out=$runs/$pass pids=()
  if [[ $baseline == 1 ]]; then
    stage mixed 1 --config "$configs/nano-one-stage.yaml" "$@" "run.output_dir=${out}mixed" & pids+=($!)
  fi
  stage stage1 1 --config "$configs/nano-stage1.yaml" "$@" "run.output_dir=${out}stage1" & local p1=$!
  stage stage2 1 --config "$configs/nano-stage2.yaml" "$@" "run.output_dir=${out}stage2" & local p2=$!
  await "$p1" "$p2"
  stage stage3 1 --config "$configs/nano-stage3.yaml" "${vocab[@]}" "init.image_stage=${out}stage1/model" \
    "init.region_stage=${out}stage2/model" "run.output_dir=${out}stage3"
  echo "stage-wise training: $(( (SECONDS - start) / 60 )) min"
  await "${pids[@]}"
}

evaluate() {  # evaluate RUN SPLIT: the model of this pass's RUN
  "$bin/lion-eval" --model "$runs/$pass$1/model" --split "$2" --num "$eval_scenes" --threads 1 \
    --out "$runs/${pass}eval-$1-$2" > "$runs/${pass}eval-$1-$2.log" 2>&1
  echo "eval $pass$1 $2: $runs/${pass}eval-$1-$2/metrics.md"
}

vocab=()  # the lineage and --from-stage0 train with the shipped vocabularies, so their stages must too
if [[ $gpu == 1 ]]; then
  plan=$("$bin/lion-train" "${lineage[@]}" --plan)  # one line per group of steps that run side by side
  while read -r -a group; do
    pids=()
    for step in "${group[@]}"; do stage "$step" 1 "${lineage[@]}" --step "$step" & pids+=($!); done
    await "${pids[@]}"
  done <<< "$plan"
  vocab=("model.tokenizer_dir=$assets")
  pass=pass2/
  last_output_dir='import sys; from lion_ros.train.lineage import load_lineage
print(load_lineage(sys.argv[1])[-1].config().run.output_dir)'
  stage0=$("$bin/python" -c "$last_output_dir" "$configs/nano-lineage.yaml")/model
  from=("${vocab[@]}")
elif [[ $from_stage0 == 1 ]]; then
  vocab=("model.tokenizer_dir=$assets")
  pass=from-stage0/
  stage0=$assets
  from=("${vocab[@]}" "init.overlay=$assets/stage0.safetensors")
else
  stage stage0 2 --config "$configs/nano-stage0.yaml"  # two 1-thread processes beat one 2-thread one on 2 cores
  stage0=$runs/stage0/model
  from=()
fi
mkdir -p "$runs/$pass"
stagewise "${from[@]}" "init.path=$stage0"
evaluated=(stage3)
[[ $baseline == 0 ]] || evaluated+=(mixed)
for run in "${evaluated[@]}"; do  # the two splits side by side
  evaluate "$run" test & e1=$!
  evaluate "$run" compositional & e2=$!
  await "$e1" "$e2"
done
if [[ $from_stage0 == 1 ]]; then
  if cmp -s "$runs/${pass}stage3/model/model.safetensors" "$assets/model.safetensors"; then
    echo "stage 3 from the shipped stage 0: bit-identical to $assets/model.safetensors"
  else
    echo "stage 3 from the shipped stage 0 differs from $assets/model.safetensors in its bits;" \
      "compare $runs/${pass}eval-stage3-*/metrics.md with $assets/eval/*/metrics.md"
  fi
fi
if [[ $ship == 1 ]]; then
  files=(config.json model.safetensors)
  # The CPU recipe trains its own vocabularies in stage 0, and they ship with the model; the others
  # train with the shipped ones, whose re-saved copies would only rewrite tokenizer_config.json.
  [[ ${#vocab[@]} -gt 0 ]] || files+=(tokenizer qformer_tokenizer)
  for file in "${files[@]}"; do cp -r "$runs/${pass}stage3/model/$file" "$assets"/; done
  for split in test compositional; do
    mkdir -p "$assets/eval/$split"
    cp "$runs/${pass}eval-stage3-$split"/{metrics.json,metrics.md,predictions.jsonl} "$assets/eval/$split"/
  done
  "$bin/python" scripts/stage0_overlay.py --stage0 "$stage0" --trained "$runs/${pass}stage3/model" \
    --out "$assets/stage0.safetensors"
  echo "shipped into $assets (update MODEL_CARD.md from $assets/eval/*/metrics.md)"
fi
