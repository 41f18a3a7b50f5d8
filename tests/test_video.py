"""--detect on videos (darkcfg.detect.video): a generated clip of moving shapes through a small
detector; outputs, equality with still-image detection, Ctrl-C, flag form and errors."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from cfgparse import CfgError  # noqa: E402
from darkcfg.cli import main  # noqa: E402
from darkcfg.detect import video  # noqa: E402
from darkcfg.detect.decode import detect  # noqa: E402
from darkcfg.detect.video import detect_video, is_video, moving_shapes_clip, source_name  # noqa: E402

CFG = """[net]
width=96
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
activation=leaky

[convolutional]
filters=21
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=2
num=3
"""
THRESH = 0.27  # the initial weights of seed 1 give ~20 boxes a frame above it on this clip
FRAMES = 10
NAMES = ["a", "b"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip")
    path = folder / "moving.mp4"
    truth = moving_shapes_clip(path, frames=FRAMES, width=160, height=120, seed=0)
    assert len(truth) == FRAMES and truth[0] != truth[-1]  # the boxes move
    return path


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.cfg"
    path.write_text(CFG)
    return path


@pytest.fixture(scope="module")
def net(cfg):
    from darkcfg.model import build_network

    built, _, _ = build_network(str(cfg), [], "alexeyab", 1)
    return built.eval()


def decoded_frames(path: Path) -> list[torch.Tensor]:
    with av.open(str(path)) as c:
        return [torch.from_numpy(f.to_ndarray(format="rgb24")).permute(2, 0, 1)
                for f in c.decode(video=0)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_outputs_one_video_and_one_jsonl_a_line_per_frame(net, clip, tmp_path):
    out = tmp_path / "out"
    r = detect_video(net, str(clip), out, thresh=THRESH, names=NAMES, batch_size=4,
                     progress=False)
    assert r.frames == FRAMES and not r.interrupted
    assert sorted(p.name for p in out.iterdir()) == ["moving.jsonl", "moving.mp4"]
    frames = decoded_frames(out / "moving.mp4")
    assert len(frames) == FRAMES and frames[0].shape == (3, 120, 160)
    lines = read_jsonl(out / "moving.jsonl")
    assert [rec["frame_id"] for rec in lines] == list(range(1, FRAMES + 1))
    assert [rec["time"] for rec in lines] == [round(k / 24, 6) for k in range(FRAMES)]  # 24 fps
    assert sum(len(rec["objects"]) for rec in lines) == r.objects > 0
    for rec in lines:
        assert set(rec) == {"frame_id", "objects", "time"}
        for obj in rec["objects"]:
            assert set(obj) == {"class_id", "name", "relative_coordinates", "confidence"}
            assert obj["name"] == NAMES[obj["class_id"]] and obj["confidence"] > THRESH
            assert set(obj["relative_coordinates"]) == {"center_x", "center_y", "width",
                                                        "height"}
    # the drawn video differs from the clip where boxes are drawn
    assert not torch.equal(frames[0], decoded_frames(clip)[0])


def test_a_frames_detections_equal_detect_on_that_frame_as_an_image(net, clip, tmp_path):
    from PIL import Image

    out = tmp_path / "out"
    detect_video(net, str(clip), out, thresh=THRESH, names=NAMES, batch_size=4, progress=False)
    lines = read_jsonl(out / "moving.jsonl")
    for k, frame in enumerate(decoded_frames(clip)):
        png = tmp_path / f"frame{k}.png"
        Image.fromarray(frame.permute(1, 2, 0).numpy()).save(png)
        found = detect(net, str(png), THRESH, names=NAMES)[0]
        expected = video.frame_json(k + 1, found, 160, 120)
        got = lines[k]
        assert len(got["objects"]) == len(expected["objects"])
        for a, b in zip(got["objects"], expected["objects"], strict=True):
            assert (a["class_id"], a["name"]) == (b["class_id"], b["name"])
            assert a["confidence"] == pytest.approx(b["confidence"], abs=1e-5)
            for key in ("center_x", "center_y", "width", "height"):
                assert a["relative_coordinates"][key] == pytest.approx(
                    b["relative_coordinates"][key], abs=1e-5)


@pytest.fixture
def ctrl_c_at_second_batch(monkeypatch):
    """The network's second batch is interrupted (Ctrl-C)."""
    real = video.run_heads
    calls = []

    def interrupted_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(video, "run_heads", interrupted_second_batch)


def test_ctrl_c_leaves_a_playable_video_of_the_frames_done(net, clip, tmp_path,
                                                           ctrl_c_at_second_batch):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt) as stop:
        detect_video(net, str(clip), out, thresh=THRESH, names=NAMES, batch_size=4,
                     progress=False)
    result = stop.value.args[0]
    assert result.interrupted and result.frames == 4
    assert len(decoded_frames(out / "moving.mp4")) == 4
    assert len(read_jsonl(out / "moving.jsonl")) == 4
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left


def test_ctrl_c_in_the_command_says_interrupted_once(cfg, clip, tmp_path, capsys,
                                                    ctrl_c_at_second_batch):
    rc = main([str(cfg), "--detect", str(clip), "--out", str(tmp_path / "run"), "--thresh",
               str(THRESH), "--no-progress", "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.count("interrupted") == 1, err
    assert "frame(s) written to" in err


def test_flag_form_with_labels(cfg, clip, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main([str(cfg), "--detect", str(clip), "--out", str(out), "--thresh", str(THRESH),
               "--save-labels", "--no-progress", "--seed", "1"])
    assert rc == 0
    assert f"{FRAMES} frame(s)" in capsys.readouterr().out
    labels = sorted((out / "moving_labels").iterdir())
    assert [p.name for p in labels] == [f"moving_{k:06d}.txt" for k in range(1, FRAMES + 1)]
    lines = read_jsonl(out / "moving.jsonl")
    for p, rec in zip(labels, lines, strict=True):
        rows = [li.split() for li in p.read_text().splitlines()]
        assert len(rows) == len({tuple(round(v, 4) for v in o["relative_coordinates"].values())
                                 for o in rec["objects"]})  # one line per box, best class
        assert all(len(r) == 5 and r[0] in ("0", "1") for r in rows)


def test_sources_are_recognised():
    assert is_video("a/b.MP4") and is_video("0") and is_video("rtsp://cam.local/live")
    assert is_video("http://host:8080/video.mjpg") and not is_video("photo.jpg")
    assert source_name("3") == "camera3"
    assert source_name("rtsp://user@cam.local:554/live/main") == "main"
    assert source_name("http://host:8080/") == "host"
    assert source_name("tcp://127.0.0.1:8766") == "127.0.0.1"  # was 127.0.0 (a "stem")
    assert source_name("rtsp://user:pw@cam.local") == "cam.local"
    assert source_name("clips/street.mkv") == "street"


def test_bad_sources_are_located_errors(cfg, tmp_path, capsys):
    missing = tmp_path / "missing.mp4"
    assert main([str(cfg), "--detect", str(missing), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{missing}: error[E901]: video '{missing}' does not exist" in err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 10)
    assert main([str(cfg), "--detect", str(broken), "--out", str(tmp_path / "out")]) == 2
    assert "error[E901]: cannot open video" in capsys.readouterr().err


def test_out_never_replaces_the_input_video(cfg, clip, tmp_path, capsys):
    """`detect clip.mp4 --out <its folder>` would write the annotated clip.mp4 over the input."""
    import shutil

    source = tmp_path / clip.name
    shutil.copy(clip, source)
    before = source.read_bytes()
    assert main([str(cfg), "--detect", str(source), "--out", str(tmp_path)]) == 2
    assert "would replace the input video" in capsys.readouterr().err
    assert source.read_bytes() == before and not (tmp_path / f"{source.stem}.jsonl").exists()


def test_missing_pyav_says_how_to_install(cfg, clip, tmp_path, monkeypatch, capsys):
    """Before any image of the same command is detected (it was found after them, as E901)."""
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "still.png")
    monkeypatch.setitem(sys.modules, "av", None)
    out = tmp_path / "out"
    for argv in ([str(cfg), "--detect", str(tmp_path / "still.png"), str(clip)],
                 ["detect", str(cfg), str(tmp_path / "still.png"), str(clip)]):
        assert main([*argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"{clip}: error[E905]: video input needs PyAV" in err and "darkcfg[video]" in err
        assert not out.exists()
    # the page quotes the line as it is printed (it said `--detect: error[E905]: ...`)
    page = (Path(__file__).resolve().parents[1] / "docs" / "anchors-and-video.md").read_text()
    quoted = re.search(r"`(clip\.mp4: error\[E905\]: [^`]+)`", page)
    assert quoted and quoted.group(1).replace("clip.mp4", str(clip)) in err.splitlines()


def test_a_video_that_ends_early_is_said_to(cfg, tmp_path, capsys):
    """An AVI cut short still opens and declares all its frames: the frames it has are
    detected, and a warning says the file ends early (before: exit 0 and nothing said)."""
    import av

    path = tmp_path / "cut.avi"
    out = av.open(str(tmp_path / "whole.avi"), "w", format="avi")
    stream = out.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    for i in range(20):
        frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 10 * i, np.uint8),
                                           format="rgb24")
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    whole = (tmp_path / "whole.avi").read_bytes()
    path.write_bytes(whole[:len(whole) * 8 // 10])
    try:
        with av.open(str(path)) as probe:
            declared = probe.streams.video[0].frames
            decoded = sum(1 for _ in probe.decode(video=0))
    except av.FFmpegError:
        pytest.skip("this FFmpeg does not open the cut file")
    if not decoded < declared - 1:
        pytest.skip("this FFmpeg decodes the cut file whole")
    assert main([str(cfg), "--detect", str(path), "--out", str(tmp_path / "out")]) == 0
    assert f"declares {declared} frames but {decoded} could be decoded" in \
        capsys.readouterr().err


def write_frames(path: Path, fmt: str, codec: str, frames: int, pix_fmt: str = "yuv420p"):
    """`frames` frames of 64x48 at 10 a second, each another grey with a moving box."""
    with av.open(str(path), "w", format=fmt) as c:
        stream = c.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        if codec.startswith("libvpx"):  # (its default took 3 s for these 30 frames)
            stream.options = {"deadline": "realtime", "cpu-used": "8"}
        for i in range(frames):
            img = np.full((48, 64, 3), 8 * i, np.uint8)
            img[i % 38:i % 38 + 10, i:i + 10] = (200, 40, 90)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)


@pytest.mark.parametrize("fmt, suffix, codec", [("webm", "webm", "libvpx-vp9"),
                                               ("matroska", "mkv", None)])
def test_a_matroska_that_ends_before_its_declared_duration_is_said_to(net, tmp_path, capsys,
                                                                      fmt, suffix, codec):
    # a WebM or MKV cut short (it counts no frames) gave no warning where an MP4 or AVI did: its
    # video track's DURATION tag says where the frames should end
    whole = tmp_path / f"whole.{suffix}"
    try:
        write_frames(whole, fmt, codec or video.video_codec(), 30)
    except (av.FFmpegError, ValueError):
        pytest.skip(f"this FFmpeg has no {codec} encoder")
    cut = tmp_path / f"cut.{suffix}"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size * 7 // 10])
    r = detect_video(net, whole, tmp_path / "out", thresh=THRESH, progress=False)
    assert r.frames == 30 and "ends early" not in capsys.readouterr().err  # (end at 3.000 s)
    r = detect_video(net, cut, tmp_path / "out2", thresh=THRESH, progress=False)
    assert 0 < r.frames < 28
    assert f"warning: '{cut}' declares 3.000 s of video but the {r.frames} frame(s) that " \
        f"could be decoded end at {r.frames / 10:.3f} s: the file ends early or is damaged" in \
        capsys.readouterr().err


def test_a_gif_cut_short_declares_nothing_and_is_not_said_to_end_early(net, tmp_path, capsys):
    # (FFmpeg counts a GIF's frames and its duration by reading them: no count to compare; a
    # GIF is a video to detect_video, an image to --detect)
    whole = tmp_path / "whole.gif"
    write_frames(whole, "gif", "gif", 30, pix_fmt="rgb8")
    cut = tmp_path / "cut.gif"
    cut.write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
    r = detect_video(net, cut, tmp_path / "out", thresh=THRESH, progress=False)
    assert 10 <= r.frames < 20 and "ends early" not in capsys.readouterr().err


@pytest.mark.parametrize("labels", [[], ["--save-labels"]])
def test_a_full_disk_is_one_error_and_leaves_nothing_half_written(cfg, clip, tmp_path, capsys,
                                                                  labels):
    """The encoder's and the jsonl's writes fail with ENOSPC (their temp names point at
    /dev/full): one located E901 naming the output folder, no thread's traceback, no temp
    files, no partial outputs (before: the writer thread's traceback, and its temp files; the
    --save-labels folder of the frames done was left)."""
    import os

    out = tmp_path / "out"
    out.mkdir()
    for suffix in ("mp4", "jsonl"):
        os.symlink("/dev/full", out / f".moving.{os.getpid()}.tmp.{suffix}")
    rc = main([str(cfg), "--detect", str(clip), "--out", str(out), "--no-progress", *labels])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{out}: error[E901]: cannot write the outputs of '{clip}' into '{out}': no space " \
        "left on the device" in err and "help: free some" in err
    assert "Traceback" not in err and "Exception in thread" not in err
    assert list(out.iterdir()) == []


def test_a_killed_detects_temp_files_go_with_the_next(cfg, clip, tmp_path, capsys):
    """SIGKILL in the middle of a video left `.moving.<pid>.tmp.mp4` and `.jsonl` in --out for
    good (the next detect's temp names carry its own pid). Now they are locked while written
    and the next detect of that video removes the ones nobody holds."""
    import fcntl
    import os

    out = tmp_path / "out"
    out.mkdir()
    for name in (".moving.999999.tmp.mp4", ".moving.999999.tmp.jsonl", ".moving.1.tmp.mp4"):
        (out / name).write_bytes(b"half")
    live = os.open(out / ".moving.1.tmp.mp4", os.O_RDONLY)  # a live writer's
    fcntl.flock(live, fcntl.LOCK_EX)
    try:
        assert main(["detect", str(cfg), str(clip), "--out", str(out), "--no-progress"]) == 0
    finally:
        os.close(live)
    capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [".moving.1.tmp.mp4", "moving.jsonl",
                                                     "moving.mp4"]


def test_two_videos_of_one_name_get_two_outputs(cfg, clip, tmp_path, capsys):
    """clip.mp4 and sub/clip.mp4 both wrote OUT/clip.mp4 (the second replacing the first); now
    the second is clip_1, as for images."""
    import shutil

    (tmp_path / "sub").mkdir()
    other = tmp_path / "sub" / clip.name
    shutil.copy(clip, other)
    out = tmp_path / "out"
    assert main(["detect", str(cfg), str(clip), str(other), "--out", str(out),
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["moving.jsonl", "moving.mp4",
                                                     "moving_1.jsonl", "moving_1.mp4"]
    assert len(read_jsonl(out / "moving.jsonl")) == len(read_jsonl(out / "moving_1.jsonl")) \
        == FRAMES


def test_a_folder_named_by_digits_is_a_folder_not_a_camera(cfg, tmp_path, monkeypatch, capsys):
    # `detect CFG 2024` in the folder holding photos/2024 opened /dev/video2024 (E901)
    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Path("2024").mkdir()
    Image.new("RGB", (40, 30), (90, 20, 140)).save("2024/party.jpg")
    assert is_video("7") and not is_video("2024")
    assert main([str(cfg), "--detect", "2024", "--out", "out", "--no-progress"]) == 0
    assert "2024/party.jpg: " in capsys.readouterr().out
    assert (tmp_path / "out" / "party.jpg").is_file()


@pytest.mark.parametrize("rotation", [90, -90, 180])
def test_a_rotated_clip_is_detected_upright(net, tmp_path, rotation):
    # a phone's portrait video is stored sideways with a display matrix: cv::VideoCapture
    # (Darknet's demo) turns it upright, as detect does a JPEG's EXIF orientation; the frames
    # were detected and written sideways
    import numpy as np

    path = tmp_path / "portrait.mp4"
    rng = np.random.default_rng(3)
    stored = [(rng.uniform(0, 1, (64, 96, 3)) * 255).astype(np.uint8) for _ in range(3)]
    for s in stored:
        s[:, :24] = 255  # a white band on the stored frame's left edge
    with av.open(str(path), "w", format="mp4") as c:
        stream = c.add_stream(video.video_codec(), rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.set_display_rotation(rotation)  # counter-clockwise, as VideoFrame.rotation
        for s in stored:
            for packet in stream.encode(av.VideoFrame.from_ndarray(s, format="rgb24")):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    out = tmp_path / "out"
    detect_video(net, str(path), out, thresh=THRESH, names=NAMES, batch_size=2, progress=False)
    upright = [np.ascontiguousarray(np.rot90(f.permute(1, 2, 0).numpy(), rotation // 90))
               for f in decoded_frames(path)]
    assert upright[0].shape[:2] == ((96, 64) if rotation % 180 else (64, 96))
    band = {90: (slice(-24, None), slice(None)), -90: (slice(0, 24), slice(None)),
            180: (slice(None), slice(-24, None))}[rotation]
    assert upright[0][band].min() > 200  # the band is where a viewer shows it
    written = decoded_frames(out / "portrait.mp4")
    assert written[0].shape[1:] == upright[0].shape[:2]
    for k, (frame, rec) in enumerate(zip(upright, read_jsonl(out / "portrait.jsonl"),
                                         strict=True)):
        found = detect(net, torch.from_numpy(frame).permute(2, 0, 1), THRESH, names=NAMES)[0]
        h, w = frame.shape[:2]
        assert rec == json.loads(json.dumps(video.frame_json(k + 1, found, w, h, rec["time"])))


def damaged_clip(clip: Path, path: Path, packet: int = 5) -> Path:
    """`clip` with the first bytes of its `packet`-th video packet overwritten: that packet no
    longer decodes (FFmpeg's InvalidDataError), the others do."""
    with av.open(str(clip)) as c:
        places = [(p.pos, p.size) for p in c.demux(video=0) if p.size]
    data = bytearray(clip.read_bytes())
    pos, size = places[packet]
    data[pos:pos + min(size, 8)] = b"\xff" * min(size, 8)
    path.write_bytes(bytes(data))
    return path


def test_a_damaged_packet_is_skipped_and_the_frames_after_it_detected(net, cfg, clip, tmp_path,
                                                                      capsys):
    # a damaged packet in the middle stopped the whole video (E901, exit 2); cv::VideoCapture
    # skips it for Darknet's demo and the frames after it are detected
    bad = damaged_clip(clip, tmp_path / "bad.mp4")
    out = tmp_path / "out"
    r = detect_video(net, str(bad), out, thresh=THRESH, names=NAMES, batch_size=4,
                     progress=False, save_labels=True)
    err = capsys.readouterr().err
    assert r.skipped == 1 and r.frames == FRAMES - 1, err
    assert f"{bad}: warning[W901]: a packet of '{bad}' at " in err and "skipped" in err
    assert len(read_jsonl(out / "bad.jsonl")) == len(decoded_frames(out / "bad.mp4")) \
        == len(list((out / "bad_labels").iterdir())) == FRAMES - 1
    assert main([str(cfg), "--detect", str(bad), "--out", str(tmp_path / "cli"),
                 "--no-progress"]) == 0
    assert "; 1 damaged packet(s) skipped (W901 above)" in capsys.readouterr().out


@pytest.mark.parametrize(("kwargs", "error", "says"), [
    ({"batch_size": 0}, ValueError, "batch_size=0"),  # was one batch of the whole video
    ({"batch_size": 2.5}, ValueError, "batch_size=2.5"),
    ({"max_frames": -1}, ValueError, "max_frames=-1"),  # was 1 frame
    ({"max_frames": 0}, ValueError, "max_frames=0"),
    ({"thresh": 1.5}, ValueError, "thresh=1.5"),  # was 0 objects, silently
    ({"thresh": float("nan")}, ValueError, "thresh=nan"),
    ({"nms": -0.1}, ValueError, "nms=-0.1"),
    ({"names": "coco.names"}, TypeError, "not a file"),
    ({"name": "a/b"}, ValueError, "not a path"),  # was FileNotFoundError of a temp file
    ({"source": None}, TypeError, "source=None"),  # was AttributeError: 'isdigit'
])
def test_detect_video_refuses_arguments_no_run_can_use(net, clip, tmp_path, kwargs, error,
                                                       says):
    source = kwargs.pop("source", str(clip))
    with pytest.raises(error, match=says.replace("(", r"\(").replace(".", r"\.")):
        detect_video(net, source, tmp_path / "out", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_detect_video_takes_a_path_and_runs_in_eval_mode(cfg, clip, net, tmp_path):
    # a Path source was an AttributeError; a net left in training mode gave other boxes than
    # detect (batch-norm's batch statistics), silently
    from darkcfg.model import build_network

    training = build_network(str(cfg), [], "alexeyab", 1)[0].train()
    r = detect_video(training, clip, tmp_path / "a", thresh=THRESH, progress=False)
    expected = detect_video(net, str(clip), tmp_path / "b", thresh=THRESH, progress=False)
    assert not training.training
    assert read_jsonl(tmp_path / "a" / "moving.jsonl") == \
        read_jsonl(tmp_path / "b" / "moving.jsonl") and r.objects == expected.objects > 0


def test_a_name_that_fits_is_not_refused_for_its_temp_names(net, clip, tmp_path):
    # a 240-character name (outputs of up to 251) failed: its temp file
    # .NAME.PID.tmp.jsonl was longer than a file name may be
    name = "m" * 240
    out = tmp_path / "out"
    r = detect_video(net, str(clip), out, thresh=THRESH, progress=False, save_labels=True,
                     name=name)
    assert r.frames == FRAMES
    assert sorted(p.name for p in out.iterdir()) == [f"{name}.jsonl", f"{name}.mp4",
                                                     f"{name}_labels"]
    assert len(list((out / f"{name}_labels").iterdir())) == FRAMES


def test_a_file_size_limit_leaves_no_labels_and_says_so(cfg, clip, tmp_path, capsys):
    # RLIMIT_FSIZE (ulimit -f) under the outputs: E901 'File too large' with the hint "check
    # the path", and the --save-labels folder of the frames done was left beside nothing
    import resource
    import signal

    out = tmp_path / "out"
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, limits[1]))
    try:
        rc = main([str(cfg), "--detect", str(clip), "--out", str(out), "--thresh", str(THRESH),
                   "--seed", "1", "--save-labels", "--no-progress"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, handler)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{out}: error[E901]: cannot write the outputs of '{clip}' into '{out}': the file " \
        "would be larger than this process may write" in err and "ulimit -f" in err
    assert list(out.iterdir()) == []


def test_a_video_that_cannot_be_opened_stops_the_command_before_any_image(cfg, tmp_path,
                                                                          capsys):
    # the images before it were detected and written first, then E901 (and the --out then
    # held an earlier detect's outputs); FFmpeg's "[Errno -1094995529]" was in the message
    from PIL import Image

    Image.new("RGB", (40, 30)).save(tmp_path / "still.png")
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video\n")
    out = tmp_path / "out"
    assert main([str(cfg), "--detect", str(tmp_path / "still.png"), str(fake), "--out",
                 str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{fake}: error[E901]: cannot open video '{fake}': Invalid data found" in err
    assert "Errno" not in err and not out.exists()


def test_a_silent_stream_is_a_timeout_said_as_one(cfg, tmp_path, monkeypatch, capsys):
    # FFmpeg's interrupt at the timeout read "Immediate exit requested"
    import socket

    monkeypatch.setattr(video, "OPEN_TIMEOUT", 0.5)
    with socket.socket() as server:  # accepts (the kernel's backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/live.mp4"
        assert main([str(cfg), "--detect", url, "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 2
    assert f"{url}: error[E901]: cannot open video '{url}': no answer within 0.5 s" in \
        capsys.readouterr().err


def test_a_raw_h264_stream_is_a_video(cfg, tmp_path, capsys):
    # an .h264 elementary stream (no container, no frame rate) was taken for an image
    path = tmp_path / "raw.h264"
    with av.open(str(path), "w", format="h264") as c:
        stream = c.add_stream(video.video_codec(), rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * i, np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    assert is_video(str(path)) and is_video("x.Y4M") and is_video("x.hevc")
    assert main([str(cfg), "--detect", str(path), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    assert "raw.h264: 4 frame(s)" in capsys.readouterr().out
    assert len(read_jsonl(tmp_path / "out" / "raw.jsonl")) == 4


def test_a_labels_folder_in_the_way_is_refused_not_mixed(net, clip, tmp_path):
    # detect_video wrote its label files into an existing OUT/<name>_labels among others
    out = tmp_path / "out"
    (out / "moving_labels").mkdir(parents=True)
    (out / "moving_labels" / "mine.txt").write_text("0 .5 .5 .1 .1\n")
    with pytest.raises(CfgError, match="already holds 'moving_labels'"):
        detect_video(net, str(clip), out, progress=False, save_labels=True)
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt", "moving_labels"]


def test_a_stream_gone_silent_keeps_the_frames_read_and_says_why(cfg, tmp_path, monkeypatch,
                                                                capsys):
    # was "cannot decode URL: [Errno 1414092869] Immediate exit requested" (FFmpeg's read
    # timeout); the frames the reader had not yet batched were lost
    import re
    import socket
    import threading

    ts = tmp_path / "live.ts"
    with av.open(str(ts), "w", format="mpegts") as c:
        stream = c.add_stream(video.video_codec(), rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        rng = np.random.default_rng(0)
        for _ in range(20):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), np.uint8),
                                               format="rgb24")
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)
    data = ts.read_bytes()
    done = threading.Event()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve_half_then_stall():
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: video/mp2t\r\n\r\n"
                         + data[:len(data) // 2])
            done.wait(30)

    thread = threading.Thread(target=serve_half_then_stall, daemon=True)
    thread.start()
    monkeypatch.setattr(video, "READ_TIMEOUT", 1.0)
    monkeypatch.setattr(video, "OPEN_TIMEOUT", 1.0)  # (FFmpeg's probe waits for more too)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/live.ts"
    out = tmp_path / "out"
    try:
        rc = main([str(cfg), "--detect", url, "--out", str(out), "--no-progress"])
    finally:
        done.set()
        thread.join()
        server.close()
    err = capsys.readouterr().err
    assert rc == 2, err
    said = re.search(rf"{re.escape(url)}: error\[E901\]: cannot read '{re.escape(url)}' after "
                     r"(\d+) frame\(s\): no answer within 1 s \(the outputs hold those\)", err)
    assert said and int(said.group(1)) > 0, err
    assert len(read_jsonl(out / "live.jsonl")) == int(said.group(1))


def test_ctrl_c_while_a_stream_is_opened_stops_at_once(cfg, tmp_path, monkeypatch, capsys):
    # FFmpeg's open of a stream that does not answer blocked in C: Ctrl-C (SIGTERM, SIGHUP)
    # waited out the 10 s timeout and the command ended with E901, exit 2, not 130
    import os
    import signal
    import socket
    import threading
    import time

    monkeypatch.setattr(video, "OPEN_TIMEOUT", 8.0)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    with socket.socket() as server:  # accepts (the kernel's backlog), never answers
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        url = f"http://127.0.0.1:{server.getsockname()[1]}/live.mp4"
        start = time.perf_counter()
        timer.start()
        try:
            rc = main(["detect", str(cfg), url, "--out", str(tmp_path / "out"),
                       "--no-progress"])
        finally:
            timer.cancel()
        took = time.perf_counter() - start
    assert rc == 130 and "interrupted" in capsys.readouterr().err
    assert took < 4, took


def test_a_video_of_no_decodable_frame_writes_nothing(cfg, clip, tmp_path, capsys):
    # every packet damaged: exit 0 with an empty .mp4 (0 bytes, no player opens it), an empty
    # .jsonl and an empty labels folder under their final names
    with av.open(str(clip)) as c:
        count = sum(1 for p in c.demux(video=0) if p.size)
    import re

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(clip.read_bytes())
    for k in range(count):
        damaged_clip(bad, bad, packet=k)
    out = tmp_path / "out"
    assert main([str(cfg), "--detect", str(bad), "--out", str(out), "--no-progress",
                 "--save-labels"]) == 2
    assert re.search(rf"{re.escape(str(bad))}: error\[E901\]: no frame of '{re.escape(str(bad))}' "
                     r"could be decoded \(\d+ damaged packet\(s\) skipped\): nothing was "
                     "written", capsys.readouterr().err)
    assert list(out.iterdir()) == []


def test_ctrl_c_before_the_first_frame_leaves_no_empty_video(cfg, clip, tmp_path, monkeypatch,
                                                            capsys):
    # the temp .mp4 (created empty, to be locked) was renamed to OUT/moving.mp4: 0 bytes
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(video, "run_heads", interrupted)
    out = tmp_path / "out"
    assert main([str(cfg), "--detect", str(clip), "--out", str(out), "--no-progress"]) == 130
    assert f"no frame of '{clip}' written before the interrupt" in capsys.readouterr().err
    assert list(out.iterdir()) == []


def test_a_line_break_in_a_video_name_does_not_split_its_diagnostics(cfg, clip, tmp_path,
                                                                    capsys):
    # the messages quoted the raw name: 'cor<newline>rupt.mp4' broke the one-line
    # `path: warning[W901]: message` in two (the path part was escaped, the message not)
    bad = damaged_clip(clip, tmp_path / "cor\nrupt.mp4")
    assert main([str(cfg), "--detect", str(bad), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "warning[W901]: a packet of '" + str(tmp_path) + "/cor\\nrupt.mp4' at " in err
    missing = tmp_path / "miss\ning.mp4"
    assert main([str(cfg), "--detect", str(missing), "--out", str(tmp_path / "out2")]) == 2
    assert f"error[E901]: video '{tmp_path}/miss\\ning.mp4' does not exist" in \
        capsys.readouterr().err


def test_a_folder_named_like_a_video_is_a_folder_and_a_pipe_is_not_a_file(cfg, tmp_path,
                                                                         monkeypatch, capsys):
    # a folder of photos named trip.mov, and a FIFO named live.mp4, were both "video ... does
    # not exist"
    import os

    from PIL import Image

    monkeypatch.chdir(tmp_path)
    Path("trip.mov").mkdir()
    Image.new("RGB", (40, 30), (90, 20, 140)).save("trip.mov/beach.jpg")
    assert not is_video("trip.mov") and is_video("other.mov")
    assert main([str(cfg), "--detect", "trip.mov", "--out", "out", "--no-progress"]) == 0
    assert (tmp_path / "out" / "beach.jpg").is_file()
    os.mkfifo("live.mp4")
    assert main([str(cfg), "--detect", "live.mp4", "--out", "out2"]) == 2
    assert "live.mp4: error[E901]: video 'live.mp4' is not a file (a pipe, a device or a " \
        "socket)" in capsys.readouterr().err


def test_a_streams_password_is_not_shown(cfg, tmp_path, capsys):
    # rtsp://admin:secret@host/... was printed whole in the E901 (and so in CI and service logs)
    url = "rtsp://admin:s3cret@127.0.0.1:1/live"
    assert main([str(cfg), "--detect", url, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "s3cret" not in err and "rtsp://admin:***@127.0.0.1:1/live: error[E901]: cannot " \
        "open video 'rtsp://admin:***@127.0.0.1:1/live'" in err
    assert video.shown_source("http://u@h/x\n") == "http://u@h/x\\n"


def test_a_stream_that_changes_size_is_detected_at_each_frames_size(net, tmp_path):
    # (docs/anchors-and-video.md): a frame of another size than the first is detected at its
    # own size, its .jsonl relative to it; the annotated video keeps the first frame's size
    def raw(size, shade):
        path = tmp_path / f"{size[0]}.h264"
        with av.open(str(path), "w", format="h264") as c:
            stream = c.add_stream(video.video_codec(), rate=10)
            stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
            for _ in range(3):
                frame = av.VideoFrame.from_ndarray(np.full((size[1], size[0], 3), shade,
                                                           np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    c.mux(packet)
            for packet in stream.encode(None):
                c.mux(packet)
        return path.read_bytes()

    both = tmp_path / "both.h264"
    both.write_bytes(raw((160, 120), 60) + raw((96, 64), 200))
    out = tmp_path / "out"
    r = detect_video(net, str(both), out, thresh=THRESH, names=NAMES, batch_size=2,
                     progress=False)
    assert r.frames == 6
    written = decoded_frames(out / "both.mp4")
    assert [f.shape[1:] for f in written] == [(120, 160)] * 6
    source = decoded_frames(both)
    assert [f.shape[1:] for f in source] == [(120, 160)] * 3 + [(64, 96)] * 3
    for k, (frame, rec) in enumerate(zip(source, read_jsonl(out / "both.jsonl"), strict=True)):
        found = detect(net, frame, THRESH, names=NAMES)[0]
        h, w = frame.shape[1:]
        assert rec == json.loads(json.dumps(video.frame_json(k + 1, found, w, h, rec["time"])))


def test_a_variable_frame_rate_clip_keeps_its_frames_times(net, tmp_path):
    """A phone's clip has a variable frame rate: its frames were written 1/rate apart (as
    Darknet's cv::VideoWriter writes them), at the header's average rate, so the annotated video
    drifted from the input (a frame 0.5 s in was shown at 0.39 s). Each frame keeps its time."""
    from fractions import Fraction

    times_ms = [0, 40, 80, 200, 240, 500, 530, 560, 1000]
    path = tmp_path / "phone.mp4"
    with av.open(str(path), "w", format="mp4") as c:
        stream = c.add_stream(video.video_codec(), rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = stream.time_base = Fraction(1, 1000)
        for k, ms in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), 20 * k, np.uint8),
                                               format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            for packet in stream.encode(frame):
                c.mux(packet)
        for packet in stream.encode(None):
            c.mux(packet)

    def times(video_path: Path) -> list[float]:
        with av.open(str(video_path)) as c:
            return [round(float(f.time), 4) for f in c.decode(video=0)]

    assert times(path) == [ms / 1000 for ms in times_ms]  # the clip is what the test means
    out = tmp_path / "out"
    r = detect_video(net, str(path), out, thresh=THRESH, batch_size=4, progress=False)
    assert r.frames == len(times_ms)
    assert times(out / "phone.mp4") == times(path)
    # and each frame's record says when it is shown (frame_id alone does not, here)
    assert [rec["time"] for rec in read_jsonl(out / "phone.jsonl")] == times(path)
    # a time base finer than MPEG-4 part 2 takes is coarsened by a whole factor
    assert video.output_time_base(Fraction(1, 90000)) == Fraction(1, 45000)
    assert video.output_time_base(Fraction(1, 1_000_000)) == Fraction(1, 62500)
    assert video.output_time_base(Fraction(1001, 30000)) == Fraction(1001, 30000)


# A file of a video's name whose content FFmpeg takes for a list or script naming other files or
# URLs (it probes the content, not the name): {url} is a local server's, other.mp4 a clip beside.
LISTS = {
    "an ffconcat list": "ffconcat version 1.0\nfile other.mp4\n",
    "an M3U (HLS) playlist": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{url}/seg.ts\n"
                             "#EXTINF:10,\nother.mp4\n#EXT-X-ENDLIST\n",
    "a DASH manifest": '<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" '
                       'profiles="urn:mpeg:dash:profile:isoff-on-demand:2011" type="static">'
                       '<BaseURL>{url}/</BaseURL><Period><AdaptationSet mimeType="video/mp4">'
                       '<Representation id="1" bandwidth="1000"><BaseURL>other.mp4</BaseURL>'
                       '</Representation></AdaptationSet></Period></MPD>\n',
    "an SDP session description": "v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\n"
                                  "t=0 0\nm=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\n",
    "a VobSub index": "# VobSub index file, v7 (do not modify this line!)\nsize: 64x48\n"
                      "id: en, index: 0\ntimestamp: 00:00:00:000, filepos: 000000000\n",
}


@pytest.mark.parametrize("kind", LISTS)
def test_a_video_file_that_names_other_files_or_urls_is_refused_before_ffmpeg_opens_it(
        cfg, clip, tmp_path, monkeypatch, capsys, kind):
    # an ffconcat list named clip.mp4 was detected as the clip beside it (a link there to a
    # private photo went into the annotated video), a VobSub index read its .sub; the others
    # FFmpeg refused by chance (HLS for its name, SDP for its whitelist), saying "Invalid data"
    import select
    import shutil
    import socket

    shutil.copy(clip, tmp_path / "other.mp4")
    (tmp_path / "clip.sub").write_bytes(bytes(2048))
    opened = []
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        path = tmp_path / "clip.mp4"
        path.write_text(LISTS[kind].format(url=f"http://127.0.0.1:{port}", port=port))
        assert main([str(cfg), "--detect", str(path), "--out", str(tmp_path / "out"),
                     "--no-progress"]) == 2
        assert not select.select([server], [], [], 0)[0]  # nobody connected
    err = capsys.readouterr().err
    assert f"{path}: error[E901]: video '{path}' is {kind}" in err
    assert "not a video: FFmpeg would open the files or URLs it names" in err
    assert "help: give the videos it names themselves" in err
    assert opened == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, named", [("ffconcat version 1.0\nfile other.mp4\n", "other.mp4"),
                                         (LISTS["a VobSub index"], "clip.sub")])
def test_ffmpeg_opens_no_file_beside_a_video_file(tmp_path, monkeypatch, text, named):
    # what the list check above does not know (FFmpeg has more demuxers than it names) FFmpeg
    # itself may not open: the video file is handed over as a file object and no protocol is
    # whitelisted. The file it names is a FIFO: FFmpeg's open of it would wait for a writer,
    # which the test then is (and sees it)
    import errno
    import os
    import threading

    monkeypatch.setattr(video, "list_kind", lambda head: None)
    path = tmp_path / "clip.mp4"
    path.write_text(text)
    os.mkfifo(tmp_path / named)
    result = {}

    def opening():
        try:
            video.close_source(video.open_source(str(path)))
        except CfgError as exc:
            result["error"] = str(exc)

    opener = threading.Thread(target=opening, daemon=True)
    opener.start()
    read = False
    while opener.is_alive():
        try:
            os.close(os.open(tmp_path / named, os.O_WRONLY | os.O_NONBLOCK))
            read = True  # (closed at once: FFmpeg reads an end of file)
        except OSError as exc:
            assert exc.errno == errno.ENXIO  # no reader
        opener.join(0.05)
    assert not read
    assert f"{path}: error[E901]: cannot open video '{path}'" in result["error"]


@pytest.mark.parametrize("name", ["cache:a.mp4", "subfile,,start,0,end,0,,:a.mp4"])
def test_a_video_named_like_an_ffmpeg_protocol_is_that_file(net, tmp_path, monkeypatch, name):
    # FFmpeg took the name's prefix for a protocol: 'cache:a.mp4' detected a.mp4's frames
    import os

    monkeypatch.chdir(tmp_path)
    moving_shapes_clip("a.mp4", frames=4, width=64, height=48)
    moving_shapes_clip("named.mp4", frames=6, width=64, height=48)
    os.rename("named.mp4", name)
    r = detect_video(net, name, tmp_path / "out", thresh=THRESH, progress=False)
    assert r.frames == 6


@pytest.mark.parametrize("fmt, suffix, codec", [("mp4", "mp4", None), ("matroska", "mkv", None),
                                               ("avi", "avi", "mpeg4"), ("h264", "h264", None),
                                               ("yuv4mpegpipe", "y4m", "rawvideo")])
def test_a_video_file_of_each_kind_is_read_and_let_go(net, tmp_path, fmt, suffix, codec):
    # (opened as a file object with no protocol allowed: nothing a plain file needs is lost,
    # and the file is closed with the video)
    path = tmp_path / f"clip.{suffix}"
    write_frames(path, fmt, codec or video.video_codec(), 3)
    r = detect_video(net, str(path), tmp_path / "out", thresh=THRESH, progress=False)
    assert r.frames == 3
    container = video.open_source(str(path))
    file = container.file.file
    video.close_source(container)
    assert file.closed and file.name == str(path)
