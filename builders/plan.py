"""Which layer outputs a forward pass keeps, and when each is dropped: one planner for
`Network.forward` and for the memory estimate's peak (`builders.memory`). Torch-free: it works on
layer indices and sizes only."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class LivenessPlan:
    store: frozenset[int]  # outputs kept after their layer ran (read later, or returned)
    free_after: tuple[tuple[int, ...], ...]  # free_after[i]: outputs dropped once layer i ran

    def peak(self, sizes: Sequence[int], input_size: int) -> int:
        """Most values alive at once: the current input and output, plus the outputs kept for
        later layers or as network outputs."""
        live: dict[int, int] = {}
        held = 0  # the sum of live's sizes
        peak = 0
        previous = max(input_size, 0)
        for i, size in enumerate(sizes):
            size = max(size, 0)
            held_input = 0 if (i - 1) in live else previous
            peak = max(peak, held_input + size + held)
            if i in self.store:
                live[i] = size
                held += size
            for j in self.free_after[i]:
                held -= live.pop(j)
            previous = size
        return peak


def plan_liveness(sources: Sequence[Sequence[int]], keep: Iterable[int]) -> LivenessPlan:
    """`sources[i]`: the earlier layers layer i reads besides its input; `keep`: the outputs the
    caller wants back (never dropped)."""
    keep = set(keep)
    last_use: dict[int, int] = {}
    for i, srcs in enumerate(sources):
        for j in srcs:
            last_use[j] = i
    free: list[list[int]] = [[] for _ in sources]
    for j, i in last_use.items():
        if j not in keep:
            free[i].append(j)
    return LivenessPlan(frozenset(last_use) | keep, tuple(tuple(f) for f in free))
