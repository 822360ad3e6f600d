"""How the processes of a reproduction run share its scenes: whole scenes per process, taken from
the launcher that started them (there is no scheduler of its own).

- torchrun: rank RANK of WORLD_SIZE takes scenes RANK, RANK + WORLD_SIZE, ...; its stages run on
  cuda:LOCAL_RANK (--gpu); the ranks meet at a torch.distributed barrier (`Group`: NCCL on GPUs,
  gloo on CPUs) before rank 0 writes the combined results;
- a SLURM job array: task SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT
  takes its share the same way (process index = task index x WORLD_SIZE + RANK when combined).
"""
import datetime
import os

import torch

from utils.errors import InputError


def shard():
    """(index, count, local_rank, world_size) of this process: torchrun's RANK / WORLD_SIZE /
    LOCAL_RANK combined with a SLURM array's task index and count."""
    env = os.environ
    rank, world = int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1))
    local = int(env.get("LOCAL_RANK", 0))
    task = int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    tasks = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    if not (0 <= rank < world) or not (0 <= task < tasks):
        raise InputError(f"RANK {rank} / WORLD_SIZE {world}, SLURM array task {task} of {tasks}: out of range")
    return task * world + rank, tasks * world, local, world


def my_scenes(scenes, index, count):
    """Whole scenes per process: scenes index, index + count, ..."""
    return scenes[index::count]


class Group:
    """torch.distributed when started by torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo otherwise."""

    def __init__(self, world, local_rank, timeout_s):
        self.world, self.local_rank = world, local_rank
        self.active = world > 1
        self.cuda = torch.cuda.is_available()
        if self.active:
            import torch.distributed as dist
            backend = "nccl" if self.cuda else "gloo"
            if self.cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
            self.rank = dist.get_rank()
        else:
            self.rank = 0

    def barrier(self):
        if self.active:
            import torch.distributed as dist
            if self.cuda:
                dist.barrier(device_ids=[self.local_rank])
            else:
                dist.barrier()

    def close(self):
        if self.active:
            import torch.distributed as dist
            dist.destroy_process_group()


def device_flags(local_rank):
    """The stages' --gpu: this process's GPU (LOCAL_RANK) when there is CUDA."""
    return ["--gpu", str(local_rank)] if torch.cuda.is_available() else []
