"""Fuzzing detect's video input (test_fuzz_data.py does the other data files): tiny valid
videos of many kinds (H.264 in MP4 and Matroska, MJPEG in AVI, VP9 in WebM, a GIF, FFV1 1x1
gray, 33x17 4:4:4, 2x96, 10-bit, a variable frame rate, a display rotation, a raw stream that
changes size, Y4M), cut short, bit-flipped, zeroed, their headers damaged, bytes repeated, and
run through `detect_video` (what `--detect VIDEO` calls). The contract (docs/robustness.md,
"Videos, fuzzed"): a result or E901 naming the file, never another exception, never a hang
(a watchdog); the outputs complete (the video plays, with as many frames as the .jsonl has
lines and the labels folder files, each record's time its frame's) or absent; the input
unchanged; no temp file left.
Derandomized and database-free; DARKCFG_FUZZ_EXAMPLES=500 DARKCFG_FUZZ_RANDOM=1 for a longer
hunt. Below the fuzz tests: one plain test per input the fuzzing found."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import shutil
from datetime import timedelta
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

av = pytest.importorskip("av")

from test_video import CFG, NAMES, THRESH, read_jsonl  # noqa: E402

from cfgparse import CfgError  # noqa: E402
from darkcfg.cli import main  # noqa: E402
from darkcfg.detect.video import check_sources, detect_video, video_codec  # noqa: E402

EXAMPLES = int(os.environ.get("DARKCFG_FUZZ_EXAMPLES", "20"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=20),
                derandomize=not os.environ.get("DARKCFG_FUZZ_RANDOM"), database=None,
                suppress_health_check=list(HealthCheck))
HANG = 120  # seconds: past this a run is taken as hung (the stacks are printed, pytest ends)


def write_clip(path: Path, fmt: str, codec: str, width: int, height: int, frames: int = 8,
               pix_fmt: str = "yuv420p", times_ms: list[int] | None = None,
               rotation: int = 0) -> Path:
    """A small clip of a bright box moving over a changing grey."""
    with av.open(str(path), "w", format=fmt) as c:
        stream = c.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        if codec == "libx264":
            stream.options = {"preset": "ultrafast"}
        if times_ms is not None:
            stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        if rotation:
            stream.set_display_rotation(rotation)
        for k in range(frames):
            img = np.full((height, width, 3), 20 * k, np.uint8)
            img[k % height:k % height + max(1, height // 3),
                k % width:k % width + max(1, width // 3)] = (200, 40, 90)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[k], Fraction(1, 1000)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    return path


class Seeds(dict):
    """name -> bytes; shown by name (a failing example prints its arguments)."""

    def __repr__(self) -> str:
        return f"Seeds({sorted(self)})"


class Case(bytes):
    """A damaged seed's bytes, shown as the seed and what was done to it."""

    name: str
    done: list[str]

    def __repr__(self) -> str:
        return f"Case({self.name!r}, {len(self)} bytes: {'; '.join(self.done)})"


def seed_videos(folder: Path) -> Seeds:
    """name -> bytes of each valid seed this FFmpeg can write."""
    h264 = video_codec()
    made = [
        ("h264.mp4", "mp4", h264, 48, 32, 10, "yuv420p", None, 0),
        ("odd.mkv", "matroska", h264, 33, 17, 8, "yuv444p", None, 0),
        ("mjpeg.avi", "avi", "mjpeg", 40, 30, 8, "yuvj420p", None, 0),
        ("vp9.webm", "webm", "libvpx-vp9", 32, 32, 8, "yuv420p", None, 0),
        ("anim.gif", "gif", "gif", 32, 24, 8, "rgb8", None, 0),
        ("one.mkv", "matroska", "ffv1", 1, 1, 8, "gray", None, 0),
        ("tall.mp4", "mp4", "mpeg4", 2, 96, 8, "yuv420p", None, 0),
        ("ten.mkv", "matroska", h264, 32, 32, 8, "yuv420p10le", None, 0),
        ("vfr.mp4", "mp4", h264, 32, 32, 9, "yuv420p", [0, 40, 80, 200, 240, 500, 530, 560,
                                                         1000], 0),
        ("turned.mp4", "mp4", h264, 48, 32, 6, "yuv420p", None, 90),
        ("clip.y4m", "yuv4mpegpipe", "rawvideo", 16, 8, 8, "yuv420p", None, 0),
    ]
    seeds = Seeds()
    for name, fmt, codec, w, h, n, pix, times, turn in made:
        with contextlib.suppress(av.FFmpegError, ValueError):  # (an encoder this FFmpeg lacks)
            seeds[name] = write_clip(folder / name, fmt, codec, w, h, n, pix, times,
                                     turn).read_bytes()
    # a raw stream whose frames change size midway
    seeds["grows.h264"] = b"".join(
        write_clip(folder / f"{w}.h264", "h264", h264, w, h, 4).read_bytes()
        for w, h in ((32, 24), (18, 34)))
    return seeds


@st.composite
def damaged(draw, seeds: Seeds) -> Case:
    """A seed cut short, bits flipped, a range zeroed, its header overwritten or a range
    repeated elsewhere, one to three times."""
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    done = []
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["cut", "flip", "zero", "header", "repeat"]))
        if kind == "cut":
            del data[at:]
        elif kind == "flip":
            bit = draw(st.integers(0, 7))
            data[at] ^= 1 << bit
            kind += f" bit {bit}"
        elif kind == "zero":
            size = draw(st.integers(1, 256))
            data[at:at + size] = bytes(len(data[at:at + size]))
            kind += f" {size}"
        elif kind == "header":
            at %= 128
            size, value = draw(st.integers(1, 4)), draw(st.sampled_from([0, 0x7F, 0x80, 0xFF]))
            data[at:at + size] = bytes([value]) * len(data[at:at + size])
            kind += f" {size} x {value:#x}"
        else:
            size, to = draw(st.integers(1, 512)), draw(st.integers(0, len(data)))
            data[to:to] = data[at:at + size]
            kind += f" {size} to {to}"
        done.append(f"{kind} at {at}")
    case = Case(data)
    case.name, case.done = name, done
    return case


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Seeds:
    return seed_videos(tmp_path_factory.mktemp("seeds"))


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    from darkcfg.model import build_network

    path = tmp_path_factory.mktemp("cfg") / "tiny.cfg"
    path.write_text(CFG)
    built, _, _ = build_network(str(path), [], "alexeyab", 1)
    return built.eval()


@contextlib.contextmanager
def watchdog(seconds: float):
    """Print every thread's stack and end the process when the body runs past `seconds`: a
    hang in FFmpeg's C code cannot be interrupted from Python."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


def frame_count(video: Path) -> int:
    return len(frame_times(video))


def frame_times(video: Path) -> list[float]:
    with av.open(str(video)) as c:
        return [float(f.time) for f in c.decode(video=0)]


def contract(net, path: Path, out: Path) -> int | None:
    """detect_video on `path` into `out` keeps the contract; the frames detected (None: E901)."""
    before = path.read_bytes()
    frames = None
    with watchdog(HANG):
        try:
            result = detect_video(net, str(path), out, thresh=THRESH, names=NAMES,
                                  batch_size=4, progress=False, save_labels=True)
        except CfgError as exc:
            assert [(d.code, d.path) for d in exc.diagnostics] == [("E901", str(path))], exc
            kept = "the outputs hold" in str(exc)  # a read error after some frames
        else:
            kept, frames = True, result.frames
    assert path.read_bytes() == before
    files = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert not [f for f in files if f.startswith(".")], files  # no temp file left
    if not kept:
        assert files == []
        return None
    stem = path.stem
    assert files == [f"{stem}.jsonl", f"{stem}.mp4", f"{stem}_labels"]
    times = frame_times(out / f"{stem}.mp4")
    records = read_jsonl(out / f"{stem}.jsonl")
    assert len(times) == len(records) == len(list((out / f"{stem}_labels").iterdir())) > 0
    # each record's time is its frame's in the written video
    assert [r["time"] for r in records] == pytest.approx(times, abs=1e-5)
    assert frames in (None, len(times))
    return len(times)


@pytest.mark.slow  # (~5 s: a dozen videos through the whole pipeline)
def test_the_seeds_are_videos_detected_whole(net, seeds, tmp_path):
    for name, data in seeds.items():
        path = tmp_path / name
        path.write_bytes(data)
        with av.open(str(path)) as c:
            count = sum(1 for _ in c.decode(video=0))
        assert contract(net, path, tmp_path / f"out-{name}") == count >= 6, name


def fuzz_once(net, case: Case, tmp_path_factory) -> None:
    folder = tmp_path_factory.mktemp("case")
    path = folder / case.name
    path.write_bytes(case)
    contract(net, path, folder / "out")
    shutil.rmtree(folder)  # (a failed example's stays)


@FUZZ
@given(case=st.data())
def test_damaged_videos_keep_the_contract(net, seeds, tmp_path_factory, case):
    fuzz_once(net, case.draw(damaged(seeds)), tmp_path_factory)


@pytest.mark.slow
@settings(FUZZ, max_examples=5 * EXAMPLES)
@given(case=st.data())
def test_damaged_videos_keep_the_contract_longer(net, seeds, tmp_path_factory, case):
    fuzz_once(net, case.draw(damaged(seeds)), tmp_path_factory)


# -- one plain test per input the fuzzing found ---------------------------------------------------


def test_a_video_stream_of_a_codec_without_decoder_is_said_before_the_network_is_built(
        seeds, tmp_path, capsys):
    # (a damaged codec tag, avc1 -> zzz1): opened, the network built, then "cannot read after 0
    # frame(s): Decoder not found (the outputs hold those)"
    path = tmp_path / "tag.mp4"
    path.write_bytes(seeds["h264.mp4"].replace(b"avc1", b"zzz1"))
    with pytest.raises(CfgError, match="is in a codec this FFmpeg has no decoder for"):
        check_sources([str(path)])  # what --detect runs before the build
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(CFG)
    out = tmp_path / "out"
    assert main([str(cfg), "--detect", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: error[E901]: the video stream of '{path}' is in a codec this FFmpeg has " \
        "no decoder for" in err, err
    assert not out.exists()


def test_a_packet_refused_with_another_ffmpeg_error_is_skipped_too(seeds, net, tmp_path):
    # (a codec tag damaged into another codec's, avc1 -> s263: FFmpeg's h263 decoder refuses
    # each packet with EPERM, not InvalidDataError): the first such packet ended the video with
    # "cannot read after 0 frame(s): Operation not permitted (the outputs hold those)", and
    # nothing held them. Every refused packet is skipped (W901) as a damaged one is.
    path = tmp_path / "s263.mp4"
    path.write_bytes(seeds["h264.mp4"].replace(b"avc1", b"s263"))
    with av.open(str(path)) as c:
        packets = sum(1 for p in c.demux(video=0) if p.size)
    with pytest.raises(CfgError, match=rf"no frame of '.*' could be decoded \({packets} "
                       r"damaged packet\(s\) skipped\): nothing was written"):
        detect_video(net, str(path), tmp_path / "out", progress=False)
    assert list((tmp_path / "out").iterdir()) == []


def gif_canvas(path: Path, width: int, height: int, frames: int = 3) -> Path:
    """A GIF of 1x1 frames on a canvas of width x height (its logical screen): FFmpeg decodes
    each frame at the canvas's size."""
    import io
    import struct

    from PIL import Image

    pictures = [Image.new("P", (1, 1), k % 2) for k in range(frames)]
    buf = io.BytesIO()
    pictures[0].save(buf, "GIF", save_all=True, append_images=pictures[1:], duration=100)
    data = bytearray(buf.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    path.write_bytes(bytes(data))
    return path


def test_frames_of_more_pixels_than_an_image_may_have_are_refused(tmp_path, capsys):
    # a 150-byte GIF claiming a 16000x16000 canvas was decoded frame by frame at 1 GB each,
    # up to 72 of them in flight (batches queued, detected and drawn): the memory ran out
    path = gif_canvas(tmp_path / "canvas.gif", 16000, 16000)
    assert path.stat().st_size < 200
    with pytest.raises(CfgError, match=r"the frames of '.*canvas.gif' are 16000x16000: more "
                       r"pixels than darkcfg reads in an image \(178956970\)"):
        check_sources([str(path)])  # before the network is built


def test_a_stream_that_grows_past_the_limit_keeps_the_frames_before(net, tmp_path, monkeypatch):
    # (a raw stream whose frames are 16x16, then 32x24)
    from PIL import Image

    from darkcfg.detect import video

    path = tmp_path / "grows.h264"
    path.write_bytes(b"".join(write_clip(tmp_path / f"{w}.h264", "h264", video_codec(), w, h,
                                         4).read_bytes() for w, h in ((16, 16), (32, 24))))
    real = video.open_source

    def opened_then_limited(target):  # (the header, probed to the end, says 32x24 already)
        container = real(target)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)  # 256 < 600 < 768 pixels
        return container

    monkeypatch.setattr(video, "open_source", opened_then_limited)
    out = tmp_path / "out"
    with pytest.raises(CfgError, match=r"frame 5 of '.*' is 32x24: more pixels than darkcfg "
                       r"reads in an image \(600\) \(the outputs hold the frames before it\)"):
        detect_video(net, str(path), out, thresh=THRESH, batch_size=3, progress=False)
    assert len(read_jsonl(out / "grows.jsonl")) == frame_count(out / "grows.mp4") == 4


def test_a_batch_of_big_frames_is_cut_short(net, seeds, tmp_path, monkeypatch):
    # batches were batch_size frames whatever their size: with ~9 batches in flight, 72 frames
    # of 8K video (7 GB)
    from darkcfg.detect import video

    path = tmp_path / "h264.mp4"
    path.write_bytes(seeds["h264.mp4"])  # 10 frames of 48x32
    whole = detect_video(net, str(path), tmp_path / "whole", thresh=THRESH, batch_size=8,
                         progress=False)
    sizes = []
    real = video.run_heads
    monkeypatch.setattr(video, "run_heads", lambda n, x, h: sizes.append(len(x)) or real(n, x, h))
    monkeypatch.setattr(video, "BATCH_PIXELS", 3 * 48 * 32)
    cut = detect_video(net, str(path), tmp_path / "cut", thresh=THRESH, batch_size=8,
                       progress=False)
    assert sizes == [3, 3, 3, 1]
    assert read_jsonl(cut.jsonl) == read_jsonl(whole.jsonl) and cut.frames == 10


def test_a_damaged_timestamp_jump_is_written_where_the_jsonl_says(net, tmp_path):
    # a frame 2^40 ms (35 years) after the one before: FFmpeg's MP4 muxer wrote it 1/16000 s
    # after it, the .jsonl said 1099511627.776 s. A frame more than an MP4 holds after the one
    # before comes 1/rate after it, as a frame without a time does.
    path = write_clip(tmp_path / "jump.mkv", "matroska", video_codec(), 32, 32, 5,
                      times_ms=[0, 40, 80, 2**40, 2**40 + 40])
    assert frame_times(path)[3] > 10**9  # the clip is what the test means
    result = detect_video(net, str(path), tmp_path / "out", thresh=THRESH, progress=False)
    expected = [0.0, 0.04, 0.08, 0.18, 0.28]  # (the clip's rate: 10 a second)
    assert frame_times(result.video) == pytest.approx(expected)
    assert [r["time"] for r in read_jsonl(result.jsonl)] == pytest.approx(expected)


def test_a_rotation_that_is_no_quarter_turn_is_not_applied(net, seeds, tmp_path):
    # a display matrix of zeros (damaged: PyAV reads its NaN rotation as -2^31) turned every
    # frame 270 degrees, a 45-degree one by 0 and a 135-degree one by 180; cv::VideoCapture
    # turns only by 90, 180 and 270
    from darkcfg.detect.video import quarter_turns

    data = bytearray(seeds["turned.mp4"])
    matrix = data.find(b"tkhd") + 4 + 4 + 4 * 4 + 4 + 8 + 8  # (version 0: 32-bit times)
    assert data[matrix:matrix + 36] == b"".join(
        v.to_bytes(4, "big", signed=True) for v in (0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30))
    data[matrix:matrix + 36] = bytes(36)
    path = tmp_path / "zeros.mp4"
    path.write_bytes(bytes(data))
    with av.open(str(path)) as c:
        assert next(c.decode(video=0)).rotation == -2**31
    result = detect_video(net, str(path), tmp_path / "out", thresh=THRESH, progress=False)
    with av.open(str(result.video)) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (48, 32)  # as stored
    assert [quarter_turns(r) for r in (45, 135, -135, 89, 90, -90, 180, -180, 270, 0, None,
                                       -2**31)] == [0, 0, 0, 1, 1, 3, 2, 2, 3, 0, 0, 0]


def test_a_header_rate_of_one_frame_in_days_is_taken_as_none(net, seeds, tmp_path):
    # an `stts` duration damaged to 2^31 ticks (58 h a frame at 1/10240): the stream's rate,
    # 5/1048576 a second, was the encoder's, whose last packet the MP4 muxer refused as too
    # long: av.error.ArgumentError (EINVAL), a traceback
    data = bytearray(seeds["h264.mp4"])
    at = data.find(b"stts") + 4 + 4 + 4 + 4  # version/flags, entry count, the first count
    data[at:at + 4] = (2**31).to_bytes(4, "big")  # the first entry's duration
    path = tmp_path / "stts.mp4"
    path.write_bytes(bytes(data))
    with av.open(str(path)) as c:
        assert 1 / c.streams.video[0].average_rate > 3600  # the clip is what the test means
    assert contract(net, path, tmp_path / "out") >= 1


def test_an_error_of_the_encoder_or_muxer_is_a_located_error(net, seeds, tmp_path, monkeypatch):
    # any other FFmpeg error the writer met (not a disk's: those are OSError) was a traceback
    from darkcfg.detect import video

    def refused(self):
        raise av.error.ArgumentError(22, "Invalid argument")

    monkeypatch.setattr(video._Writer, "close", refused)
    path = tmp_path / "h264.mp4"
    path.write_bytes(seeds["h264.mp4"])
    out = tmp_path / "out"
    with pytest.raises(CfgError, match=r"cannot write the annotated video of '.*h264.mp4': "
                       "Invalid argument: nothing was written"):
        detect_video(net, str(path), out, thresh=THRESH, progress=False)
    assert list(out.iterdir()) == []
