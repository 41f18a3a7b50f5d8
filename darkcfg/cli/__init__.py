"""darkcfg's command line: `darkcfg COMMAND ...`, one module per command, and the flag form of
runner.py (`darkcfg CFG --train ...`, darkcfg.cli.flags), kept as a thin translation.

Each command module has `main(argv: list[str]) -> int`: it parses its own arguments into typed
options (`parse(argv)`, a dataclass) and runs them (`run(options)`) with library functions that
never see argparse; `darkcfg.cli.common.guarded` turns bad input into diagnostics and exit 2
for all of them. Modules load on first use, so that `darkcfg check` stays torch-free."""

from __future__ import annotations

import importlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import NoReturn

from cfgparse.errors import tolerant_output
from darkcfg.stopping import drop_hung_up_terminal, end_process, stop_signals

#: command -> the module whose main(argv) runs it.
COMMANDS = {
    "train": "darkcfg.cli.train",
    "valid": "darkcfg.cli.valid",
    "predict": "darkcfg.cli.predict",
    "detect": "darkcfg.cli.detect",
    "export": "darkcfg.cli.export",
    "emit": "darkcfg.cli.emit",
    "summary": "darkcfg.cli.summary",
    "weights": "darkcfg.cli.weights",
    "check": "darkcfg.lint.cli",
    "data": "darkcfg.cli.data",
    "anchors": "darkcfg.cli.anchors",
}


#: command -> what it does, for `darkcfg --help` (torch-free: no command module is imported).
SUMMARIES = {
    "train": "train a cfg with its [net] settings (classifier or detector data)",
    "valid": "top-1/top-5, or mAP and the per-class AP table, of a cfg and its weights",
    "predict": "a classifier's top classes for images",
    "detect": "objects in images, folders, videos, streams and cameras",
    "export": "ONNX (checked with onnxruntime; --int8) or a torch.export program",
    "emit": "one readable PyTorch file (class Net) for a cfg",
    "summary": "Darknet's layer table of a cfg; --plot-lr PNG draws its lr schedule",
    "weights": "convert or cut Darknet .weights; dump layer outputs",
    "check": "lint cfg files: syntax, schema, graph, memory (CI)",
    "data": "convert and check detection data sets",
    "anchors": "fit anchors to a detector's training labels",
}


def top_help() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: darkcfg COMMAND CFG [options]    a command's options: darkcfg COMMAND --help",
        "       darkcfg CFG --train|--detect|... runner.py's flag form: darkcfg CFG --help",
        "",
        "Build, train and run Darknet .cfg models with PyTorch.",
        "",
        "commands:",
        *(f"  {name:{width}}  {SUMMARIES[name]}" for name in COMMANDS),
        "",
        "options:",
        "  -h, --help   this list",
        "  --version    the installed version",
        "",
        docs_line(),
    ]
    return "\n".join(lines)


def docs_line() -> str:
    from darkcfg.bundled import docs_folder

    folder = docs_folder()
    if folder is None:  # installed without its data files
        return "docs: README.md and docs/commands.md in darkcfg's source"
    return f"docs: {folder / 'README.md'} and {folder / 'docs' / 'commands.md'}"


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("darkcfg")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def run() -> NoReturn:
    """The process's entry point (the `darkcfg` script, `python -m darkcfg`, runner.py): main(),
    then the process ends with its code, a stop signal until the last moment exit 130
    (darkcfg.stopping.end_process)."""
    try:
        code = main()
    except KeyboardInterrupt:  # (a stop in the instant after the command returned)
        code = 130
    end_process(code)


def main(argv: list[str] | None = None) -> int:
    """Run `darkcfg ARGV` and return its exit code (library callers and tests go on). A
    torchrun worker (it joined a process group) ends here instead: DDP leaves gloo's threads
    running, and the interpreter's teardown under them aborted a finished worker now and then
    ("terminate called without an active exception", exit -6: one CI run in 30)."""
    tolerant_output()  # (a closed stderr before the first usage error too)
    _stop_on_sigterm()
    # Pillow's DecompressionBombWarning (an image of 1-2x its 89M-pixel limit: an aerial photo
    # reads fine) is a raw Python warning line with a PIL source line; past 2x it refuses the
    # image, which is a located E901
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")
    # Pillow's EXIF and TIFF tag reader says a damaged tag ("Corrupt EXIF data", "Tag data
    # larger than file") as raw UserWarning lines with its source line, and skips the tag: the
    # pixels read (or are a W901), as OpenCV's reader reads them, silently
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")
    try:
        code = dispatch(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C while a command's modules (torch) are still loading
        print("interrupted", file=sys.stderr)
        code = 130
    distributed = sys.modules.get("darkcfg.train.distributed")  # loaded only if a run used it
    if distributed is not None and distributed.joined():
        end_process(code)
    return code


def _stop_on_sigterm() -> None:
    """SIGTERM and SIGHUP (a scheduler, `kill`, a container stopping, a closed terminal) stop a
    command as Ctrl-C does: its temp files removed, nothing half-written under a final name,
    "interrupted", exit 130. Training's loop takes them over for a clean stop at the end of an
    iteration. Left alone where something else already handles or ignores them (`nohup`), or
    off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in stop_signals():
        if sig != signal.SIGINT and signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _interrupt)


def _interrupt(signum, frame):
    drop_hung_up_terminal(signum)
    distributed = sys.modules.get("darkcfg.train.distributed")
    if distributed is not None and distributed.joined() and \
            distributed.peer_lost(sys.exc_info()[1]):
        # torch's agent stops the other ranks once one ended: this rank is already ending
        # with that (its collective failed), not "interrupted" by the user
        return
    raise KeyboardInterrupt


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "--version"):
        from darkcfg.cli.common import guarded  # (for a stdout that takes no more)

        return guarded(lambda: top_level(argv))
    if argv[0] in COMMANDS:
        from darkcfg.cli.common import guarded

        module = importlib.import_module(COMMANDS[argv[0]])
        return guarded(lambda: module.main(argv[1:]))
    if not argv[0].startswith("-") and not looks_like_a_model(argv[0]):
        from cfgparse.errors import did_you_mean
        from darkcfg.cli.common import usage_error

        guess = did_you_mean(argv[0], COMMANDS)
        error = usage_error(f"'{argv[0]}' is neither a command nor a cfg file",
                            hint=(f"{guess}; " if guess else "")
                            + "commands: " + ", ".join(COMMANDS))
        print(error.first.format(), file=sys.stderr)
        return 2
    from darkcfg.cli.flags import main as flag_form

    return flag_form(argv)


def top_level(argv: list[str]) -> int:
    """`darkcfg`, `darkcfg --help`, `darkcfg --version`."""
    if argv and argv[0] == "--version":
        print(f"darkcfg {version()}")
        return 0
    # bare `darkcfg` is a usage error: the list goes where errors go
    print(top_help(), file=sys.stdout if argv else sys.stderr)
    return 0 if argv else 2


def looks_like_a_model(arg: str) -> bool:
    """The flag form's first argument: an existing file, or a name that says cfg/YAML (a
    missing one then gets the flag form's own located error)."""
    return Path(arg).exists() or Path(arg).suffix.lower() in (".cfg", ".yaml", ".yml")


__all__ = ["COMMANDS", "SUMMARIES", "main", "run", "top_help"]
