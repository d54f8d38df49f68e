"""DistributedDataParallel over two CPU processes (gloo): every parameter gets a gradient and they agree."""
import copy
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

WORLD_SIZE = 2


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _worker(rank, port):
    import timm
    import timm_ssm  # noqa: F401

    torch.set_num_threads(1)
    dist.init_process_group('gloo', init_method=f'tcp://127.0.0.1:{port}', rank=rank, world_size=WORLD_SIZE)
    try:
        torch.manual_seed(0)
        model = timm.create_model('test_resnet_ssm', num_classes=5).train()
        local = copy.deepcopy(model)
        ddp = DistributedDataParallel(model)  # find_unused_parameters=False: an unused one would raise

        torch.manual_seed(100 + rank)
        x, y = torch.randn(4, 3, 48, 48), torch.randint(0, 5, (4,))
        for _ in range(2):  # the second step fails if the first left a parameter without gradient
            ddp.zero_grad()
            F.cross_entropy(ddp(x), y).backward()

        missing = [n for n, p in model.named_parameters() if p.grad is None]
        assert not missing, f'rank {rank}: parameters without gradient: {missing}'

        # DDP's gradient is the mean over ranks of each rank's local gradient
        F.cross_entropy(local(x), y).backward()
        for (name, p), p_local in zip(model.named_parameters(), local.parameters()):
            mean_local = p_local.grad.clone()
            dist.all_reduce(mean_local)
            mean_local /= WORLD_SIZE
            torch.testing.assert_close(p.grad, mean_local, rtol=1e-4, atol=1e-6, msg=name)
            gathered = [torch.empty_like(p.grad) for _ in range(WORLD_SIZE)]
            dist.all_gather(gathered, p.grad)
            torch.testing.assert_close(gathered[0], gathered[1], msg=name)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_gradients_agree():
    os.environ.setdefault('OMP_NUM_THREADS', '1')
    mp.spawn(_worker, args=(_free_port(),), nprocs=WORLD_SIZE, join=True)
