"""Evaluation: held-out perplexity and honest n-gram baselines to compare it with.

>>> from lmforge.eval import evaluate_loss, bigram_cross_entropy     # doctest: +SKIP
>>> evaluate_loss(model, np.load("val.npy", mmap_mode="r")).loss      # doctest: +SKIP
"""

from lmforge.eval.ngram import bigram_cross_entropy, unigram_cross_entropy
from lmforge.eval.perplexity import EvalResult, bits_per_byte, evaluate_loss

__all__ = ["EvalResult", "bigram_cross_entropy", "bits_per_byte", "evaluate_loss",
           "unigram_cross_entropy"]
