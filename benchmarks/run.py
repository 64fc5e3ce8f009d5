"""The main job: benchmark every backend on every workload (see README).

    python benchmarks/run.py            # full run, writes benchmarks/results/<device>.json/.png
    python benchmarks/run.py --quick    # smoke run
"""

from mmcal_kernels.bench.runner import cli

if __name__ == "__main__":
    cli()
