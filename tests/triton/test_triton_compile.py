"""torch.compile of the module with ``backend="triton"``: fullgraph, zero graph
breaks, equal to eager, and Inductor's generated code calls our kernels.

GPU only: under the interpreter torch.compile fails in fake-tensor
propagation of the Triton ops, and without it Triton finds no driver."""

import pytest
import torch

from triton_env import DEVICE, gpu_only
from conftest import make_module, random_grads
from mmcal_kernels.compare import forward_backward, random_case

pytestmark = [gpu_only, pytest.mark.compile]


# Cold caches, it ran past check.sh's 45 s a test on the H200 (run 6); warm, 14 s.
@pytest.mark.timeout(240)
def test_compile_fullgraph_no_graph_breaks_equals_eager_and_calls_our_kernels():
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    dims, layouts = [6, 4, 3], ["sequence", "spatial", "spatial"]
    module = make_module(dims, layouts, seed=94, dtype=torch.float32, backend="triton").to(DEVICE)
    features, masks, present = random_case(dims, layouts, batch=3, positions=[7, (2, 3), ()], seed=95, device=DEVICE)
    explanation = torch._dynamo.explain(module)(features, masks, present)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(module, fullgraph=True)
    leaves = [x.detach().requires_grad_() for x in features]
    grads = random_grads(features)

    def run():
        outputs = compiled(leaves, masks, present)
        torch.autograd.backward(outputs, grads)
        return outputs

    _, code = run_and_get_code(run)
    source = "\n".join(code)
    for kernel in ("_reduce_kernel", "_map_kernel"):
        assert kernel in source, f"{kernel} is not in Inductor's generated code"
    got = forward_backward(compiled, features, masks, present, grads)
    want = forward_backward(module, features, masks, present, grads)
    for a, b in zip(got[0] + got[2], want[0] + want[2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
