"""Evaluation: the metrics, baselines, sweeps and report of DESIGN.md section 5 (`talking-head evaluate`).

    from talking_head.evaluation import evaluate
    metrics = evaluate(data="prepared/obama", pipeline="my-pipeline", output="report")

Modules: metrics (PSNR, SSIM, landmark distances), clips (the test clips of a
prepared dataset), scoring
(per-frame scoring of streamed frames), emotion (classifier accuracy / recall /
confusion), landmark_stage (the pipeline's landmark stage without a renderer),
runner (the evaluation run), report (metrics.json, report.md,
plots), cli (the `evaluate` subcommand).
"""

_LAZY = {
    "evaluate": "talking_head.evaluation.runner",
    "EvalConfig": "talking_head.evaluation.runner",
    "add_evaluate_parser": "talking_head.evaluation.cli",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'talking_head.evaluation' has no attribute {name!r}")
