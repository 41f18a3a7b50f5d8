"""darkcfg in hostile environments, not on hostile files: closed standard streams, `python -OO`,
`-X dev`, memory and open-file limits, file names that are not UTF-8, hold a line break or are
long (docs/robustness.md, "Environments")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import darkcfg.cli.flags as runner

ROOT = Path(__file__).resolve().parents[1]


def run(*argv) -> int:
    return runner.main([str(a) for a in argv])


def test_training_with_stderr_closed_writes_its_run(tmp_path, tiny_classifier, monkeypatch):
    # `darkcfg train ... 2>&-` (a daemon, a cron job): sys.stderr is None, and the progress bar
    # stopped the run with an AttributeError (exit 1) after it had made its folder
    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=1,
                                burn_in=0, second_conv=False)
    monkeypatch.setattr(sys, "stderr", None)
    assert run(cfg, "--train", "--out", tmp_path / "run", "--workers", "0",
               "--valid-every", "0") == 0
    assert (tmp_path / "run" / "checkpoint.pt").exists()


def test_closed_standard_descriptors_get_devnull_not_the_next_file(tmp_path):
    # with fd 2 closed, the next file opened took number 2, and whatever wrote to fd 2 (torch's
    # C++ warnings, FFmpeg, a compiler) wrote into it; a usage error's sys.stderr.write was an
    # AttributeError (exit 1)
    probe = ("import os, sys; from cfgparse.errors import tolerant_output; tolerant_output(); "
             "fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); os.write(fd, str(fd).encode()); "
             "os.write(2, b'LEAK'); sys.stderr.write('LEAK'); sys.stdin.read()")
    out = tmp_path / "out.txt"

    def closed():
        for fd in (0, 1, 2):
            os.close(fd)

    subprocess.run([sys.executable, "-c", probe, str(out)], preexec_fn=closed, check=True,
                   env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert int(out.read_text()) > 2
    done = subprocess.run([sys.executable, "-m", "darkcfg", "check", "--bogus"],
                          preexec_fn=lambda: os.close(2), cwd=ROOT, timeout=60)
    assert done.returncode == 2


def test_a_run_closes_its_folder_lock(tmp_path, tiny_classifier):
    # the lock file was left to the garbage collector: `python -X dev` printed a ResourceWarning
    # after every run, PYTHONWARNINGS=error an "Exception ignored ... Traceback"
    import warnings

    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=1,
                                burn_in=0, second_conv=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        assert run(cfg, "--train", "--out", tmp_path / "run", "--workers", "0", "--no-progress",
                   "--valid-every", "0") == 0
    assert not [w for w in caught if ".darkcfg.lock" in str(w.message)], caught


def test_preview_help_without_docstrings():
    # `python -OO` strips docstrings: the preview's --help read its description from __doc__
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-OO", "-m", "darkcfg", "data", "preview", "--help"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: darkcfg data preview" in done.stdout and "--iteration I" in done.stdout


def test_out_of_memory_is_one_diagnostic(capsys):
    # under `ulimit -v` (or a container's limit) torch's allocator failed inside a layer: a
    # traceback ending in "DefaultCPUAllocator: can't allocate memory"
    from darkcfg.cli.common import guarded

    def allocator():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                           "can't allocate memory: you tried to allocate 805699632 bytes. "
                           "Error code 12 (Cannot allocate memory)")

    def python():
        raise MemoryError

    assert guarded(allocator) == 2
    assert capsys.readouterr().err.startswith(
        "<memory>: error[E401]: out of memory: could not allocate 768.4 MiB; the command stopped")
    assert guarded(python) == 2
    assert "error[E401]: out of memory: no memory left" in capsys.readouterr().err


def test_the_memory_guard_counts_the_processs_address_space_limit(monkeypatch):
    # `ulimit -v 5000000` on a 23 GiB machine: the guard allowed 23 GiB, so a detect whose
    # estimate was over the limit started and failed in torch's allocator
    import resource

    import torch

    from darkcfg.model import device_memory

    with open("/proc/self/statm") as fh:
        mapped = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    real = resource.getrlimit
    limit = mapped + 2 ** 28  # 256 MiB left to map
    monkeypatch.setattr(resource, "getrlimit", lambda which: (limit, resource.RLIM_INFINITY)
                        if which == resource.RLIMIT_AS else real(which))
    assert device_memory(torch.device("cpu")) < 2 ** 29


def test_charts_draw_any_file_name(tmp_path, tiny_classifier):
    # a cfg named with bytes that are not UTF-8 (b'\xff\xfe.cfg': kept as surrogates) stopped the
    # run at its last step, chart.png, with matplotlib's TypeError (exit 1, no chart); a '$'
    # pair in a name is mathtext to matplotlib (`\frac` alone: a ValueError)
    from darkcfg.cli import main

    folder = os.fsencode(tmp_path)
    for i, stem in enumerate([b"\xff\xfe", rb"a$\frac$b"]):
        cfg = folder + b"/" + stem + b".cfg"
        tiny_classifier.write(Path(os.fsdecode(cfg)), batch=4, subdivisions=1, max_batches=1,
                              burn_in=0, second_conv=False)
        out = tmp_path / f"run{i}"
        assert run(os.fsdecode(cfg), "--train", "--out", out, "--workers", "0",
                   "--no-progress", "--valid-every", "0") == 0
        assert (out / "chart.png").stat().st_size > 0
        assert main(["summary", os.fsdecode(cfg), "--plot-lr", str(tmp_path / f"lr{i}.png")]) == 0
    from tests.test_data_formats import write_yolo

    data = write_yolo(tmp_path / "y")  # data check's title names the set
    data = data.rename(data.with_name(os.fsdecode(b"\xff.yaml")))
    assert main(["data", "check", str(data), "--plot", str(tmp_path / "check.png")]) == 0


def test_long_output_names_get_temp_names_that_fit(tmp_path):
    # an output name of 241-255 bytes fits, but `.NAME.XXXXXXXX.onnx` (export's staged file),
    # `.OUT.XXXXXXXX.partial` (data convert) and `.CFG.XXXXXXXX.cfg` (anchors --write's lint)
    # did not: "File name too long" (atomic_open's were cut to fit already)
    from builders.atomic import staged_file
    from darkcfg.cli import main
    from darkcfg.cli.anchors import lint_text
    from tests.test_data_formats import write_yolo

    onnx = tmp_path / ("L" * 245 + ".onnx")
    with staged_file(onnx, "--out") as tmp:
        Path(tmp).write_bytes(b"model")
    assert onnx.read_bytes() == b"model"
    data = write_yolo(tmp_path / "y")
    out = tmp_path / ("C" * 250)
    assert main(["data", "convert", str(data), "--to", "darknet", str(out)]) == 0
    assert (out / "obj.data").exists()
    cfg = tmp_path / ("A" * 246 + ".cfg")
    assert lint_text("[net]\nwidth=8\nheight=8\nchannels=3\n", cfg) == []



def test_onnx_metadata_of_a_cfg_named_with_non_utf8_bytes(tmp_path, tiny_classifier):
    # the ONNX metadata's `cfg` is the cfg's file name, and protobuf takes only UTF-8: a name of
    # other bytes (kept as surrogates) was onnx_ir's SerdeError traceback after the export
    import onnx

    from builders import build
    from darkcfg.export.onnx import metadata

    cfg = os.fsdecode(os.fsencode(tmp_path) + b"/\xff\xfe.cfg")
    tiny_classifier.write(Path(cfg), second_conv=False)
    meta = metadata(build(cfg, device="meta"), Path(cfg).name, False)
    model = onnx.ModelProto()
    model.metadata_props.add(key="cfg", value=meta["cfg"])
    assert onnx.ModelProto.FromString(model.SerializeToString()).metadata_props[0].value == \
        r"\udcff\udcfe.cfg"


def test_a_cfg_whose_name_holds_a_line_break_is_read_as_a_file(tmp_path, tiny_classifier):
    # `darkcfg summary 'new<LF>line.cfg'`: a str with a line break was taken for cfg text, so
    # every command said E103 "option before any section" at the path's own text
    from cfgparse import parse

    cfg = tiny_classifier.write(tmp_path / "new\nline.cfg", second_conv=False)
    assert [b.name for b in parse(str(cfg))][:2] == ["net", "convolutional"]
    assert run(cfg, "--summary") == 0
    assert [b.name for b in parse("[net]\nwidth=8\n")] == ["net"]  # text is still text


def test_too_many_open_files_says_which_limit(capsys):
    # `ulimit -n 32` with --workers 2: "<file>: error[E901]: Too many open files", hint "check
    # the path" (no path was wrong)
    import errno

    from darkcfg.cli.common import guarded

    def loader():
        raise OSError(errno.EMFILE, "Too many open files")

    def torch_loader():
        raise RuntimeError("Too many open files. Communication with the workers is no longer "
                           "possible. Please increase the limit using `ulimit -n` in the shell")

    for raised in (loader, torch_loader):
        assert guarded(raised) == 2
        err = capsys.readouterr().err
        # no file was wrong: it was "<file>: error[E901]: Too many open files: '<file>'"
        assert err.startswith("<open files>: error[E901]: Too many open files\n"), err
        assert "help: raise the limit on open files (ulimit -n, now" in err


def test_loader_processes_fit_the_open_file_limit():
    # torch's default sharing needs a descriptor per tensor in flight, three times over; where
    # the limit cannot hold that, the processes hand batches over as named files, and fewer of
    # them start where even that does not fit (none at all: the run still trains)
    from darkcfg.data.base import loader_plan

    assert loader_plan(2, 1024, 10) == (2, None)  # a desktop's default: nothing changes
    assert loader_plan(16, 1024, 10) == (16, "file_system")  # a GPU machine's 16
    assert loader_plan(2, 32, 7) == (1, "file_system")  # `ulimit -n 32`
    assert loader_plan(2, 16, 7) == (0, "file_system")
    assert loader_plan(4, 8, 20) == (0, "file_system")  # more open than the limit: none


def test_the_soft_open_file_limit_is_raised_to_the_hard_one():
    # `ulimit -Sn 64` under a hard limit of thousands is a default, not a choice (the JVM and
    # Go's runtime raise it at start); a hard limit is left as it is
    import resource

    from darkcfg.data.base import raise_open_files_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        raise_open_files_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert now == (hard if hard != resource.RLIM_INFINITY else 1 << 20, hard)


@pytest.mark.slow
@pytest.mark.parametrize("limit", [16, 32])
def test_training_with_workers_under_a_low_open_file_limit_ends(tmp_path, tiny_classifier,
                                                                limit):
    # `ulimit -n 32` (soft and hard) with --workers 2: the loader processes' threads failed to
    # hand a batch over (tracebacks from torch's threads, the batch lost) and the main process
    # waited for it for good, SIGTERM or not; or the run stopped with E901 when a validation's
    # processes started. It trains now, with the processes the limit leaves room for
    import resource

    cfg = tiny_classifier.write(tmp_path / "c.cfg", batch=4, subdivisions=1, max_batches=4,
                                burn_in=0, second_conv=False)

    def low():
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    done = subprocess.run(
        [sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--out",
         str(tmp_path / "run"), "--no-progress", "--workers", "2", "--valid-every", "2"],
        preexec_fn=low, capture_output=True, text=True, timeout=150,
        env=dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished 4 iterations" in done.stderr and "Traceback" not in done.stderr
    assert f"do not fit in the limit on open files (ulimit -n {limit})" in done.stderr


def test_a_loader_process_shares_its_detection_batch_itself(monkeypatch):
    # the detection batch was put in shared memory by the thread that hands it over, where a
    # failure (no descriptor left) dropped it with a traceback and the main process waited on
    # it for good; torch's default_collate (a classifier's) shares in the process's own thread
    import torch

    from darkcfg.data.detection.dataset import collate

    samples = [(torch.zeros(3, 8, 8, dtype=torch.uint8), torch.zeros(2, 5)) for _ in range(2)]
    assert not any(t.is_shared() for t in collate(samples))  # in the main process: no need
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    assert all(t.is_shared() for t in collate(samples))
