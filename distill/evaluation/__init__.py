"""GLUE and custom-task evaluation: fine-tuning grid, standard metrics, summary table.

    from distill.evaluation import evaluate, create_summary_table

    evaluate("runs/minilm/export", tasks=["mnli", "sst2"], learning_rate=[1e-5, 3e-5], epochs=[3, 5],
             seeds=[42], output_dir="results")
    print(create_summary_table("results", aggregation="best"))

Modules: tasks (the task registry and the data loaders), metrics (scikit-learn / scipy), finetune
(one run with the Hugging Face Trainer), config (`EvaluationConfig`: the grid's settings, which are
also the command's flags), grid (`evaluate`: prepare, plan, run), summary (`create_summary_table`),
cli (the `distill-evaluate` command: `main`), demo (the demo's comparison table: `main`), embeddings
(frozen-embedding scores by MTEB: `embedding_task`, `embedding_scores`; no file I/O) and
embedding_eval (`evaluate_embeddings`, the `distill-evaluate-embeddings` command: cache, results tree).
Names are imported lazily, so importing the package does not import torch.
"""
from .. import lazy_getattr

_EXPORTS = {
    "evaluate": "grid", "run_name": "grid", "EvaluationConfig": "config",
    "create_summary_table": "summary", "summarize": "summary", "Summary": "summary", "markdown_table": "summary",
    "collect_runs": "summary",
    "Task": "tasks", "TaskDataError": "tasks", "TASKS": "tasks", "GLUE_TASKS": "tasks", "DEFAULT_TASKS": "tasks",
    "get_task": "tasks", "custom_task": "tasks", "load_task_data": "tasks", "load_reviews": "tasks",
    "METRICS": "metrics", "compute_metrics": "metrics",
    "RunSettings": "finetune", "run_finetune": "finetune",
    "evaluate_embeddings": "embedding_eval", "EmbeddingEvaluationConfig": "embedding_eval",
    "embedding_scores": "embeddings", "embedding_task": "embeddings",
    "EmbeddingData": "embeddings", "hf_encoder": "embeddings",
}

__all__ = list(_EXPORTS)


__getattr__ = lazy_getattr(__name__, _EXPORTS)
