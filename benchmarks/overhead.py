"""The overhead suite from a source checkout: the same as ``rlm-kernel bench overhead``.

Usage::

    python benchmarks/overhead.py [--quick | --full] [--sizes 1,10,100] [--compare rlms]
                                  [--only PART,...] [--json FILE]
"""

import sys

from rlm_kernel.bench.overhead import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
