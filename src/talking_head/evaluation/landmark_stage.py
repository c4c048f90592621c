"""The pipeline's landmark stage without a renderer, for scoring a landmark model in seconds.

    stage = LandmarkStage(KFusionLandmarkModel.from_pretrained(path))
    Evaluation(EvalConfig(data=...), pipe=stage)          # or stage.predict_landmarks(...)

`predict_landmarks` and `landmark_chunks` are TalkingHeadPipeline's own (chunking, mouth rest on silence,
smoothing over time); the config defaults are the bundled pipeline's.
"""

from __future__ import annotations

from types import SimpleNamespace

from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline


class LandmarkStage:
    def __init__(self, model, chunk_frames: int = 250, rest_mouth_on_silence: bool = True,
                 landmark_smoothing: float = 1.0, audio_encoder=None):
        from talking_head.models.whisper_encoder import check_audio_encoder

        check_audio_encoder(model, audio_encoder)
        self.landmark_model, self.audio_encoder = model, audio_encoder
        self.config = SimpleNamespace(landmark_chunk_frames=chunk_frames, rest_mouth_on_silence=rest_mouth_on_silence,
                                      landmark_smoothing=landmark_smoothing)

    predict_landmarks = TalkingHeadPipeline.predict_landmarks
    encode_audio = TalkingHeadPipeline.encode_audio
    landmark_chunks = TalkingHeadPipeline.landmark_chunks
