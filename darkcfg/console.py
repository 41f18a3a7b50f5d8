"""The one home of the lines darkcfg says on stderr besides its errors: `say` (what a command
does: the data it reads, a file it wrote) and `warn` (what the user should look at).

Under torchrun every rank runs the same command and reads the same data, so these lines come
from the main process alone (rank 0); errors (located diagnostics, exit 2) are printed by the
rank where they happen, so a rank that fails says why, and one every rank hits by rank 0 alone
(darkcfg.train.distributed.error_said_by_rank_0). Torch-free: the rank is read from torchrun's
environment, or from torch.distributed only when the program has imported it."""

from __future__ import annotations

import os
import re
import sys

# a line that already says it is a warning: "warning: ...", "warning[W903]: ...", or a located
# W diagnostic ("path:line:col: warning[W901]: ...", cfgparse.errors)
_WARNING_LINE = re.compile(r"warning[:\[]|[^\n]*: warning\[W\d+\]: ")


def torchrun_job() -> tuple[int, int, int]:
    """(rank, world size, local rank) that torchrun gave this process in its environment
    (RANK, WORLD_SIZE, LOCAL_RANK, set before a rank starts: what it says before it joins the
    group, the data scan, counts, and so do its loader processes, which inherit them); (0, 1, 0)
    outside a job. A WORLD_SIZE of 1 or less, or values that are not whole numbers (torchrun
    writes them), are no job: the command runs alone (darkcfg.train.distributed)."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:
            return int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        pass
    return 0, 1, 0


def rank() -> int:
    """This process's rank in a torch.distributed job, 0 outside one: a joined group's rank,
    else torchrun's (torchrun_job)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return torchrun_job()[0]


def is_main() -> bool:
    """Whether this process says the info and warning lines (rank 0, or no distributed job)."""
    return rank() == 0


def say(message: str) -> None:
    """An info line on stderr, from the main process only."""
    if is_main():
        _write(message)


_said: set[str] = set()  # the `once` warnings this process has said


def warn(message, every_rank: bool = False, once: bool = False) -> None:
    """A warning on stderr, from the main process only: `message` is prefixed `warning: ` unless
    it already says it is one; a Diagnostic (a W code) is printed in its own format.
    `every_rank`: a finding about this rank's own share of the data (an image only it read),
    which rank 0 cannot say for it. `once`: not again in this process (a setting every loader
    start would repeat)."""
    if every_rank or is_main():
        text = message if isinstance(message, str) else message.format()
        if once:
            if text in _said:
                return
            _said.add(text)
        _write(text if _WARNING_LINE.match(text) else f"warning: {text}")


def _write(text: str) -> None:
    # a progress bar on screen: the line goes above it (tqdm.write clears and redraws the bar)
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None and getattr(tqdm.tqdm, "_instances", None):
        tqdm.tqdm.write(text, file=sys.stderr)  # (stderr is line-buffered: no flush needed)
    else:
        print(text, file=sys.stderr, flush=True)
