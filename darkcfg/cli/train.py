"""`darkcfg train CFG [--data SRC] [--out DIR] [--resume [CKPT]] ...`: train with the [net]
settings (darkcfg.train.session). `torchrun --standalone --nproc-per-node N -m darkcfg train CFG`
trains on N processes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from darkcfg.cli.common import (
    add_model_arguments,
    add_run_arguments,
    command_parser,
    guarded,
    model_spec,
)

if TYPE_CHECKING:  # (torch comes with them: `--help` stays quick)
    from darkcfg.model import ModelSpec


def add_data_arguments(p) -> None:
    """Where samples come from (train, valid, predict)."""
    p.add_argument("--data", default=None, metavar="SRC",
                   help="FOLDER (ImageFolder), X.data (Darknet), X.csv (flat inputs), digits or "
                   "torchvision:NAME:ROOT; detectors: X.data, data.yaml, a COCO .json or a VOC "
                   "folder; default: the embedded dataset")
    p.add_argument("--classes", type=int, default=None, metavar="N",
                   help="embedded data: only the first N of the network's classes (default all)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="DataLoader processes (default: sized to the machine)")
    amp = p.add_mutually_exclusive_group()
    amp.add_argument("--amp", action="store_true",
                     help="mixed precision on the CPU too (bfloat16 autocast, channels-last; "
                     "fast where the CPU has AMX or AVX512-BF16)")
    amp.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")


def add_map_points(p) -> None:
    p.add_argument("--map-points", type=int, choices=(0, 11, 101), default=None, metavar="N",
                   help="detectors' AP: 0 all-point (default, Darknet's), 11 (VOC2007), 101")


def add_schedule_arguments(p) -> None:
    p.add_argument("--out", default=None, metavar="DIR", help="run folder (runs/<cfg-name>)")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="CKPT",
                   help="continue from DIR/checkpoint.pt (or CKPT)")
    p.add_argument("--freeze", type=int, default=0, metavar="N",
                   help="do not train layers 0..N-1 (Darknet stopbackward)")
    p.add_argument("--save-every", type=int, default=0, metavar="N",
                   help="also write <cfg>_<N>.weights every N iterations")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="N",
                   help="checkpoint + <cfg>_last.weights every N iterations (100)")
    p.add_argument("--valid-every", type=int, default=None, metavar="N",
                   help="validate every N iterations (default: 4 times per run; 0: never)")
    p.add_argument("--darknet-build", choices=("opencv", "native"), default=None,
                   help="detectors: augment as Darknet built with OpenCV does (default, the "
                   "usual build) or as one built without it (OPENCV=0: edge-repeating pad, "
                   "align-corners resize, float HSV; no blur, noise or mosaic)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--deterministic", action="store_true",
                   help="the same bits every run on CUDA too (no cuDNN autotuning, "
                   "deterministic kernels: slower); the CPU is deterministic already")
    p.add_argument("--batch-per-process", action="store_true",
                   help="under torchrun, [net] batch is per process (default: global)")
    add_run_arguments(p, "train", "whose training is estimated to need")


def arg_parser():
    p = command_parser("train", "Train a cfg with its [net] settings.")
    add_model_arguments(p)
    add_data_arguments(p)
    add_schedule_arguments(p)
    add_map_points(p)
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="train data-parallel on N processes of this machine (one a GPU on "
                   "CUDA, else gloo on the CPU), as torchrun --standalone --nproc-per-node N")
    return p


def run_options(model: ModelSpec, args, schedule: bool = False):
    """darkcfg.train.session.RunOptions from parsed arguments; the ones a command does not take
    keep their defaults. `schedule`: also the training schedule (--checkpoint-every ...)."""
    from darkcfg.train.loop import Schedule
    from darkcfg.train.session import RunOptions

    def arg(name, default=None):
        return getattr(args, name, default)

    out = arg("out")
    opts = RunOptions(
        cfg_path=model.cfg, name=model.name, out=Path(out or Path("runs") / model.name),
        data=arg("data"), classes=arg("classes"), seed=model.seed, device=model.device,
        flavor=model.flavor, sets=model.sets, weights=model.weights, cutoff=model.cutoff,
        freeze=arg("freeze", 0), resume=arg("resume", False), compile=arg("compile", False),
        amp=False if arg("no_amp", False) else True if arg("amp", False) else None,
        workers=arg("workers"),
        batch_per_process=arg("batch_per_process", False),
        progress=not arg("no_progress", False), explicit_out=out is not None,
        explicit_seed=arg("seed") is not None,
        max_memory=arg("max_memory"), force=arg("force", False),
        deterministic=arg("deterministic", False),
        map_points=arg("map_points") or 0, partial=model.partial,
        darknet_build=arg("darknet_build") or "opencv",
        given=tuple(flag for flag, name in (("--map-points", "map_points"),
                                            ("--darknet-build", "darknet_build"))
                    if arg(name) is not None))
    if schedule:
        valid_every = arg("valid_every")
        opts.schedule = Schedule(checkpoint_every=args.checkpoint_every,
                                 save_every=args.save_every,
                                 valid_every=-1 if valid_every is None else valid_every)
    return opts


def parse(argv: list[str]):
    args = arg_parser().parse_args(argv)
    return run_options(model_spec(args), args, schedule=True)


def run(opts):
    """Train; the Trainer when the run finished here (for a validation or prediction that
    follows, in the flag form), None when it stopped early or ran under torchrun."""
    from darkcfg.train import distributed, session

    how, trainer = session.train(opts)
    if how != "done" or distributed.launched_by_torchrun():
        return None
    return trainer


def main(argv: list[str]) -> int:
    def train() -> int:
        args = arg_parser().parse_args(argv)  # a bad command line is said once, before any
        opts = run_options(model_spec(args), args, schedule=True)  # rank starts
        processes = checked_processes(args.processes, args.device)
        if processes > 1:
            from darkcfg.train.launch import launch
            from darkcfg.train.session import check_before_ranks

            check_before_ranks(opts)

            # the ranks take the cfg found here (a shipped one is said once)
            cfg = str(opts.cfg_path)
            ranks = [cfg if word == args.cfg else word for word in argv] \
                if argv.count(args.cfg) == 1 else argv
            return launch(ranks, processes)
        run(opts)
        return 0

    return guarded(train)


def checked_processes(processes: int, device: str | None = None) -> int:
    """--processes N: 1 or more, and on CUDA no more than the GPUs (one to a rank: two ranks
    on one GPU fail in NCCL); under torchrun (and in the ranks `launch` starts) the world size
    it already has, so 1 there."""
    from darkcfg.cli.common import usage_error
    from darkcfg.console import torchrun_job

    world = torchrun_job()[1]
    if processes < 1:
        raise usage_error(f"--processes {processes}: must be 1 or more", "e.g. --processes 2")
    if world > 1:
        if processes not in (1, world):
            raise usage_error(f"--processes {processes}: but torchrun started {world}",
                              "leave --processes out under torchrun")
        return 1
    if processes > 1 and (device is None or device == "auto" or device.startswith("cuda")):
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if 0 < gpus < processes:
            raise usage_error(f"--processes {processes}: this machine has {gpus} GPU(s), one "
                              "to a rank", f"--processes {gpus}, or --device cpu for ranks on "
                              "the CPU")
    return processes
