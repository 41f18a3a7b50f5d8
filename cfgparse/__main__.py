"""`python -m cfgparse check ...` runs the cfg checker (cfgparse.check)."""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["check"]:
        from .check import main as check_main

        return check_main(argv[1:])
    print("usage: python -m cfgparse check [--format text|json|github|sarif] [--strict] "
          "[--no-build] [--max-memory SIZE] FILE...", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
