"""bertpipe: d2l.ai's BERT chapters as a config-driven DVC pipeline."""

import os

# MKL's matmuls take another summation order at another thread count on some CPUs (on this
# project's Intel machine, 10 of 60 random shapes differed between 1 and 2 threads). Strict
# conditional numerical reproducibility fixes the order whatever the count (0 of 60 at 1, 2, 3,
# 4 and 8 threads), at no measured cost. MKL reads this at its first call, so it is set here,
# before any stage computes; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

# bf16 matmuls go through oneDNN, which keeps every kernel it builds, one per shape, in two caches
# (ideep's and its own) of 1,024 entries each; packed batches have new shapes at every step, so
# a bf16 pretraining run grew by about 6 MB a step (to 2.6 GB after 300 steps of 128). 64 entries
# each kept it flat, no slower. Both are read at their first use, after this.
os.environ.setdefault("LRU_CACHE_CAPACITY", "64")
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")

__version__ = "0.1.0"
