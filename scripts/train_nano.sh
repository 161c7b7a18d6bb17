#!/usr/bin/env bash
# Train lion-nano end to end with the stage-wise pipeline and evaluate it on the held-out splits.
#
#   bash scripts/train_nano.sh [--gpu | --from-stage0] [--baseline] [--stage0b] [--eval-scenes N] [--ship]
#
#   stage 0 (from scratch) -> stage 1 (image-level, Q-Former branch) || stage 2 (region-level,
#   aggregator branch) -> stage 3 (hand-over, both branches) -> lion-eval on test + compositional
#
# --gpu runs stage 0 on a CUDA GPU instead of the CPU: nano-stage0-gpu.yaml, then its warm restart
# nano-stage0-gpu-restart.yaml (10 minutes on an H200), then nano-stage0-reasoned.yaml and its four
# warm restarts (40 + 25 + 50 + 30 + 60 minutes; they ran on 2 CPU cores), which teach the reasoned spatial
# answers the GPU runs did not train, then a first pass of stages 1-3, a sixth reasoned run from
# that pass's stage 3 (nano-stage0-reasoned-restart5.yaml, 60 minutes), a seventh, eighth and
# ninth, each from the one before (nano-stage0-reasoned-restart6/7/8.yaml, 60 minutes each) and the
# second pass of stages 1-3 (runs/nano/pass2/), which is evaluated and shipped; the shipped model
# was trained so. The first pass runs its stages as they ran then: stage 1 at 1e-4 (not 3e-5) and
# 150 steps, stage 2 150 steps, stage 3 200 steps (not 100 / 100 / 300).
# The shipped vocabularies are used in every stage; stages 1-3 and the evaluation are the same.
# --from-stage0 re-runs the shipped model's stages 1-3 (8.5 CPU minutes on 2 cores) from its
# stage-0 weights instead of training stage 0: the shipped model's ViT and T5, which stages 1-3
# keep frozen, with the stage-0 branches and soft prompt of lion_ros/assets/lion-nano/stage0.safetensors
# (init.overlay), into runs/nano/from-stage0/; it then evaluates the result and compares its
# weights with the shipped ones (bit-identical on the CPU that trained them; another CPU may round
# differently, so compare the metrics there).
# --baseline also trains the one-stage comparison (nano-mixed.yaml: stage 3's trainable set from
# the stage-0 weights, as many samples as stages 1-3 together) alongside stages 1-3 and
# evaluates it. --stage0b inserts stage 0b (geometry and count labels under every patch) after
# stage 0 and starts stages 1, 2 and the baseline from it (measured: no better; HISTORY.md).
# --ship copies the stage-3 model and its evaluation (metrics + predictions, which
# tests/test_model_card.py checks the card and lion-eval against) into lion_ros/assets/lion-nano,
# with the stage-0 overlay that --from-stage0 starts from (scripts/stage0_overlay.py).
# Logs: runs/nano/<stage>.log; models: runs/nano/<stage>/model (runs/nano/pass2/<stage> for the
# second pass). Every stage resumes from its latest checkpoint, so an interrupted run continues
# where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

gpu=0
from_stage0=0
baseline=0
stage0b=0
ship=0
eval_scenes=200
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpu) gpu=1 ;;
    --from-stage0) from_stage0=1 ;;
    --baseline) baseline=1 ;;
    --stage0b) stage0b=1 ;;
    --eval-scenes) eval_scenes="$2"; shift ;;
    --ship) ship=1 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;  # the header comment, whatever its length
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $gpu == 1 && $from_stage0 == 1 ]] || [[ $from_stage0 == 1 && ( $ship == 1 || $stage0b == 1 ) ]]; then
  echo "--from-stage0 re-runs the shipped stages: it does not combine with --gpu, --stage0b or --ship" >&2; exit 2
fi

bash scripts/bootstrap.sh
bin=.venv/bin
configs=lion_ros/configs/train
assets=lion_ros/assets/lion-nano
runs=runs/nano
mkdir -p "$runs"

pass=""  # where stages 1-3 write under runs/nano: "" for the first pass, "pass2/" for --gpu's second

stage() {  # stage NAME PROCESSES [key=value ...]: train one stage (PROCESSES > 1: DDP under torchrun),
           # log to runs/nano/<pass>NAME.log, report its wall time
  local start=$SECONDS name=$1 processes=$2
  shift 2
  local launch=("$bin/lion-train")
  if [[ $processes -gt 1 ]]; then
    launch=("$bin/torchrun" --standalone --nproc_per_node "$processes" -m lion_ros.train)
  fi
  "${launch[@]}" --config "$configs/nano-$name.yaml" "$@" > "$runs/$pass$name.log" 2>&1 \
    || { echo "$pass$name failed, see $runs/$pass$name.log" >&2; return 1; }
  echo "$pass$name: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}

stagewise() {  # stagewise BASELINE [key=value ...]: stages 1 || 2 (|| the one-stage baseline when
               # BASELINE is 1) from the stage 0 the overrides name, then stage 3, into runs/nano/<pass>
  local with_baseline=$1 start=$SECONDS
  shift
  local out=$runs/$pass baseline_pid=""
  if [[ $with_baseline == 1 ]]; then
    stage mixed 1 "$@" "run.output_dir=${out}mixed" & baseline_pid=$!
  fi
  stage stage1 1 "$@" "${stage1_then[@]}" "run.output_dir=${out}stage1" & local p1=$!
  stage stage2 1 "$@" "${stage2_then[@]}" "run.output_dir=${out}stage2" & local p2=$!
  wait "$p1" "$p2"
  stage stage3 1 "${vocab[@]}" "${stage3_then[@]}" "init.image_stage=${out}stage1/model" \
    "init.region_stage=${out}stage2/model" "run.output_dir=${out}stage3"
  echo "stage-wise training: $(( (SECONDS - start) / 60 )) min"
  [[ -z $baseline_pid ]] || wait "$baseline_pid"
}

evaluate() {  # evaluate STAGE SPLIT: the model of this pass's STAGE
  "$bin/lion-eval" --model "$runs/$pass$1/model" --split "$2" --num "$eval_scenes" --threads 1 \
    --out "$runs/${pass}eval-$1-$2" > "$runs/${pass}eval-$1-$2.log" 2>&1
  echo "eval $pass$1 $2: $runs/${pass}eval-$1-$2/metrics.md"
}

vocab=()  # the GPU stage 0 uses the shipped vocabularies; the stages after it must too
# Per-stage overrides, empty but for the first --gpu pass, which ran at the settings of its time.
stage1_then=()
stage2_then=()
stage3_then=()
if [[ $gpu == 1 ]]; then
  stage stage0-gpu 1
  stage stage0-gpu-restart 1
  stage stage0-reasoned 1
  stage stage0-reasoned-restart 1
  stage stage0-reasoned-restart2 1
  stage stage0-reasoned-restart3 1
  stage stage0-reasoned-restart4 1
  vocab=("model.tokenizer_dir=lion_ros/assets/lion-nano")
  stage1_then=("optim.lr=1e-4" "optim.steps=150")
  stage2_then=("optim.steps=150")
  stage3_then=("optim.steps=200")
  stagewise 0 "${vocab[@]}" "init.path=$runs/stage0-reasoned-restart4/model"
  stage1_then=()
  stage2_then=()
  stage3_then=()
  stage stage0-reasoned-restart5 1 "${vocab[@]}"  # from the first pass's stage 3
  stage stage0-reasoned-restart6 1 "${vocab[@]}"
  stage stage0-reasoned-restart7 1 "${vocab[@]}"
  stage stage0-reasoned-restart8 1 "${vocab[@]}"
  pass=pass2/
  stage0=$runs/stage0-reasoned-restart8/model
  from=("${vocab[@]}")
elif [[ $from_stage0 == 1 ]]; then
  vocab=("model.tokenizer_dir=$assets")
  pass=from-stage0/
  stage0=$assets
  from=("${vocab[@]}" "init.overlay=$assets/stage0.safetensors")
else
  stage stage0 2  # two 1-thread processes beat one 2-thread process on 2 cores
  stage0=$runs/stage0/model
  from=()
fi
if [[ $stage0b == 1 ]]; then
  stage stage0b 1 "${vocab[@]}"
  stage0=$runs/stage0b/model
fi
mkdir -p "$runs/$pass"
stagewise "$baseline" "${from[@]}" "init.path=$stage0"
evaluate stage3 test & e1=$!
evaluate stage3 compositional & e2=$!
wait "$e1" "$e2"
if [[ $baseline == 1 ]]; then
  evaluate mixed test & e1=$!
  evaluate mixed compositional & e2=$!
  wait "$e1" "$e2"
fi
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
  # The CPU recipe trains its own vocabularies in stage 0, and they ship with the model. The --gpu
  # chain trains with the shipped ones, whose re-saved copies would only rewrite tokenizer_config.json.
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
