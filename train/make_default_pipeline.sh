#!/usr/bin/env bash
# Rebuild the default pipeline bundled in assets/pipeline (issue 6), on a CPU, from ../shared/data:
# prepare the data, train the three models, assemble the pipeline, evaluate it, copy it into assets/.
# Every figure in docs/results/default-pipeline/ comes from this script's commands.
#
#   bash train/make_default_pipeline.sh [WORK_DIR]      # default WORK_DIR: out/default
#
# Steps run only when their output is missing, so an interrupted run picks up where it stopped
# (the trainers themselves resume with --resume_from_checkpoint latest). On a 2-core CPU the whole
# thing takes about 2 hours; DIFFUSION_STEPS / LANDMARK_STEPS / EMOTION_STEPS scale it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
WORK=${1:-out/default}
PY=${PY:-.venv/bin/python}
TH=${TH:-.venv/bin/talking-head}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-1200}
LANDMARK_STEPS=${LANDMARK_STEPS:-1000}
EMOTION_STEPS=${EMOTION_STEPS:-800}
RESOLUTION=${RESOLUTION:-64}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # see train/README.md: one thread per process is faster here
mkdir -p "$WORK"

# 1. Data: the dev identity (clips 1-3 and the wide clip, 90/10 by time) and RAVDESS (actors 13-16 held out).
[ -f "$WORK/data/obama/dataset.json" ] || \
    $TH prepare video "$SHARED"/talking/obama/*.mp4 --output "$WORK/data/obama"
[ -f "$WORK/data/ravdess/dataset.json" ] || \
    $TH prepare emotion-audio "$SHARED/emotion/ravdess16k" --output "$WORK/data/ravdess" --test-speakers 13,14,15,16

# 2. The three models. The landmark and emotion runs are independent of the diffusion run (which trains on
#    ground-truth landmarks), so they can run at once; one thread each (two OpenMP threads on a shared
#    2-core machine made the diffusion run 3x slower). The emotion classifier is trained for the report
#    only: it is not part of the default pipeline (assets/README.md says why).
[ -f "$WORK/landmarks/landmark_model/config.json" ] || \
    $PY train/train_landmarks.py --data_dir "$WORK/data/obama" --output_dir "$WORK/landmarks" \
        --max_train_steps "$LANDMARK_STEPS" --validation_steps 250 --checkpointing_steps 1000 \
        --checkpoints_total_limit 1 --resume_from_checkpoint latest &
[ -f "$WORK/emotion/emotion_classifier/config.json" ] || \
    $PY train/train_emotion.py --data_dir "$WORK/data/ravdess" --preset tiny --output_dir "$WORK/emotion" \
        --max_train_steps "$EMOTION_STEPS" --learning_rate 1e-3 --lr_warmup_steps 50 --max_seconds 2.5 \
        --validation_steps 200 --checkpointing_steps 600 \
        --checkpoints_total_limit 1 --resume_from_checkpoint latest &
[ -f "$WORK/diffusion/pipeline/model_index.json" ] || \
    $PY train/train_diffusion.py --data_dir "$WORK/data/obama" --preset tiny \
        --resolution "$RESOLUTION" --clip_frames 8 --train_batch_size 2 --condition_skip \
        --max_train_steps "$DIFFUSION_STEPS" --learning_rate 1e-3 --lr_warmup_steps 50 --use_ema --ema_decay 0.995 \
        --checkpointing_steps 200 --checkpoints_total_limit 1 --validation_steps 300 --num_validation_videos 4 \
        --validation_inference_steps 25 --output_dir "$WORK/diffusion" --resume_from_checkpoint latest &
wait

# 3. Assemble: the diffusion run's pipeline with the trained landmark model and no emotion classifier
#    (the UNet learned only the null class from the unlabelled video; see assets/README.md).
$PY - "$WORK" <<'EOF'
import sys
from pathlib import Path

from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.utils import save_pipeline_atomic

work = Path(sys.argv[1])
pipe = TalkingHeadPipeline.from_pretrained(work / "diffusion" / "pipeline")
pipe.landmark_model = KFusionLandmarkModel.from_pretrained(work / "landmarks" / "landmark_model")
pipe.emotion_classifier, pipe.feature_extractor = None, None
save_pipeline_atomic(pipe, work / "pipeline")
print(f"assembled {work / 'pipeline'}")
EOF

# 4. Evaluate on the held-out 10 % (and the emotion classifier on the unseen RAVDESS actors).
$TH evaluate --pipeline "$WORK/pipeline" --data "$WORK/data/obama" --output "$WORK/report" \
    --sampler dpm:25 --t-start 100,200,300,500 --scheduler ddpm:300,ddim:50,dpm:25,dpm:10 \
    --emotion-data "$WORK/data/ravdess" --samples 4 \
    --note "default pipeline: tiny UNet at ${RESOLUTION}², trained on a 2-core CPU (train/make_default_pipeline.sh)"
echo "report: $WORK/report/report.md; copy $WORK/pipeline to assets/pipeline to make it the default"
