"""``python -m rlm_kernel.bench.overhead``: the same as ``rlm-kernel bench overhead``."""

import sys

from . import main

sys.exit(main(sys.argv[1:]))
