"""Tasks: head, preprocessing, metrics and report section per task type.

`TASK_METRICS` is import-light so that the config schema can validate metric names
without importing torch.
"""

CLASSIFICATION_METRICS = (
    "accuracy",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "micro_precision",
    "micro_recall",
    "micro_f1",
    "loss",
)
TOKEN_CLASSIFICATION_METRICS = ("f1", "precision", "recall", "accuracy", "loss")  # entity-level micro (seqeval); token accuracy

CAUSAL_LM_METRICS = ("loss", "perplexity")  # validation; BLEU and ROUGE are computed on the test prompts after training
QUESTION_ANSWERING_METRICS = ("f1", "exact_match", "loss")  # SQuAD v1.1 token F1 and exact match

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "text-classification": CLASSIFICATION_METRICS,
    "token-classification": TOKEN_CLASSIFICATION_METRICS,
    "causal-lm": CAUSAL_LM_METRICS,
    "seq2seq": CAUSAL_LM_METRICS,
    "question-answering": QUESTION_ANSWERING_METRICS,
}
PRIMARY_METRIC = {"text-classification": "accuracy", "token-classification": "f1", "causal-lm": "loss", "seq2seq": "loss",
                  "question-answering": "f1"}
LOWER_IS_BETTER = {"loss", "perplexity"}
GENERATIVE_TASKS = ("causal-lm", "seq2seq")  # the `GenerativeTask`s, for callers that hold only a task name


def get_task(name: str, labels: list[str] | None = None, settings: dict | None = None):
    """The task implementation registered under `name` (with the run's label names and `task:` settings, when known)."""
    from peftstd.tasks.causal_lm import CausalLM
    from peftstd.tasks.classification import TextClassification
    from peftstd.tasks.question_answering import QuestionAnswering
    from peftstd.tasks.seq2seq import Seq2SeqLM
    from peftstd.tasks.token_classification import TokenClassification

    tasks = {"text-classification": TextClassification, "token-classification": TokenClassification, "causal-lm": CausalLM,
             "seq2seq": Seq2SeqLM, "question-answering": QuestionAnswering}
    return tasks[name](labels, settings)
