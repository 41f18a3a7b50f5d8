"""What every command shares: the model arguments (cfg, --set, --flavor, --seed, --device,
--weights, --cutoff) parsed into a `darkcfg.model.ModelSpec`, and the one error handler that turns
bad input into located diagnostics and exit status 2 (never a traceback). Torch-free."""

from __future__ import annotations

import argparse
import errno
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from cfgparse import CfgError, Diagnostic
from cfgparse.errors import STDOUT, stdout_error, tolerant_output
from cfgparse.usage import CommandParser
from darkcfg.lint.cli import memory_size

__all__ = ["add_model_arguments", "command_parser", "guarded", "model_spec",
           "memory_size", "model_inputs", "refuse_overwriting_inputs", "require_png",
           "usage_error"]


def command_parser(command: str, description: str) -> argparse.ArgumentParser:
    return CommandParser(prog=f"darkcfg {command}", description=description)


def add_model_arguments(p: argparse.ArgumentParser, weights: bool = True) -> None:
    """The cfg and the options that say which network to build (ModelSpec)."""
    p.add_argument("cfg", help="the .cfg (or .yaml) model")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a [net] key (repeatable), e.g. --set batch=64; "
                        "SECTION.KEY=VALUE sets KEY in every [SECTION], e.g. "
                        "--set convolutional.batch_normalize=1")
    p.add_argument("--flavor", choices=("alexeyab", "pjreddie"), default="alexeyab",
                   help="which Darknet's formulas to follow (default alexeyab)")
    p.add_argument("--seed", type=int, help="seed for weights, data, order (0; valid and predict "
                   "of a run's weights: the run's seed)")
    p.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, mps (default: CUDA, else MPS, else CPU)")
    if weights:
        p.add_argument("--weights", default=None, metavar="W",
                       help="Darknet .weights (partial ok) or a torch state_dict / checkpoint")
        p.add_argument("--cutoff", type=int, default=None, metavar="N",
                       help="read/write only the first N layers' weights")
        p.add_argument("--partial", action="store_true",
                       help="--weights (a torch state_dict or checkpoint) may leave tensors of the "
                       "network unfilled: load the matching ones (transfer learning)")


def model_spec(args: argparse.Namespace):
    """darkcfg.model.ModelSpec from the model arguments (imported here: torch comes with it, and
    `darkcfg check` goes through this module without torch)."""
    from darkcfg.model import ModelSpec

    cutoff = getattr(args, "cutoff", None)
    if cutoff is not None and cutoff < 0:
        raise usage_error(f"--cutoff {cutoff}: a layer count is 0 or more")
    if getattr(args, "weights", None) is None:  # they shape how --weights loads: alone, unused
        if getattr(args, "partial", False):
            raise usage_error("--partial needs --weights", hint="give the --weights file to "
                              "load partially (a torch state_dict or checkpoint)")
        if cutoff is not None:
            raise usage_error(f"--cutoff {cutoff} needs --weights", hint="give the --weights "
                              "file whose first layers to load")
    return ModelSpec(cfg=args.cfg, sets=tuple(args.set), flavor=args.flavor,
                     seed=0 if args.seed is None else args.seed,
                     weights=getattr(args, "weights", None), cutoff=cutoff, device=args.device,
                     partial=getattr(args, "partial", False))


def model_inputs(model) -> dict[str, object]:
    """The files a ModelSpec reads, for refuse_overwriting_inputs."""
    return {"the cfg": model.cfg, "the --weights file": model.weights}


def usage_error(message: str, hint: str = "see --help") -> CfgError:
    """A problem with the command line itself (E100): no file or line to point at."""
    return CfgError(Diagnostic("E100", message, "<command line>", hint=hint))


def refuse_overwriting_inputs(outputs: dict[str, object], inputs: dict[str, object]) -> None:
    """No file a command writes is one it reads: `outputs` {flag: path} against `inputs`
    {what: path} (the cfg, --weights, --input, a data file), links followed. Raises E100 before
    any work: darkcfg never writes over its inputs (a `--save-weights` onto the cfg would
    replace it with binary weights)."""
    for flag, out in outputs.items():
        for what, source in inputs.items():
            if out and source and _same_file(out, source):
                raise usage_error(f"{flag} '{out}' is {what} this command reads: writing it "
                                  "would destroy it", hint=f"give {flag} another path")


def refuse_plot_over_images(flag: str, plot, images) -> None:
    """A plot is no image of the data set the command read (a PNG of the set named as the
    --plot): E100 before it is written. Only an existing plot can be one."""
    if plot is not None and os.path.exists(plot):
        refuse_overwriting_inputs({flag: plot}, {f"the image '{image}' of the data set": image
                                                 for image in images})


def parse_wxh(flag: str, text: str) -> tuple[int, int]:
    """A `--size WxH` value (`data check`, `anchors`): two positive integers."""
    w, x, h = text.lower().partition("x")
    # (ASCII digits: '²'.isdigit() is true and int('²') a ValueError)
    if not x or not (w + h).isascii() or not w.isdigit() or not h.isdigit() or int(w) < 1 \
            or int(h) < 1:
        raise CfgError(Diagnostic("E100", f"{flag} {text}: not WxH (two positive integers)",
                                  flag, hint=f"e.g. {flag} 416x416"))
    return int(w), int(h)


def require_png(flag: str, path) -> None:
    """A plot flag names a .png: any other name (an image or label file of the data set, say)
    is refused before it is written over."""
    if path is not None and Path(path).suffix.lower() != ".png":
        raise usage_error(f"{flag} '{path}': the plot is a PNG file", hint=f"name it "
                          f"{Path(path).with_suffix('.png').name}")


def _same_file(a: object, b: object) -> bool:
    try:
        return os.path.samefile(os.fspath(a), os.fspath(b))
    except (OSError, TypeError, ValueError):  # either one missing or unreadable: not the same
        return False




def file_error(exc: OSError) -> CfgError:
    """An OSError as a located E901: the file it names and the system's reason."""
    if exc.filename is None and exc.errno in (errno.EMFILE, errno.ENFILE):
        # no file was wrong: the limit was ('<file>: ... Too many open files: '<file>'')
        return CfgError(Diagnostic("E901", exc.strerror or "Too many open files",
                                   "<open files>", hint=_open_files_hint(exc.errno)))
    path = exc.filename if exc.filename is not None else "<file>"
    reason = exc.strerror or str(exc) or type(exc).__name__
    also = f" (and '{exc.filename2}')" if exc.filename2 is not None else ""
    hint = {errno.EACCES: "check the file's and its folder's permissions",
            errno.EPERM: "check the file's and its folder's permissions",
            errno.EISDIR: "name a file, not a folder",
            errno.ENOTDIR: "a part of the path is a file, not a folder",
            errno.ENOSPC: "free some space (or write elsewhere)",
            errno.EMFILE: _open_files_hint(errno.EMFILE),
            errno.ENFILE: _open_files_hint(errno.ENFILE),
            errno.ENOENT: "check the path"}.get(exc.errno, "check the path")
    if path == STDOUT:  # the name a failed write to stdout gets (_NamedStdout)
        return CfgError(stdout_error(exc))
    return CfgError(Diagnostic("E901", f"{reason}: '{path}'{also}", str(path), hint=hint))


def _open_files_hint(number: int) -> str:
    if number == errno.ENFILE:
        return "the system's table of open files is full: close other programs, or use fewer " \
               "--workers"
    return (f"raise the limit on open files (ulimit -n, now {_open_files_limit()}) or use fewer "
            "--workers (each loader process holds files)")


def _open_files_limit() -> str:
    try:
        import resource

        return str(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    except (ImportError, OSError, ValueError):
        return "?"


class _NamedStdout:
    """sys.stdout while a command runs: a write that fails (`> /dev/full`, a full disk under a
    redirect) names '<stdout>', so that its diagnostic says where, not '<file>' or whatever
    the command was doing (detect called it an image it could not read)."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, text):  # (what stdout cannot encode, it escapes: tolerant_output)
        return self._named(self.stream.write, text)

    def flush(self):
        return self._named(self.stream.flush)

    @staticmethod
    def _named(call, *args):
        try:
            return call(*args)
        except OSError as exc:
            if exc.filename is None:
                exc.filename = STDOUT
            raise

    def __getattr__(self, name):
        return getattr(self.stream, name)


def _stdout_to_devnull() -> None:
    """After stdout failed: nothing more goes there, so the flush at exit cannot fail again
    (Python would print 'Exception ignored' and exit 120)."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def guarded(run: Callable[[], int]) -> int:
    """Run a command: bad input (CfgError, a DataError from a loader worker) prints its
    diagnostics and returns 2; a non-finite loss returns 1; Ctrl-C 130; a closed stdout
    (`darkcfg summary CFG | head`) 0; a stdout that takes no more (`> /dev/full`) E901 at
    <stdout>, 2. Every command goes through here."""
    tolerant_output()
    stdout = sys.stdout
    if stdout is not None and not isinstance(stdout, _NamedStdout):
        sys.stdout = _NamedStdout(stdout)
    try:
        return _guarded(run)
    finally:
        sys.stdout = stdout


def _guarded(run: Callable[[], int]) -> int:
    try:
        code = int(run() or 0)
        if sys.stdout is not None:  # its last lines, here where a failure is said: at exit it
            sys.stdout.flush()  # was Python's "Exception ignored", exit 120 (> /dev/full, | head)
        return code
    except CfgError as exc:
        if exc.diagnostics:
            _say_error("\n".join(d.format() for d in exc.diagnostics))
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left early
        _stdout_to_devnull()
        return 0
    except OSError as exc:  # a file the checks before it could not foresee (permissions, a
        # folder where a file was expected, a full disk): the path and the reason, no traceback
        if _loader_died(exc):  # (a ConnectionResetError was "<file>: ... check the path")
            return 1
        print(file_error(exc).first.format(), file=sys.stderr)
        if exc.filename == STDOUT:
            _stdout_to_devnull()
        return 2
    except Exception as exc:
        # only modules already loaded can have raised these (and `check` stays torch-free)
        base, loop = sys.modules.get("darkcfg.data.base"), sys.modules.get("darkcfg.train.loop")
        if base is not None and isinstance(exc, base.DataError):
            # from a loader worker the message carries the worker's traceback: keep the gist
            text = str(exc).strip().splitlines()
            message = text[-1].split("DataError: ")[-1] if text else str(exc)
            quoted = re.search(r"'([^']+)'", message)  # the file the message names
            _say_error(Diagnostic("E901", message, quoted.group(1) if quoted else "<data>",
                                  hint="fix or remove that file from the data").format())
            return 2
        dynamo = sys.modules.get("torch._dynamo.exc")
        if dynamo is not None and isinstance(exc, dynamo.TorchDynamoException):
            first = next((li for li in str(exc).splitlines() if li.strip()), type(exc).__name__)
            print(Diagnostic("E100", f"torch.compile could not compile this network "
                             f"({first}); the run stopped and its last checkpoint (if any) is "
                             "kept", "--compile", hint="run (or --resume) without --compile; on "
                             "the CPU it was slower than eager anyway (docs/training.md)"
                             ).format(), file=sys.stderr)
            return 2
        if _loader_died(exc):
            return 1
        if _out_of_memory(exc):
            return 2
        if "Too many open files" in str(exc):  # torch's loader says it as a RuntimeError
            print(file_error(OSError(errno.EMFILE, "Too many open files")).first.format(),
                  file=sys.stderr)
            return 2
        if loop is not None and isinstance(exc, loop.NonFiniteLoss):
            _say_error(Diagnostic("E500", f"{exc}; training stopped, the last good checkpoint "
                                  "(if any) is kept", "<training>", hint="lower learning_rate or "
                                  "check the data, then --resume").format())
            return 1
        distributed = sys.modules.get("darkcfg.train.distributed")
        if distributed is not None and distributed.joined() and distributed.peer_lost(exc):
            # another rank ended (its error, a signal): it, torchrun or `train --processes` says
            # why; this rank's failed collective (gloo's traceback) says nothing more
            return distributed.PEER_LOST_EXIT
        raise


def _say_error(text: str) -> None:
    """An error's lines on stderr. In a rank of a torch.distributed job, an error every rank
    hits (a data set that does not read) is rank 0's to say; an error of this rank's own is
    said here (darkcfg.train.distributed.error_said_by_rank_0)."""
    distributed = sys.modules.get("darkcfg.train.distributed")
    if distributed is not None and distributed.joined() and \
            distributed.error_said_by_rank_0(text):
        return
    print(text, file=sys.stderr)


def _out_of_memory(exc: BaseException) -> bool:
    """E401 for memory the command could not get (a MemoryError, torch's allocator under `ulimit
    -v`, a container's limit, a GPU's): it was torch's traceback from deep inside a layer."""
    text = str(exc)
    torch = sys.modules.get("torch")
    if not (isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in text
            or (torch is not None and isinstance(exc, torch.OutOfMemoryError))):
        return False
    tried = re.search(r"tried to allocate (\d+) bytes", text)
    if tried:
        from builders.memory import format_bytes

        what = f"could not allocate {format_bytes(int(tried.group(1)))}"
    else:
        what = text.strip().splitlines()[0] if text.strip() else "no memory left"
    print(Diagnostic("E401", f"out of memory: {what}; the command stopped (a training run keeps "
                     "its last checkpoint)", "<memory>", hint="use a smaller width, height or "
                     "batch (--set), or give the process more memory (ulimit -v, the "
                     "container's limit)").format(), file=sys.stderr)
    return True


def _loader_died(exc: BaseException) -> bool:
    """E501 for a DataLoader process that died under the command (the out-of-memory killer,
    a kill -9) or could not pass a batch over (a full /dev/shm): torch's traceback, or
    '<file>: Connection reset by peer', before."""
    base = sys.modules.get("darkcfg.data.base")
    how, hint = base.loader_death(exc) if base is not None else ("", "")
    if how:
        print(Diagnostic("E501", f"{how}; the command stopped (a training run keeps its last "
                         "checkpoint)", "<data loader>", hint=hint).format(), file=sys.stderr)
    return bool(how)


def add_run_arguments(p, verb: str, need: str) -> None:
    """--no-progress, --max-memory, --force: the same for every command that runs a network
    (`verb` the run, "detect"; `need` what is estimated, "whose inference is estimated to
    need")."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--max-memory", type=memory_size, default=None, metavar="SIZE",
                   help=f"refuse a network {need} more (e.g. 8G; default: the device's "
                   "memory)")
    p.add_argument("--force", action="store_true",
                   help=f"{verb} even when the memory estimate is over --max-memory")
