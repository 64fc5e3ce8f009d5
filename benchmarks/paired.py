"""Paired ratios: every contender of a workload timed in alternating rounds (see
mmcal_kernels/bench/paired.py), so that a shared machine's drift cancels out.

    python benchmarks/paired.py                  # five real workloads, forward and fwd+bwd
    python benchmarks/paired.py --quick          # smoke run
"""

import sys

from mmcal_kernels.bench.paired import main

if __name__ == "__main__":
    sys.exit(main())
