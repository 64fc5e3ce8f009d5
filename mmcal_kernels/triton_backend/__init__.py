"""Triton kernels for the passes over X (``reductions.py``, ``elementwise.py``), registered
as ``torch.library.triton_op``s in the ``mmcal`` namespace, and the
``"triton"`` backend built on them (``backend.py``). Importing this package
imports triton; ``mmcal_kernels._triton`` decides whether to."""
