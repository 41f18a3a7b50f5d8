"""Detection on videos, streams and cameras (Darknet's `detector demo`): frames decoded with PyAV
(the `video` extra; FFmpeg comes with it), the network on batches of frames, and out:

- `OUT/<name>.mp4`: the frames with their boxes drawn (Darknet's `-out_filename`);
- `OUT/<name>.jsonl`: one line per frame with Darknet's `-json_port` fields (`frame_id` from 1,
  `objects`: `class_id`, `name`, `relative_coordinates` {`center_x`, `center_y`, `width`,
  `height`}, `confidence`; src/demo.c sends them with `++frame_id`, an object per class above
  the threshold as src/http_stream.cpp send_json does) and the frame's `time` in the written
  video (seconds; not Darknet's);
- with `save_labels`, `OUT/<name>_labels/<name>_<frame>.txt`: Darknet label lines per frame.

Three stages overlap: a reader thread decodes and prepares (resize or letterbox) the next batch,
the calling thread runs the network, and a writer thread decodes the heads' outputs into boxes
(+ NMS), draws, encodes and writes. A frame goes through exactly the preparation, network and
box decoding that `detect` gives the same frame saved as an image. Ctrl-C (KeyboardInterrupt)
stops reading, finishes the frames already detected, closes the video properly (a playable
file) and re-raises.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from builders.atomic import ensure_folder, fitting, hold, remove_abandoned, write_error
from cfgparse import CfgError, Diagnostic
from cfgparse.errors import WARNING, printable
from darkcfg.console import warn
from darkcfg.detect.decode import (
    check_run_arguments,
    detections_of_outputs,
    device_of,
    found_objects,
    head_indices,
    in_eval_mode,
    load_pixels,
    net_letter_box,
    network_input,
    run_heads,
)

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ts", ".mts", ".m2ts", ".3gp", ".ogv", ".vob", ".y4m", ".ivf",
                    ".mjpeg", ".mjpg", ".h264", ".264", ".h265", ".265", ".hevc")
BATCH_PIXELS = 8 * 1920 * 1080  # a batch of bigger frames is cut short: the ~9 batches in
# flight (queued, detected, drawn) hold ~9 frames of an 8K video or a GIF's huge canvas
LONGEST_FRAME = Fraction(2**31 - 1, 65535)  # seconds (~9 h): an MP4 track holds a frame of up
# to 2^31 - 1 ticks, and FFmpeg's muxer picks up to 65535 ticks a second
OPEN_TIMEOUT, READ_TIMEOUT = 10.0, 30.0  # seconds a stream may keep silent (opening, reading)
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://",
                  "srt://")


def is_video(target: str) -> bool:
    """A video file (by extension), a stream URL or a camera index ('0', '1', ...; a file or
    folder of that name, such as a folder of photos named 2024, is that path, not a camera; a
    folder named like a video, trip.mov, is a folder of images)."""
    return (target.isdigit() and not os.path.exists(target)
            or target.lower().startswith(STREAM_SCHEMES)
            or Path(target).suffix.lower() in VIDEO_EXTENSIONS and not os.path.isdir(target))


def require_av(target: str = "video"):
    """PyAV, or E905 located at the video, stream or camera `target` that needs it."""
    try:
        import av
    except ImportError:
        raise CfgError(Diagnostic("E905", "video input needs PyAV, which is not installed",
                                  shown_source(target), hint="pip install 'darkcfg[video]' "
                                  "(or: pip install av); it brings its own FFmpeg")) from None
    return av


def shown_source(target: str) -> str:
    """`target` as a message shows it: control characters escaped (a line break in a name must
    not split a diagnostic) and a URL's password as *** (`rtsp://admin:***@cam/live`: logs
    keep what stderr shows)."""
    if target.lower().startswith(STREAM_SCHEMES):
        from urllib.parse import urlsplit

        netloc = urlsplit(target).netloc
        user, at, host = netloc.rpartition("@")
        if at and ":" in user:
            masked = f"{user.split(':', 1)[0]}:***@{host}"
            target = target.replace(netloc, masked, 1)
    return printable(target)


def source_name(target: str) -> str:
    """The output files' stem: the file name, `camera<N>`, or the stream's last path part
    (its stem: `live.sdp` -> live), else its host (`tcp://127.0.0.1:8766` -> 127.0.0.1)."""
    if target.isdigit():
        return f"camera{target}"
    if target.lower().startswith(STREAM_SCHEMES):
        tail = target.split("://", 1)[1].split("?", 1)[0].rstrip("/")
        part = Path(tail.rsplit("/", 1)[-1]).stem if "/" in tail else \
            tail.rsplit("@", 1)[-1].split(":", 1)[0]
        return "".join(c if c.isalnum() or c in "-_." else "_" for c in part) or "stream"
    return Path(target).stem


def check_video_file(target: str) -> None:
    """E901 for a video file `target` that is missing or no plain file (a pipe or a device
    would block or never end: FFmpeg is not given one), or whose content is a list or script
    naming other files or URLs (`list_kind`: FFmpeg would open them); said before PyAV is
    needed, so a mistyped name is not answered with an install hint."""
    if target.isdigit() or target.lower().startswith(STREAM_SCHEMES):
        return
    if not Path(target).is_file():
        what = "is not a file (a pipe, a device or a socket)" if os.path.exists(target) else \
            "does not exist"
        raise CfgError(Diagnostic("E901", f"video '{shown_source(target)}' {what}",
                                  shown_source(target),
                                  hint="check the path: an image, a folder, a video, a "
                                  "stream URL or a camera index"))
    try:
        with open(target, "rb") as file:
            kind = list_kind(file.read(4096))
    except OSError:  # (said by the open that follows, as for any video)
        return
    if kind:
        raise CfgError(Diagnostic(
            "E901", f"video '{shown_source(target)}' is {kind}, not a video: FFmpeg would open "
            "the files or URLs it names, which darkcfg refuses for a video file",
            shown_source(target), hint="give the videos it names themselves, or a live "
            "stream's playlist as its URL (http://.../list.m3u8)"))


def list_kind(head: bytes) -> str | None:
    """What FFmpeg takes the file starting with `head` for when that is a list or script naming
    other files or URLs to open (libavformat's concat_probe, hls_probe, dash_probe, sdp_probe,
    vobsub_probe), else None. FFmpeg probes a file's content, not its name: a `clip.mp4` of
    `ffconcat version 1.0` / `file x` read the files beside it (a link there, a private photo,
    went into the annotated video), a VobSub index its `.sub`."""
    if head.startswith(b"ffconcat version"):
        return "an ffconcat list"
    if head.startswith(b"#EXTM3U"):
        return "an M3U (HLS) playlist"
    if head.startswith(b"# VobSub index file,"):
        return "a VobSub index (it names its .sub file)"
    text = head.split(b"\0", 1)[0]  # (the probes read the text up to its first NUL)
    if b"<mpd" in text.lower() and b"dash:profile" in text.lower():
        return "a DASH manifest"
    if any(line.lstrip(b"\r").startswith(b"c=IN IP") for line in text.split(b"\n")):
        return "an SDP session description (it names network streams)"
    return None


def open_source(target: str):
    """A PyAV input container for a file, URL or camera index; E901 when it cannot be opened."""
    check_video_file(target)
    av = require_av(target)
    options: dict[str, str] = {}
    fmt = None
    where = target
    if target.isdigit():  # a camera: the platform's capture device
        if sys.platform.startswith("linux"):
            where, fmt = f"/dev/video{target}", "v4l2"
        elif sys.platform == "darwin":
            fmt = "avfoundation"
        else:
            raise CfgError(Diagnostic("E901", f"camera {target}: camera indices are read on "
                                      "Linux (v4l2) and macOS (avfoundation)", target,
                                      hint="give the camera as a stream URL or a DirectShow "
                                      "device through FFmpeg instead"))
    elif target.lower().startswith(("rtsp://", "rtsps://")):
        options = {"rtsp_transport": "tcp"}
    local = not (target.isdigit() or target.lower().startswith(STREAM_SCHEMES))
    try:
        container = _interruptible(
            (lambda: _open_file(av, target)) if local else
            (lambda: av.open(where, format=fmt, options=options,
                             timeout=(OPEN_TIMEOUT, READ_TIMEOUT))))
    except (av.FFmpegError, OSError, ValueError) as exc:
        stream = target.isdigit() or target.lower().startswith(STREAM_SCHEMES)
        what = f"camera {target} ({where})" if target.isdigit() and where != target else \
            f"video '{shown_source(target)}'"
        raise CfgError(Diagnostic(
            "E901", f"cannot open {what}: {ffmpeg_reason(exc, OPEN_TIMEOUT)}", shown_source(target),
            hint="check the URL and that the stream or camera is on" if stream else
            "give a video FFmpeg reads (an .mp4 cut short has lost the index at its end: "
            "copy it again)")) from None
    if not container.streams.video:
        close_source(container)
        raise CfgError(Diagnostic("E901", f"'{shown_source(target)}' has no video stream",
                                  shown_source(target),
                                  hint="give a file or stream with video"))
    context = container.streams.video[0].codec_context
    if context is None:  # (an unknown or damaged codec tag: said here, before the network is
        # built, not as a read error after 0 frames)
        close_source(container)
        raise CfgError(Diagnostic("E901", f"the video stream of '{shown_source(target)}' is in "
                                  "a codec this FFmpeg has no decoder for", shown_source(target),
                                  hint="re-encode it (e.g. to H.264), or the file may be "
                                  "damaged: copy it again"))
    try:
        check_frame_size(context.width, context.height, target)
    except CfgError:
        close_source(container)
        raise
    return container


def _open_file(av, path: str):
    """The video file `path` opened by Python and handed to FFmpeg as a file object, with no
    protocol FFmpeg may open beside it (an empty `protocol_whitelist`): its name selects no
    protocol (a file named `cache:a.mp4` or `subfile,,...,,:a.mp4` read `a.mp4`), and what its
    content names (an ffconcat list's files, a VobSub's `.sub`, an HLS segment, an SDP's RTP
    streams) is not opened. A video file needs nothing else."""
    file = open(path, "rb")  # noqa: SIM115 - closed with the container (close_source)
    try:
        return av.open(file, options={"protocol_whitelist": ""})
    except BaseException:
        file.close()
        raise


def close_source(container) -> None:
    """Close an input `container` and the file object it reads, if any (PyAV leaves that to
    whoever opened it)."""
    container.close()
    if container.file is not None:
        container.file.file.close()


def check_frame_size(width: int, height: int, target: str, frame: int = 0) -> None:
    """E901 for frames of more pixels than darkcfg reads in an image (the stream's header
    says, or `frame`, counted from 1, is): decoded and queued they would take more memory
    than the machine has."""
    from darkcfg.data.base import pixel_limit

    limit = pixel_limit()
    if limit is None or width * height <= limit:
        return
    what = f"frame {frame} of '{shown_source(target)}' is" if frame else \
        f"the frames of '{shown_source(target)}' are"
    kept = " (the outputs hold the frames before it)" if frame > 1 else ""
    raise CfgError(Diagnostic("E901", f"{what} {width}x{height}: more pixels than darkcfg "
                              f"reads in an image ({limit}){kept}", shown_source(target),
                              hint="scale the video down (ffmpeg -vf scale=...); the limit is "
                              "Pillow's Image.MAX_IMAGE_PIXELS x 2"))


def _interruptible(open_container):
    """`open_container()` in a thread of its own, waited for here: FFmpeg's open of a stream
    that does not answer blocks in C for up to OPEN_TIMEOUT, where Ctrl-C and SIGTERM could not
    stop it (the command waited out the timeout and said E901). Interrupted, the open is left
    to end in its thread, which closes what it opened."""
    done: dict = {}
    lock = threading.Lock()  # whoever comes second closes an abandoned container

    def run():
        try:
            container = open_container()
        except BaseException as exc:  # noqa: BLE001 - raised by the waiting thread
            done["error"] = exc
            return
        with lock:
            done["container"] = container
            if "abandoned" in done:
                close_source(container)

    opener = threading.Thread(target=run, daemon=True, name="darkcfg-open")
    opener.start()
    try:
        while opener.is_alive():
            opener.join(0.1)
    except BaseException:
        with lock:
            done["abandoned"] = True
            if "container" in done:
                close_source(done["container"])
        raise
    if "error" in done:
        raise done["error"]
    return done["container"]


def ffmpeg_reason(exc: BaseException, timeout: float) -> str:
    """An FFmpeg error as a reason to read: its text without `[Errno N]` and the path the
    diagnostic names anyway; the timeout's interrupt (AVERROR_EXIT) as what it is."""
    av = require_av()
    if isinstance(exc, av.ExitError):  # (FFmpeg's text: "Immediate exit requested")
        return f"no answer within {timeout:g} s"
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def check_sources(targets: Sequence[str]) -> None:
    """Open (and close) each video file of `targets`: one that is missing or is no video is a
    located E901 before anything is built or detected, not after the images and videos before
    it were. Streams and cameras are opened when their turn comes. A missing file is said
    before a missing PyAV."""
    for target in targets:
        check_video_file(target)
    if targets:
        require_av(targets[0])
    for target in targets:
        if not (target.isdigit() or target.lower().startswith(STREAM_SCHEMES)):
            close_source(open_source(target))


@dataclass
class VideoResult:
    source: str
    frames: int
    objects: int
    seconds: float
    video: Path
    jsonl: Path
    labels: Path | None
    interrupted: bool = False
    skipped: int = 0  # damaged packets skipped (W901)

    @property
    def fps(self) -> float:
        return self.frames / max(self.seconds, 1e-9)


_DONE = object()


@dataclass
class _Skipped:
    """A packet that does not decode (the reader skipped it): the error and where it was."""

    error: BaseException
    seconds: float | None


def frame_json(frame_id: int, found, image_w: int, image_h: int,
               time: float | None = None) -> dict:
    """Darknet's -json_port record for one frame (relative centre and size, from the box), and
    `time`: the frame's time in the written video in seconds (not Darknet's: with a variable
    frame rate frame_id alone does not say when a frame is shown)."""
    objects = []
    for f in found:
        left, top, right, bottom = f.box
        objects.append({"class_id": f.class_id, "name": f.name or str(f.class_id),
                        "relative_coordinates": {
                            "center_x": (left + right) / 2 / image_w,
                            "center_y": (top + bottom) / 2 / image_h,
                            "width": (right - left) / image_w,
                            "height": (bottom - top) / image_h},
                        "confidence": f.score})
    record = {"frame_id": frame_id, "objects": objects}
    if time is not None:
        record["time"] = round(time, 6)
    return record


def _decoded(container, out: queue.Queue):
    """The video's frames, packet by packet: a packet that does not decode (a damaged part of
    the file or stream) is put on `out` as _Skipped and the frames after it go on, as
    cv::VideoCapture skips it for Darknet's demo (container.decode would stop there)."""
    av = require_av()
    stream = container.streams.video[0]
    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.FFmpegError as exc:  # (not only InvalidDataError: a damaged packet or codec
            # tag can be EPERM, EINVAL, PATCHWELCOME ... for that packet alone)
            at = float(packet.pts * packet.time_base) if packet.pts is not None and \
                packet.time_base is not None else None
            out.put(_Skipped(exc, at))
            continue
        yield from frames


def _reader(container, batch: int, out: queue.Queue, stop: threading.Event,
            max_frames: int | None, source: str = "") -> None:
    """Decode frames into batches of uint8 (3, H, W) tensors. No torch work here: a second
    OpenMP pool beside the network's slows both on a small CPU (the preparation, bytes to
    floats and resize, runs on the calling thread: decode.network_input). A batch is
    (frames, their times in seconds: a Fraction, None where a frame has no timestamp, and
    their durations: None where the container says none), cut short past BATCH_PIXELS."""
    frames, times, lengths = [], [], []
    count = pixels = 0
    try:
        for frame in _decoded(container, out):
            if stop.is_set():
                break
            check_frame_size(frame.width, frame.height, source, count + 1)  # (a stream that
            # grows midway)
            rgb = frame.to_ndarray(format="rgb24")
            turn = quarter_turns(frame.rotation)
            if turn:  # a phone's portrait clip: shown upright, as cv::VideoCapture gives it to
                # Darknet (CAP_PROP_ORIENTATION_AUTO): its display matrix turns it turn x 90°
                # counter-clockwise (numpy's copy: no torch work in this thread)
                rgb = np.ascontiguousarray(np.rot90(rgb, turn))
            frames.append(torch.from_numpy(rgb).permute(2, 0, 1))
            times.append(frame.pts * frame.time_base if frame.pts is not None and
                         frame.time_base is not None else None)
            lengths.append(frame.duration * frame.time_base if getattr(frame, "duration", 0)
                           and frame.time_base is not None else None)
            count += 1
            pixels += frame.width * frame.height
            if len(frames) == batch or pixels >= BATCH_PIXELS:
                out.put((frames, times, lengths))
                frames, times, lengths = [], [], []
                pixels = 0
            if max_frames is not None and count >= max_frames:
                break
        if frames:
            out.put((frames, times, lengths))
        out.put(_DONE)
    except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which raises it
        if frames:  # the frames read before it are detected and written
            out.put((frames, times, lengths))
        out.put(exc)


def quarter_turns(rotation) -> int:
    """A display matrix's rotation (degrees counter-clockwise) as quarter turns, 0 for one that
    is no multiple of 90 (within a degree): cv::VideoCapture turns only by 90, 180 and 270, and
    a matrix of zeros (damaged) reads as -2^31."""
    rotation = rotation or 0
    turns = round(rotation / 90)
    return turns % 4 if abs(rotation - 90 * turns) <= 1 else 0


class _Writer(threading.Thread):
    """Draws, encodes and writes the detected frames in order (its own thread). Each frame
    keeps its input's time (from the first frame's): a variable frame rate (a phone's clip)
    and the gap of a skipped packet are kept, where Darknet's cv::VideoWriter writes every
    frame 1/rate after the one before, so the output drifted from the input. A frame without
    a time (a raw stream's) comes 1/rate after the one before."""

    def __init__(self, net, video_tmp: Path, jsonl, labels: Path | None, name: str, rate,
                 codec: str, thresh: float, nms_thresh: float, letter: bool,
                 names: Sequence[str], time_base: Fraction | None = None):
        super().__init__(daemon=True)
        self.time_base = output_time_base(time_base or 1 / Fraction(rate))
        self.tick = max(1, round(1 / (Fraction(rate) * self.time_base)))  # 1/rate in it
        self.first = None  # the first frame's time (the output's 0)
        self.pts = -1  # the last frame's, in time_base
        self.net, self.nms, self.letter, self.names = net, nms_thresh, letter, names
        self.objects = 0
        self.jobs: queue.Queue = queue.Queue(maxsize=4)
        self.video_tmp, self.jsonl, self.labels, self.name = video_tmp, jsonl, labels, name
        self.rate, self.codec, self.thresh = rate, codec, thresh
        self.container = self.stream = None
        self.error: BaseException | None = None
        self.frames = 0

    def run(self) -> None:
        try:
            while (job := self.jobs.get()) is not _DONE:
                self.write(*job)
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc
            while self.jobs.get() is not _DONE:  # let the producer finish without blocking
                pass
        finally:
            try:
                self.close()
            except BaseException as exc:  # noqa: BLE001 - a full disk at the last packets
                self.error = self.error or exc

    def open(self, width: int, height: int) -> None:
        av = require_av()
        self.container = av.open(str(self.video_tmp), "w", format="mp4")
        self.stream = self.container.add_stream(self.codec, rate=self.rate)
        self.stream.codec_context.time_base = self.stream.time_base = self.time_base
        self.stream.width, self.stream.height = width + width % 2, height + height % 2
        self.stream.pix_fmt = "yuv420p"  # what players expect (it needs even sizes)
        if self.codec == "libx264":  # a quarter of the default preset's encoding time
            self.stream.options = {"preset": "ultrafast"}

    def stamp(self, time: Fraction | None) -> int:
        """A frame's pts in time_base: its time from the first frame's, else (no time, one not
        after the frame before, or one more than LONGEST_FRAME after it: a damaged timestamp)
        one 1/rate after the frame before."""
        if time is not None and self.first is None:
            self.first = time
        pts = round((time - self.first) / self.time_base) if time is not None else -1
        if self.pts >= 0 and (pts - self.pts) * self.time_base > LONGEST_FRAME:
            pts = -1  # (FFmpeg's MP4 muxer wrote it at another time than the .jsonl said)
        self.pts = pts if pts > self.pts else self.pts + self.tick if self.pts >= 0 else 0
        return self.pts

    @torch.no_grad()
    def write(self, frames, outputs, sizes, input_size, first_id: int,
              times: Sequence[Fraction | None] = ()) -> None:
        from darkcfg.detect.draw import drawn, label_lines

        av = require_av()
        # decode + NMS on the outputs the calling thread computed
        dets = detections_of_outputs(self.net, outputs, input_size, self.thresh,
                                     image_size=sizes, letter_box=self.letter,
                                     nms_thresh=self.nms)
        found = [found_objects(d, self.thresh, w, h, self.names)
                 for d, (w, h) in zip(dets, sizes, strict=True)]
        self.objects += sum(len(f) for f in found)
        for k, (rgb, det, objs) in enumerate(zip(frames, dets, found, strict=True)):
            frame_id = first_id + k
            h, w = rgb.shape[-2:]
            if self.container is None:
                self.open(w, h)
            picture = drawn(rgb, objs).permute(1, 2, 0)
            if w % 2 or h % 2:  # repeat the last column/row up to the even size yuv420p needs
                picture = torch.nn.functional.pad(picture.permute(2, 0, 1)[None].float(),
                                                  (0, w % 2, 0, h % 2), mode="replicate"
                                                  )[0].to(torch.uint8).permute(1, 2, 0)
            frame = av.VideoFrame.from_ndarray(picture.contiguous().numpy(), format="rgb24")
            frame.pts = self.stamp(times[k] if k < len(times) else None)
            frame.time_base = self.time_base
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.jsonl.write(json.dumps(frame_json(frame_id, objs, w, h,
                                                   float(frame.pts * self.time_base))) + "\n")
            if self.labels is not None:
                lines = label_lines(det, self.thresh)
                (self.labels / f"{self.name}_{frame_id:06d}.txt").write_text(
                    "".join(f"{li}\n" for li in lines))
            self.frames += 1
        self.jsonl.flush()

    def close(self) -> None:
        if self.container is not None:
            try:
                for packet in self.stream.encode(None):  # flush the encoder's delayed frames
                    self.container.mux(packet)
            finally:
                self.container.close()

    def finish(self) -> None:
        self.jobs.put(_DONE)
        self.join()
        if self.error is not None:
            raise self.error


def output_time_base(time_base: Fraction) -> Fraction:
    """The input's time base for the output, coarsened by a whole factor where its denominator
    is past 65535 (MPEG-TS's 1/90000 -> 1/45000, a camera's microseconds): MPEG-4 part 2, the
    codec without H.264, takes none finer."""
    time_base = Fraction(time_base)
    if time_base.denominator <= 65535:
        return time_base
    return Fraction(time_base.numerator,
                    time_base.denominator // -(-time_base.denominator // 65535))


def video_codec() -> str:
    """H.264 when this PyAV's FFmpeg has an encoder for it, else MPEG-4 part 2."""
    av = require_av()
    available = av.codecs_available
    return "libx264" if "libx264" in available else "h264" if "h264" in available and \
        _can_encode("h264") else "mpeg4"


def _can_encode(name: str) -> bool:
    av = require_av()
    try:
        return av.Codec(name, "w") is not None
    except Exception:  # noqa: BLE001 - PyAV raises several kinds for a missing encoder
        return False


@torch.no_grad()
def detect_video(net, source: str, out: Path, *, thresh: float = 0.25, nms: float = 0.45,
                 letter_box: bool | None = None, names: Sequence[str] = (),
                 batch_size: int = 8, save_labels: bool = False, progress: bool = True,
                 max_frames: int | None = None, name: str | None = None) -> VideoResult:
    """Detect objects in every frame of `source` (a video file, an rtsp/http/... URL, or a
    camera index as a string) with the eval-mode detector `net`, writing OUT/<name>.mp4,
    OUT/<name>.jsonl (and per-frame labels with `save_labels`). Returns counts and timing.
    Raises CfgError (E901) for a source that cannot be opened or read, or outputs that cannot
    be written; KeyboardInterrupt after closing the outputs properly; ValueError or TypeError
    for arguments no run can use. A packet that does not decode is skipped with a warning
    (W901), as Darknet's cv::VideoCapture skips it; `VideoResult.skipped` counts them."""
    from tqdm import tqdm

    source = _source_text(source)
    shown = shown_source(source)
    check_run_arguments(thresh, nms, batch_size, names)
    if max_frames is not None and (isinstance(max_frames, bool) or
                                   not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"max_frames={max_frames!r}: a count of frames, 1 or more (or None: "
                         "all of them)")
    if name is not None and (not isinstance(name, str) or name in (".", "..")
                             or any(c in name for c in "/\0" + os.sep)):
        raise ValueError(f"name={name!r}: the outputs' file stem, not a path")
    if not head_indices(net):
        raise ValueError("the network has no detection head")
    in_eval_mode(net)  # as detect: the same frame gives the same boxes
    name = name or source_name(source)
    out = Path(out)
    video_path, jsonl_path = out / f"{name}.mp4", out / f"{name}.jsonl"
    for written in (video_path, jsonl_path):
        if os.path.exists(source) and written.exists() and os.path.samefile(source, written):
            raise CfgError(Diagnostic(
                "E901", f"--out '{out}' would replace the input video '{shown}' with its "
                f"annotated copy '{written.name}'", str(out),
                hint="give --out another folder (the default is runs/<cfg-name>/detect)"))
    labels = out / f"{name}_labels" if save_labels else None
    if labels is not None and os.path.lexists(labels):  # (its files would mix with ours)
        raise CfgError(Diagnostic(
            "E901", f"'{out}' already holds '{printable(labels.name)}', which this detect would "
            "replace", str(labels), hint="give --out a new or empty folder"))
    container = open_source(source)
    try:
        ensure_folder(out, "--out")
    except CfgError:
        close_source(container)
        raise
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # FFmpeg's own frame threads for decoding
    declared = stream.frames or 0  # what the container's header says (0: unknown, a stream)
    declared_end = None if declared else declared_duration(container, stream)
    total = declared or None
    if max_frames is not None:
        total = min(total, max_frames) if total else max_frames
    rate = stream.average_rate or stream.guessed_rate or 25
    if rate <= 0 or 1 / Fraction(rate) > LONGEST_FRAME:  # a damaged header's (a frame in 58 h:
        rate = 25  # the MP4 muxer refused the encoder's last packet as too long), as for none
    letter = net_letter_box(net) if letter_box is None else bool(letter_box)
    device = device_of(net)
    heads = head_indices(net)
    # .NAME.PID.tmp.mp4, .jsonl and .labels (a folder): NAME cut where the whole would not fit
    # a file name
    stem = fitting(name, len(f"..{os.getpid()}.tmp.labels"))
    video_tmp, jsonl_tmp, labels_tmp = (out / f".{stem}.{os.getpid()}.tmp.{suffix}"
                                        for suffix in ("mp4", "jsonl", "labels"))
    for suffix in ("mp4", "jsonl", "labels"):  # what a detect of this video that was killed left
        remove_abandoned(out, f".{glob.escape(stem)}.*.tmp.{suffix}")
    batches: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    reader = threading.Thread(target=_reader, daemon=True,
                              args=(container, batch_size, batches, stop, max_frames, source))
    held: list[int] = []  # the temp files (and folder) locked while this process lives
    jsonl = None
    try:
        jsonl = open(jsonl_tmp, "w")  # noqa: SIM115 - closed in _close_outputs
        held.append(hold(os.open(jsonl_tmp, os.O_RDONLY)))
        held.append(hold(os.open(video_tmp, os.O_WRONLY | os.O_CREAT, 0o666)))  # FFmpeg
        # reopens it by name
        if labels is not None:  # the label files as one output, renamed when done
            labels_tmp.mkdir()
            held.append(hold(os.open(labels_tmp, os.O_RDONLY)))
    except OSError as exc:
        for fd in held:
            os.close(fd)
        if jsonl is not None:
            jsonl.close()
        for temp in (jsonl_tmp, video_tmp):
            temp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            labels_tmp.rmdir()
        close_source(container)
        raise write_error(out, exc, what=f"the outputs of '{shown}' into '{out}'") from None
    writer = _Writer(net, video_tmp, jsonl, labels_tmp if labels is not None else None, name,
                     rate, video_codec(), thresh, nms, letter, names,
                     time_base=stream.time_base)
    bar = tqdm(total=total, unit="frame", disable=not progress, file=sys.stderr,
               desc=name, dynamic_ncols=True)
    frames = skipped = 0
    end = None  # where the frames decoded end (seconds: the latest time + duration)
    interrupted = False
    start = time.perf_counter()
    writer.start()
    reader.start()
    try:
        while (item := batches.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise _read_error(item, source, frames)
            if isinstance(item, _Skipped):
                skipped += 1
                if skipped == 1:  # (the count is in the result and the summary line)
                    warn(_skipped_warning(item, source))
                continue
            if writer.error is not None:
                break  # the outputs cannot be written (a full disk): finish() says why
            rgb, times, lengths = item
            for t, length in zip(times, lengths, strict=True):
                if t is not None:
                    end = max(end or t, t + (length or 1 / Fraction(rate)))
            x = network_input(net, [load_pixels(f, net.info.channels) for f in rgb], letter)
            sizes = [(f.shape[-1], f.shape[-2]) for f in rgb]
            outputs = run_heads(net, x.to(device), heads)
            writer.jobs.put((rgb, outputs, sizes, (x.shape[-1], x.shape[-2]), frames + 1,
                             times))
            frames += len(rgb)
            bar.update(len(rgb))
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop.set()
        while reader.is_alive():  # unblock a reader waiting on a full queue
            try:
                batches.get(timeout=0.05)
            except queue.Empty:
                pass
        bar.close()
        outputs = [(video_tmp, video_path), (jsonl_tmp, jsonl_path)]
        if labels is not None:
            outputs.append((labels_tmp, labels))
        try:
            _close_outputs(writer, jsonl, container, out, outputs, shown)
        finally:
            for fd in held:
                os.close(fd)
    seconds = time.perf_counter() - start
    if not interrupted and not frames:
        damaged = f" ({skipped} damaged packet(s) skipped)" if skipped else ""
        raise CfgError(Diagnostic("E901", f"no frame of '{shown}' could be decoded{damaged}: "
                                  "nothing was written", shown,
                                  hint="the file may be damaged or the stream gone"))
    if not interrupted and frames < declared - 1 and (max_frames is None or frames < max_frames):
        # (one frame of slack: some containers count an estimate)
        warn(f"'{shown}' declares {declared} frames but {frames} could be decoded: the file "
             "ends early or is damaged (the outputs hold those frames)")
    elif not interrupted and declared_end is not None and end is not None and \
            (max_frames is None or frames < max_frames) and end + 1 / Fraction(rate) < declared_end:
        # (one frame of slack, as for a count)
        warn(f"'{shown}' declares {float(declared_end):.3f} s of video but the {frames} frame(s) "
             f"that could be decoded end at {float(end):.3f} s: the file ends early or is "
             "damaged (the outputs hold those frames)")
    result = VideoResult(source, frames, writer.objects, seconds, video_path, jsonl_path, labels,
                         interrupted, skipped)
    if interrupted:
        raise KeyboardInterrupt(result)
    return result


def declared_duration(container, stream) -> Fraction | None:
    """The end of the video track that a Matroska or WebM file declares (seconds), else None.
    Those count no frames (`stream.frames` is 0), but their muxers (FFmpeg's, mkvmerge) write
    each track's duration in its DURATION tag, `HH:MM:SS.nnnnnnnnn`, when the file is closed;
    a recording that never closed has none. Other containers' durations are left alone: a GIF's
    and an MPEG-TS's are FFmpeg's estimates from what it read, not declared."""
    import re

    if "matroska" not in container.format.name.split(","):
        return None
    match = re.fullmatch(r"(\d+):([0-5]\d):([0-5]\d(?:\.\d+)?)",
                         str(stream.metadata.get("DURATION", "")).strip())
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    end = (int(hours) * 60 + int(minutes)) * 60 + Fraction(seconds)
    return end if end > 0 else None


def _close_outputs(writer: _Writer, jsonl, container, out: Path,
                   outputs: list[tuple[Path, Path]], shown: str) -> None:
    """Stop the writer, close the files, and move each temp output (the video, the jsonl, the
    labels folder) to its name (the frames done when the run stopped early: a Ctrl-C, a
    damaged input); when writing them failed (a full disk or a file size limit under the
    encoder, the jsonl or a label file) remove them all instead, so nothing half-written is
    left, and raise a located E901 naming the output folder."""
    import shutil

    keep = True
    try:
        writer.finish()
        jsonl.close()  # its last flush can meet a full disk too
    except OSError as exc:
        keep = False
        # (a buffered write's error names no file; FFmpeg's names the hidden temp file)
        raise write_error(out, exc, what=f"the outputs of '{shown}' into '{out}'") from None
    except BaseException as exc:
        keep = False
        av = sys.modules.get("av")
        if av is not None and isinstance(exc, av.FFmpegError):  # (EINVAL ...: the encoder or
            # muxer refused what a damaged input gave it, not the disk; a traceback otherwise)
            raise CfgError(Diagnostic(
                "E901", f"cannot write the annotated video of '{shown}': "
                f"{ffmpeg_reason(exc, READ_TIMEOUT)}: nothing was written", shown,
                hint="the video's timestamps may be damaged: re-encode it "
                "(ffmpeg -i IN -c:v libx264 OUT.mp4)")) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            jsonl.close()
        close_source(container)
        for temp, final in outputs:
            if keep and writer.frames and temp.exists():  # (no frame written: no outputs, not
                # an empty .mp4 no player opens)
                os.replace(temp, final)
            elif temp.is_dir():
                shutil.rmtree(temp, ignore_errors=True)
            else:
                temp.unlink(missing_ok=True)


def _read_error(exc: BaseException, source: str, frames: int) -> BaseException:
    """A read that failed after `frames` frames (a stream gone silent, a file damaged past
    decoding) as E901; the outputs keep those frames."""
    av = require_av()
    if isinstance(exc, (av.FFmpegError, OSError)):
        reason = ffmpeg_reason(exc, READ_TIMEOUT)
        said = f"after {frames} frame(s): {reason} (the outputs hold those)" if frames else \
            f"{reason}: no frame was read, nothing was written"
        return CfgError(Diagnostic("E901", f"cannot read '{shown_source(source)}' {said}",
                                   shown_source(source),
                                   hint="the file may be damaged or the stream gone"))
    return exc


def _skipped_warning(skipped: _Skipped, source: str) -> str:
    at = f" at {skipped.seconds:.2f} s" if skipped.seconds is not None else ""
    return Diagnostic("W901", f"a packet of '{shown_source(source)}'{at} does not decode "
                      f"({ffmpeg_reason(skipped.error, READ_TIMEOUT)}): skipped, and the frames "
                      "after it are detected (Darknet's cv::VideoCapture skips it too)",
                      shown_source(source),
                      severity=WARNING, hint="the file may be damaged: copy it again, or "
                      "re-encode it for all of its frames").format()


def _source_text(source) -> str:
    """`source` as detect_video takes it: a path (str or os.PathLike), a URL, or a camera index
    (an int or its digits)."""
    if isinstance(source, int) and not isinstance(source, bool) and source >= 0:
        return str(source)
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    raise TypeError(f"source={source!r}: a video file's path, a stream URL or a camera index")


# -- a generated clip (for trying the pipeline, the tests and bench/detect_video.py) -------------
def moving_shapes_clip(path: str | os.PathLike, frames: int = 48, width: int = 320,
                       height: int = 240, fps: int = 24, objects: int = 3, classes: int = 8,
                       seed: int = 0) -> list[list[tuple[int, float, float, float, float]]]:
    """Write an H.264 (or MPEG-4) clip of the embedded detection set's shapes moving over a
    dark background, and return each frame's true boxes (class, x, y, w, h relative)."""

    from darkcfg.data.detection.embedded import COLOURS, class_look, shape_mask

    av = require_av()
    rng = np.random.default_rng(seed)
    colours = np.array(list(COLOURS.values()), np.float32)
    side = rng.uniform(0.2, 0.35, objects) * min(width, height)
    size = np.stack([side * rng.uniform(0.8, 1.25, objects), side], 1).astype(int)
    pos = rng.uniform(0, 1, (objects, 2)) * ([width, height] - size)
    speed = rng.uniform(-4, 4, (objects, 2))
    kinds = rng.integers(classes, size=objects)
    truth = []
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream(video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            img = np.full((height, width, 3), 30, np.float32)
            boxes = []
            for (x0, y0), (bw, bh), k in zip(pos.astype(int), size, kinds, strict=True):
                shape, colour, _ = class_look(int(k))
                dy = (np.arange(bh) + 0.5) / bh * 2 - 1
                dx = (np.arange(bw) + 0.5) / bw * 2 - 1
                mask = shape_mask(shape, dy[:, None], dx[None, :])
                img[y0:y0 + bh, x0:x0 + bw][mask] = colours[colour]
                boxes.append((int(k), (x0 + bw / 2) / width, (y0 + bh / 2) / height,
                              bw / width, bh / height))
            truth.append(boxes)
            frame = av.VideoFrame.from_ndarray(img.astype(np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            pos += speed  # bounce off the edges
            limit = [width, height] - size
            speed = np.where((pos < 0) | (pos > limit), -speed, speed)
            pos = np.clip(pos, 0, limit)
        for packet in stream.encode(None):
            container.mux(packet)
    return truth
