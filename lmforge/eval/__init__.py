"""Evaluation: perplexity, scoring primitives, benchmark tasks, contamination, the lm-eval bridge.

>>> from lmforge.eval import evaluate_loss, load_task, evaluate_task          # doctest: +SKIP
>>> evaluate_loss(model, np.load("val.npy", mmap_mode="r")).loss               # doctest: +SKIP
>>> task = load_task("mc:data/small_en_mc.jsonl")                              # doctest: +SKIP
>>> evaluate_task(task, model, tokenizer).summary()                            # doctest: +SKIP

`scoring` (loglikelihood, loglikelihood_rolling, generate_until on the KV-cache engine, shared
prefixes computed once), `tasks` (MMLU, GSM8K, multiple choice; reports with intervals),
`contamination` (n-gram overlap with training data), `perplexity` (token files), `ngram`
(baselines), `models` (open a run or a HuggingFace directory), `lm_eval_bridge` (lm-eval's
`lmforge` model; imported on its own, it needs the `eval` extra). See docs/evaluation.md.
"""

from lmforge.eval.ngram import bigram_cross_entropy, unigram_cross_entropy
from lmforge.eval.perplexity import EvalResult, bits_per_byte, evaluate_loss
from lmforge.eval.scoring import (
    GenerationRequest,
    Loglikelihood,
    Rolling,
    generate_until,
    loglikelihood,
    loglikelihood_rolling,
)
from lmforge.eval.tasks import TaskReport, evaluate_task, load_task

__all__ = ["EvalResult", "GenerationRequest", "Loglikelihood", "Rolling", "TaskReport",
           "bigram_cross_entropy", "bits_per_byte", "evaluate_loss", "evaluate_task",
           "generate_until", "load_task", "loglikelihood", "loglikelihood_rolling",
           "unigram_cross_entropy"]
