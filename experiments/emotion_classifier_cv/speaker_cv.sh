#!/usr/bin/env bash
# Stop 32: compare "one CNN run" with "two CNN runs averaged" by cross-validation over the training speakers
# (RAVDESS actors 01-12 in three folds of four, two men and two women each), then train the two final members on
# all twelve. Every run is d2's recipe on a fixed schedule (3000 updates, the last weights kept), one thread each,
# two at once. Score the folds with speaker_cv.py. Usage: [SEEDS="0 1 2"] [FINAL_SEEDS="0 1"] bash speaker_cv.sh
# [DATA_DIR] [WORK_DIR] (finished runs are skipped, so more seeds add only their own runs; FINAL_SEEDS, by default
# SEEDS, picks the final members on all twelve speakers, queued after the folds).
set -euo pipefail
data=${1:-out/data/ravdess}
work=${2:-out/emotion/cv}
seeds=${SEEDS:-0 1}
final_seeds=${FINAL_SEEDS-$seeds}
export OMP_NUM_THREADS=1
recipe="--data_dir $data --preset cnn-small --max_train_steps 3000 --learning_rate 2e-3 --checkpointing_steps 500
        --keep_weights last --report_to none --resume_from_checkpoint latest"
jobs=()
for fold in 01,02,03,04 05,06,07,08 09,10,11,12; do
  for seed in $seeds; do
    jobs+=("--validation_speakers $fold --validation_steps 500 --seed $seed --output_dir $work/fold${fold:0:2}_s$seed")
  done
done
for seed in $final_seeds; do  # the final members: all twelve training speakers (their end-of-run test figures are logged)
  jobs+=("--validation_speakers none --validation_steps 3000 --seed $seed --output_dir $work/all_s$seed")
done
run_one() {  # one run, skipped when finished before (marked .done)
  out=$(sed 's/.*--output_dir \([^ ]*\).*/\1/' <<<"$2")
  [ -f "$out/.done" ] && return 0
  mkdir -p "$out"
  python train/train_emotion.py $1 $2 >"$out/train.log" 2>&1 && touch "$out/.done"
}
export -f run_one
printf '%s\n' "${jobs[@]}" | xargs -P 2 -I{} bash -c 'run_one "$0" "$1"' "$recipe" {}
