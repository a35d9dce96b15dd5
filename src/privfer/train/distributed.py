"""Several processes (and machines) under ``torchrun``: process group, device, and the few collectives the loop uses.

``torchrun --nproc_per_node N -m privfer train ...`` starts N copies of the same command with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`init` joins them into one process group (gloo on CPU,
NCCL on CUDA). Without those variables everything here is a no-op for one process, so a plain
``privfer train`` behaves exactly as before.

How the loop shares the work (see ``loop.py`` and ``dp.py``): every rank draws the same global batch
from the same seeded generator and keeps the examples it owns (global index ``i`` with
``i % world_size == rank``), so the global batch, sampling rate, noise multiplier and epsilon are those
of one process. Only rank 0 writes the run directory.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

_device = torch.device("cpu")
_owned = False  # whether init() created the process group (and cleanup() should destroy it)


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) when not launched by it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto``: this process' GPU (``cuda:LOCAL_RANK``) when CUDA is available, else the CPU."""
    from ..errors import PrivferError

    if name not in ("auto", "cpu", "cuda"):
        raise PrivferError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise PrivferError("--device cuda: no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def init(device: str = "auto") -> torch.device:
    """Pick this process' device and, under torchrun with WORLD_SIZE > 1, join the process group."""
    global _device, _owned
    rank, world, local = env_world()
    _device = resolve_device(device, local)
    if _device.type == "cuda":
        torch.cuda.set_device(_device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if _device.type == "cuda" else "gloo", rank=rank, world_size=world)
        _owned = True
    return _device


def enabled() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if enabled() else 0


def world_size() -> int:
    return dist.get_world_size() if enabled() else 1


def is_main() -> bool:
    """Rank 0: the only process that logs and writes the run directory."""
    return rank() == 0


def is_local_main() -> bool:
    """The first process on its machine (fills the per-machine preprocessing cache)."""
    return env_world()[2] == 0 if enabled() else True


def barrier() -> None:
    if enabled():
        dist.barrier()


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks of a few numbers (in float64); the values themselves for one process."""
    if not enabled():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_sum_(tensors) -> None:
    """In-place sum over ranks of each tensor (e.g. gradients)."""
    if enabled():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_gather_object(obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` for one process."""
    if not enabled():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj):
    """Rank 0's ``obj`` on every rank."""
    if not enabled():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    """Leave the process group if :func:`init` created it."""
    global _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _owned = False
