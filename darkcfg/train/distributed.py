"""torchrun support: one process per device, DDP, rank-0 logging and saving.

`torchrun --standalone --nproc-per-node N runner.py CFG --train ...` (or a multi-node torchrun)
sets RANK / WORLD_SIZE / LOCAL_RANK; `setup()` then joins the process group (NCCL on CUDA, gloo
on CPU) and picks this process's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from darkcfg.console import torchrun_job
from darkcfg.model import pick_device


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """Rank 0 logs, plots and writes every file."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return torchrun_job()[1] > 1


def setup(device_name: str | None) -> tuple[Dist, torch.device]:
    if not launched_by_torchrun():
        return Dist(), pick_device(device_name)
    rank, world, local_rank = torchrun_job()
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    global _joined
    _joined = True
    return Dist(rank, world, local_rank), device


_joined = False  # this process joined a process group (a torchrun worker): darkcfg.cli.main


def joined() -> bool:
    """Whether this process joined a torch.distributed process group (`setup` under torchrun)."""
    return _joined


#: what gloo says when the connection to another rank broke: that rank ended (its own error, a
#: signal), and the launcher, torchrun or that rank says why
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def peer_lost(exc: BaseException | None) -> bool:
    """Whether `exc`, or an exception it was raised while handling, is a collective that failed
    because another rank of the job ended (gloo's RuntimeError). A rank stopped so has nothing
    of its own to say; torch's agent then stops it with SIGTERM, which must not make it say
    "interrupted" (darkcfg.cli) either."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if isinstance(exc, RuntimeError) and "gloo" in text and any(
                gone in text for gone in _PEER_GONE):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def teardown(ctx: Dist) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: Dist, values: torch.Tensor) -> torch.Tensor:
    if ctx.enabled:
        values = values.clone()
        dist.all_reduce(values)
    return values


def broadcast_flag(ctx: Dist, flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (e.g. SIGTERM seen by one process)."""
    if not ctx.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def parameter_fingerprints(ctx: Dist, module: torch.nn.Module) -> list[str]:
    """Every rank's hash of its parameters (rank order): DDP keeps them equal. (Buffers such as
    BN statistics are each rank's own until the next forward broadcasts rank 0's.)"""
    import hashlib

    digest = hashlib.sha256()
    for t in module.parameters():
        digest.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    mine = digest.hexdigest()
    if not ctx.enabled:
        return [mine]
    gathered: list[str] = [""] * ctx.world
    dist.all_gather_object(gathered, mine)
    return gathered
