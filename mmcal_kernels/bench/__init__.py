"""The benchmark harness behind ``benchmarks/run.py`` and ``mmcal-bench``.

* ``workloads``  shapes from real models, one place, each with its source;
* ``floors``     docs/spec.md's byte floor of each pass;
* ``timing``     timers (CPU: torch.utils.benchmark; CUDA: triton's do_bench or
                 CUDA events) and the copy-bandwidth probe;
* ``contenders`` what is timed: eager reference, torch.compile of it, kernels;
* ``report``     table, JSON and PNG;
* ``runner``     the command line.
"""
