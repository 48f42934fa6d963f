"""Run one command alone, under `torchrun --nproc_per_node N`, or under `mpiexec -n N`.

`init()` finds out which: torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT;
mpiexec sets its own (PMI_SIZE, OMPI_COMM_WORLD_SIZE), and then mpi4py gives rank and size, rank 0
picks a free port and sends it to the others over MPI, and the torchrun variables are set from that,
so everything after this point is the same for both launchers. NCCL on GPUs, gloo on CPUs.

Rank 0 writes checkpoints and logs; every rank computes. The helpers here are no-ops in a single
process, so stage code calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist

from jukebox_lite.core.errors import UserError

log = logging.getLogger(__name__)

MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")  # world size as MPICH (Hydra) and Open MPI launchers set it


def resolve_device(name: str = "auto", option: str = "--device") -> torch.device:
    """auto → CUDA when present, else CPU; asking for CUDA without one is a clear error naming `option`."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{option} is cuda but no CUDA GPU is visible; use auto or cpu.")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands: its rank among `world_size` and the device it computes on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _launched_by_mpi() -> bool:
    """mpiexec (not torchrun) started this process as one of several ranks."""
    if "RANK" in os.environ:
        return False
    return any(int(os.environ.get(name) or 1) > 1 for name in MPI_SIZE_VARS)


def _env_from_mpi() -> None:
    """Set torchrun's variables from MPI: rank 0 chooses the rendezvous address and port and broadcasts them."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    node.Free()
    address = None
    if rank == 0:
        # one node: loopback always works; several: the first rank's host name, unless the user set one
        default = "127.0.0.1" if local_size == size else socket.gethostname()
        address = (os.environ.get("MASTER_ADDR", default), int(os.environ.get("MASTER_PORT", 0)) or _free_port())
    address = comm.bcast(address, root=0)
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_RANK=str(local_rank),
        LOCAL_WORLD_SIZE=str(local_size),
        MASTER_ADDR=address[0],
        MASTER_PORT=str(address[1]),
    )


_device_choice = "auto"  # the --device of the command this process runs (`init`), for `current`


def init(timeout_minutes: float = 30.0, device_choice: str = "auto") -> DistEnv:
    """Join the process group this command was launched into (if any) and pick this rank's device
    (`device_choice` as in `resolve_device`: cpu keeps a GPU machine's ranks on the CPU).

    Idempotent: a second call returns the same answer. Threads: ranks sharing a CPU split its cores.
    """
    global _device_choice
    if dist.is_available() and dist.is_initialized():
        return current()
    device = resolve_device(device_choice)
    _device_choice = device_choice
    if _launched_by_mpi():
        _env_from_mpi()
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world_size > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend,
            init_method="env://",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=device if device.type == "cuda" else None,
        )
        if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
        log.info("rank %d of %d on %s (%s)", rank, world_size, device, backend)
    return DistEnv(rank, world_size, local_rank, device)


def current() -> DistEnv:
    """This process's place, without joining anything (a single CPU/GPU process if `init` was not called)."""
    if not (dist.is_available() and dist.is_initialized()):
        device = resolve_device(_device_choice)
        return DistEnv(device=torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def launched(device_choice: str = "auto") -> Iterator[DistEnv]:
    """`with launched(args.device):` around a training stage's work: join the launcher's ranks, always leave them."""
    global _device_choice
    try:
        yield init(device_choice=device_choice)
    finally:
        shutdown()
        _device_choice = "auto"


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of `tensor` over all ranks (a new tensor; the input is left alone)."""
    tensor = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if `flag` is true on any rank: keeps decisions such as 'skip this step' in step."""
    value = torch.tensor(float(flag), device=device)
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as rank `src` has it, on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (e.g. each rank's RNG state for a checkpoint)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()
