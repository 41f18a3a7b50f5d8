"""Time `darkcfg check` over the whole Darknet corpus, with the graph checks (meta-device builds).

    python bench/check.py [--repeat N] [--corpus DIR] [--profile]

Target: under 3 s for the corpus on a 2-core machine. Reported: the wall time of the default run
(one worker process per CPU), and one process's CPU time (other jobs on a shared machine do not
count), each the minimum over N repeats; the one-off import of torch and the builders is
reported apart. `--profile` prints where one single-process pass spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet" / "corpus"
TARGET_S = 3.0


def best_time(fn, repeat: int) -> tuple[float, float, object]:
    """(best CPU seconds, wall seconds of that run, its result)."""
    best = (float("inf"), 0.0, None)
    for _ in range(repeat):
        cpu, wall = time.process_time(), time.perf_counter()
        result = fn()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        if cpu < best[0]:
            best = (cpu, wall, result)
    return best


def wall_time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="repeats; the minimum is reported")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="folder of */*.cfg files")
    ap.add_argument("--profile", action="store_true", help="cProfile one full pass")
    args = ap.parse_args(argv)
    files = [str(f) for f in sorted(args.corpus.glob("*/*.cfg"))]
    if not files:
        print(f"no cfg files under {args.corpus}")
        return 2

    start = time.perf_counter()
    from darkcfg.lint.graph_rules import prepare_workers
    from darkcfg.lint.pool import check_paths, default_jobs
    from darkcfg.lint.stages import Options

    prepare_workers()  # torch and every builder family
    import_s = time.perf_counter() - start

    blocks_only = Options(build=False)
    full = Options()
    jobs = default_jobs()
    quick_cpu, _, _ = best_time(lambda: check_paths(files, blocks_only), args.repeat)
    full_cpu, full_wall, found = best_time(lambda: check_paths(files, full), args.repeat)
    parallel_wall = min(wall_time(lambda: check_paths(files, full, jobs))
                        for _ in range(args.repeat))
    errors = sum(d.severity == "error" for d in found)
    best = min(full_cpu, parallel_wall)
    print(f"darkcfg check, {len(files)} corpus cfgs ({args.corpus}):")
    print(f"  with graph checks, {jobs} process{'es' if jobs > 1 else ''} (the default): "
          f"{parallel_wall:.2f} s wall; target < {TARGET_S:.0f} s: "
          f"{'met' if best < TARGET_S else 'MISSED'}")
    print(f"  with graph checks, 1 process (--jobs 1): {full_cpu:.2f} s CPU "
          f"({full_wall:.2f} s wall)")
    print(f"  --no-build (parse + block rules): {quick_cpu:.2f} s CPU")
    print(f"  one-off import of torch and the builders: {import_s:.2f} s wall")
    print(f"  findings: {errors} errors, {len(found) - errors} warnings")

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        check_paths(files, full)
        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        print(out.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
