"""Corpus parse throughput, and its time ratio to a naive str.split line reader.

    python bench/parse.py [--repeat N] [--corpus DIR] [--profile]

Both parsers read the same in-memory texts (no file I/O in the timed part). Time is this
process's CPU time (a shared machine's other jobs do not count), and each figure is the minimum
over N interleaved repeats, so background load inflates neither side. The naive reader keeps no
positions, types nothing and reports nothing: it is the floor a line-based parser cannot beat.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from cfgparse import parse_text
from cfgparse.schema import clear_memos

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "darknet" / "corpus"


def naive_parse(text: str) -> list[tuple[str, dict[str, str]]]:
    """The baseline: splitlines, strip, '[' opens a section, partition on '='."""
    sections: list[tuple[str, dict[str, str]]] = []
    options: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            options = {}
            sections.append((line, options))
            continue
        key, _, value = line.partition("=")
        options.setdefault(key.strip(), value.strip())
    return sections


def load_texts(corpus: Path) -> list[tuple[str, str]]:
    files = sorted(corpus.glob("*/*.cfg"))
    return [(str(f), f.read_text(encoding="utf-8")) for f in files]


def best_time(fn, texts: list[tuple[str, str]], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.process_time()
        for path, text in texts:
            fn(text, path)
        best = min(best, time.process_time() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=7, help="repeats; the minimum is reported")
    ap.add_argument("--corpus", type=Path, default=CORPUS, help="folder of */*.cfg files")
    ap.add_argument("--profile", action="store_true", help="cProfile one darkcfg pass")
    args = ap.parse_args(argv)
    texts = load_texts(args.corpus)
    if not texts:
        print(f"no cfg files under {args.corpus}", file=sys.stderr)
        return 2
    lines = sum(text.count("\n") + 1 for _, text in texts)
    parse_text(texts[0][1], texts[0][0])  # builds the LALR tables once, outside the timing

    def ours(text: str, path: str) -> None:
        parse_text(text, path)

    def ours_cold(text: str, path: str) -> None:
        clear_memos()  # no line cache carried over from earlier files or repeats
        parse_text(text, path)

    def naive(text: str, path: str) -> None:
        naive_parse(text)

    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
        best_time(ours, texts, 1)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    # interleave so that all sides see the same machine load
    t_cold = t_warm = t_naive = float("inf")
    for _ in range(args.repeat):
        t_naive = min(t_naive, best_time(naive, texts, 1))
        t_cold = min(t_cold, best_time(ours_cold, texts, 1))
        t_warm = min(t_warm, best_time(ours, texts, 1))
    print(f"corpus: {len(texts)} files, {lines} lines (min of {args.repeat} repeats, CPU time)")
    print(f"darkcfg parse, cold:  {t_cold * 1e3:8.1f} ms  {lines / t_cold:12,.0f} lines/s"
          "  (line cache emptied before each file)")
    print(f"darkcfg parse, warm:  {t_warm * 1e3:8.1f} ms  {lines / t_warm:12,.0f} lines/s"
          "  (line cache kept across files)")
    print(f"naive str.split:      {t_naive * 1e3:8.1f} ms  {lines / t_naive:12,.0f} lines/s")
    print(f"ratio: {t_cold / t_naive:.1f}x the naive parser cold, {t_warm / t_naive:.1f}x warm "
          "(target <= 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
