"""Benchmarking and profiling (`lmforge bench`): model step timing, MFU, memory, attention.

`sizes` names the model shapes (CS336's small … 2.7B plus tiny CPU ones), `harness` times a
forward / forward-backward / train step, `profile` writes a torch.profiler trace with named
ranges, `attention` compares attention implementations over sequence lengths and head dims.
"""

from lmforge.bench.harness import BenchResult, bench_model, compare_dtypes
from lmforge.bench.sizes import SIZES, ModelSize, size_config

__all__ = ["SIZES", "BenchResult", "ModelSize", "bench_model", "compare_dtypes", "size_config"]
