from talking_head.pipelines.pipeline_talking_head import TalkingHeadPipeline, TalkingHeadPipelineOutput

__all__ = ["TalkingHeadPipeline", "TalkingHeadPipelineOutput"]
