"""torchrun support: one process per device, DDP, rank-0 logging and saving.

`torchrun --standalone --nproc-per-node N runner.py CFG --train ...` (or a multi-node torchrun)
sets RANK / WORLD_SIZE / LOCAL_RANK; `setup()` then joins the process group (NCCL on CUDA, gloo
on CPU) and picks this process's device.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from darkcfg.console import torchrun_job
from darkcfg.model import pick_device
from darkcfg.stopping import stop_signals, takes_over


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
    global _joined, _store
    _joined = True
    # kept past destroy_process_group: an error every rank hits is said once (see below);
    # torch's own accessor is private: without it each rank says its error, as before
    try:
        _store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        _store = None
    return Dist(rank, world, local_rank), device


_joined = False  # this process joined a process group (a torchrun worker): darkcfg.cli.main
_store = None  # the job's key-value store (torchrun's), from `setup`


def joined() -> bool:
    """Whether this process joined a torch.distributed process group (`setup` under torchrun)."""
    return _joined


#: what gloo says when the connection to another rank broke: that rank ended (its own error, a
#: signal), and the launcher, torchrun or that rank says why
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


#: the exit code of a rank that `peer_lost` stopped
PEER_LOST_EXIT = 1


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


#: how long a rank other than 0 waits for rank 0's error before it says its own: ranks that read
#: the same data fail within a second of each other; an error of this rank alone (rank 0 then
#: waits in a collective) is said this much later
SHARED_ERROR_WAIT_S = 5.0
_ERROR_KEY = "darkcfg/rank-0-error"


def error_said_by_rank_0(text: str, wait_s: float | None = None) -> bool:
    """Whether rank 0 says this rank's error `text` (its lines as printed) for it, so that an
    error every rank hits (a data set that does not read) is said once, not once a rank. Rank
    0 posts its error and says it (False); another rank waits for rank 0's (SHARED_ERROR_WAIT_S
    or `wait_s` at most, less when a stop signal comes: torch's agent stops the other ranks
    once rank 0 has failed) and stays silent if it is the same. False outside a joined group,
    or where the job's store cannot be reached (each rank then says its own)."""
    if not _joined or _store is None:
        return False
    rank = torchrun_job()[0] if not dist.is_initialized() else dist.get_rank()
    try:
        if rank == 0:
            _store.set(_ERROR_KEY, text)
            return False
        return _rank_0_error(SHARED_ERROR_WAIT_S if wait_s is None else wait_s) == text
    except Exception:  # noqa: BLE001 - the store went with rank 0 (a torchrun of its own)
        return False


def _rank_0_error(wait_s: float) -> str | None:
    """Rank 0's posted error, waiting up to `wait_s` (a stop signal ends the wait, and is not
    passed on: this rank is already ending with its error)."""
    stopped: list[int] = []
    old = {}
    try:
        for sig in stop_signals():
            if takes_over(sig):
                old[sig] = signal.signal(sig, lambda signum, frame: stopped.append(signum))
    except ValueError:  # not the main thread: no signal ends the wait early
        pass
    try:
        deadline = time.monotonic() + wait_s
        while not _store.check([_ERROR_KEY]):
            if stopped or time.monotonic() >= deadline:
                if not _store.check([_ERROR_KEY]):
                    return None
                break
            time.sleep(0.02)
        return _store.get(_ERROR_KEY).decode("utf-8", "replace")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


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
