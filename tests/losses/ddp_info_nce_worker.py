"""Run by `torchrun --nproc_per_node 2` from test_info_nce.py: InfoNCE under DDP with gathered negatives.

Each rank takes 4 of the same 8 pairs; rank 0 saves the mean loss and the (DDP-averaged) gradient.
"""

import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from mtpf.losses.info_nce import InfoNCELoss

dist.init_process_group("gloo", timeout=timedelta(seconds=60))
rank, world_size = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
encoder = torch.nn.Linear(8, 4)
model = torch.nn.parallel.DistributedDataParallel(encoder)
anchors_in, positives_in = torch.randn(8, 8), torch.randn(8, 8)
local = slice(rank * 4, (rank + 1) * 4)
loss = InfoNCELoss()(model(anchors_in[local]), model(positives_in[local]))
loss.backward()
losses = [torch.zeros(()) for _ in range(world_size)]
dist.all_gather(losses, loss.detach())
dist.barrier()
del model  # DDP's reducer holds the process group: release it before the group goes (a rank crashed at exit once)
dist.destroy_process_group()
if rank == 0:
    torch.save({"loss": torch.stack(losses).mean(), "grad": encoder.weight.grad.clone()}, sys.argv[1])
