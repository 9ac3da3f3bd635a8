"""bertpipe: d2l.ai's BERT chapters as a config-driven DVC pipeline."""

import os

# MKL's matmuls take another summation order at another thread count on some CPUs (on this
# project's Intel machine, 10 of 60 random shapes differed between 1 and 2 threads). Strict
# conditional numerical reproducibility fixes the order whatever the count (0 of 60 at 1, 2, 3,
# 4 and 8 threads), at no measured cost. MKL reads this at its first call, so it is set here,
# before any stage computes; a value the user set is kept.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

__version__ = "0.1.0"
