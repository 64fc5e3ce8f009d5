"""DistributedDataParallel over gloo, 2 CPU processes on this machine: the
averaged gradients equal those of one process on the whole batch."""

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import make_module
from mmcal_kernels.compare import random_case

DIMS, LAYOUTS = [5, 4], ["sequence", "spatial"]


def _data():
    features, masks, present = random_case(DIMS, LAYOUTS, batch=4, positions=[6, (2, 3)], seed=51)
    gen = torch.Generator().manual_seed(52)
    targets = [torch.randn(x.shape, generator=gen) for x in features]
    return features, masks, present, targets


def _loss(module, features, masks, present, targets):
    ys = module(features, masks, present)
    return sum(((y - t) ** 2).mean() for y, t in zip(ys, targets))


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    module = make_module(DIMS, LAYOUTS, seed=50, dtype=torch.float32)
    ddp = torch.nn.parallel.DistributedDataParallel(module)
    features, masks, present, targets = _data()
    half = slice(2 * rank, 2 * rank + 2)
    _loss(
        ddp, [x[half] for x in features], [m if m is None else m[half] for m in masks], present[half],
        [t[half] for t in targets],
    ).backward()  # fmt: skip
    torch.save({n: p.grad for n, p in module.named_parameters()}, os.path.join(out_dir, f"grads{rank}.pt"))
    dist.destroy_process_group()


def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    module = make_module(DIMS, LAYOUTS, seed=50, dtype=torch.float32)
    features, masks, present, targets = _data()
    # Each rank's loss is a mean over its half; DDP averages the two halves' gradients.
    _loss(module, features, masks, present, targets).backward()
    for rank in range(2):
        grads = torch.load(tmp_path / f"grads{rank}.pt", weights_only=True)
        for name, p in module.named_parameters():
            assert grads[name].abs().sum() > 0, name
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-5, atol=1e-6, msg=f"rank {rank}: {name}")
