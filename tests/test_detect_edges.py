"""`darkcfg detect` and `predict` on hostile input: what a stranger's files, pipes and names
did to them (docs/robustness.md, "Detection")."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.test_detect import run_cli, tiny_cfg


def save(path, h: int, w: int, seed: int = 0):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.uniform(0, 1, (h, w, 3)) * 255).astype(np.uint8)).save(path)
    return path


def test_coco_results_leave_out_boxes_with_no_area_in_the_image():
    # a box in a letterbox's padding (below a 200x10 image) was written with a negative height
    # (Darknet's print_cocos clips each corner on one side only): not a COCO box
    from darkcfg.detect.decode import Found
    from darkcfg.detect.run import coco_results

    below = Found(0, "", 0.5, (10.0, 20.0, 30.0, 40.0))  # wholly under a 200x10 image
    partly = Found(1, "", 0.6, (-5.0, 4.0, 30.0, 40.0))
    right = Found(2, "", 0.7, (210.0, 2.0, 230.0, 8.0))  # wholly right of it
    out = coco_results([below, partly, right], 3, 200, 10)
    assert out == [{"image_id": 3, "category_id": 1, "bbox": [0.0, 4.0, 30.0, 6.0],
                    "score": 0.6}]


def test_letterboxed_detections_json_holds_only_boxes_inside_the_image(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    image = save(tmp_path / "thin.png", 10, 200)
    out = tmp_path / "o"
    assert run_cli(cfg, "--detect", image, "--letter-box", "--thresh", "0.05", "--out", out,
                   "--no-progress") == 0
    printed = sum("%\t(" in line for line in capsys.readouterr().out.splitlines())
    results = json.loads((out / "detections.json").read_text())
    assert results and all(r["bbox"][2] > 0 and r["bbox"][3] > 0 for r in results)
    assert len(results) < printed  # the boxes in the padding are printed, not in the JSON


def never_built(monkeypatch):
    """Building a network fails the test: what is checked must be said before the build."""
    def build_network(*args, **kw):
        raise AssertionError("the network was built before the inputs were checked")

    monkeypatch.setattr("darkcfg.model.build_network", build_network)


def test_a_missing_image_is_said_before_the_build_and_leaves_no_out_folder(
        tmp_path, capsys, monkeypatch):
    # found after the build and the weights (seconds for yolov4), leaving an empty
    # runs/<cfg>/detect behind
    cfg = tiny_cfg(tmp_path)
    save(tmp_path / "imgs" / "a.jpg", 20, 30)
    never_built(monkeypatch)
    monkeypatch.chdir(tmp_path)
    assert run_cli(cfg, "--detect", "imgs", "missing.jpg") == 2
    assert "missing.jpg' does not exist" in capsys.readouterr().err
    (tmp_path / "imgs" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
    assert run_cli(cfg, "--detect", "imgs") == 2
    assert "bad.png: cannot identify image file" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_broken_link_or_fifo_is_not_called_missing(tmp_path, capsys, monkeypatch):
    import os

    cfg = tiny_cfg(tmp_path)
    folder = tmp_path / "imgs"
    save(folder / "a.jpg", 20, 30)
    (folder / "gone.jpg").symlink_to("nowhere.jpg")
    os.mkfifo(folder / "pipe.png")
    never_built(monkeypatch)
    assert run_cli(cfg, "--detect", folder / "gone.jpg") == 2
    assert "'nowhere.jpg', which does not exist" in capsys.readouterr().err
    assert run_cli(cfg, "--detect", folder / "pipe.png") == 2
    assert "is not a file (a FIFO, socket or device)" in capsys.readouterr().err
    # in a folder they were passed over without a word
    from darkcfg.detect.run import image_paths

    assert image_paths([str(folder)]) == ([folder / "a.jpg"], True)
    assert "skipped 2 image name(s) that are not files (e.g. " in capsys.readouterr().err


def test_predict_image_typo_is_said_before_training(tmp_path, capsys, monkeypatch,
                                                     tiny_classifier):
    # runner.py CFG --train --predict typo.png trained to the end, then said it
    import darkcfg.cli.train

    cfg = tiny_classifier.write(tmp_path / "tiny.cfg")
    monkeypatch.setattr(darkcfg.cli.train, "run", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("trained before the --predict images were checked")))
    assert run_cli(cfg, "--train", "--predict", tmp_path / "typo.png") == 2
    assert "typo.png' does not exist" in capsys.readouterr().err


def test_predict_prints_each_image_as_it_is_classified(tmp_path, capsys, monkeypatch,
                                                        tiny_classifier):
    # a folder of thousands printed nothing until the last image was classified
    import darkcfg.train.session as session
    from darkcfg.cli import main

    cfg = tiny_classifier.write(tmp_path / "tiny.cfg")
    for i in range(3):
        save(tmp_path / "imgs" / f"{i}.png", 12, 12, seed=i)
    printed = []
    read_image = session.read_image

    def reading(path, channels):
        printed.append(capsys.readouterr().out.count("%"))
        return read_image(path, channels)

    monkeypatch.setattr(session, "read_image", reading)
    assert main(["predict", str(cfg), str(tmp_path / "imgs"), "--top", "2"]) == 0
    assert printed == [0, 2, 2]  # image 1's line is out before image 2 is read


def test_a_names_file_breaks_lines_at_line_breaks_only(tmp_path, capsys):
    # str.splitlines also broke at a form feed and U+2028: every class after one was printed
    # under its neighbour's name (Darknet's get_labels breaks at '\n' only)
    from darkcfg.detect.run import read_names

    path = tmp_path / "odd.names"
    path.write_text("zero \r\none\u2028x\r\n\r\nthree\x0cfour\r\nfive\n", encoding="utf-8")
    names, _, _ = read_names(str(path), None)
    assert names == ["zero", "one\u2028x", "", "three\x0cfour", "five"]
    assert "line 3 of" in capsys.readouterr().err


def test_an_image_list_is_read_as_darknets_lists(tmp_path, capsys, monkeypatch):
    # a list.txt (Darknet's `detector test ... < list.txt`) was an image that Pillow could not
    # identify: "convert it to JPEG/PNG"
    from darkcfg.detect.run import image_paths

    monkeypatch.chdir(tmp_path)
    save(tmp_path / "data" / "sub" / "a.jpg", 20, 30)
    save(tmp_path / "b.png", 20, 30)
    listed = tmp_path / "data" / "list.txt"
    # a BOM, CRLF, a blank line, spaces; one path next to the list, one from the working folder
    listed.write_bytes(b"\xef\xbb\xbfsub/a.jpg\r\n\r\n  b.png \r\n")
    assert image_paths(["data/list.txt"]) == ([Path("data/sub/a.jpg"), Path("b.png")], True)
    listed.write_text("sub/a.jpg\nnope.jpg\n")
    cfg = tiny_cfg(tmp_path)
    assert run_cli(cfg, "--detect", "data/list.txt") == 2
    err = capsys.readouterr().err
    assert "data/list.txt:2:1: error[E901]: listed image 'nope.jpg' does not exist" in err
    listed.write_text("sub\n")
    assert run_cli(cfg, "--detect", "data/list.txt") == 2
    assert "listed image 'sub' is a folder, not an image file" in capsys.readouterr().err
    listed.write_text("sub/a.jpg\n")
    assert run_cli(cfg, "--detect", "data/list.txt", "--out", "o", "--no-progress") == 0
    assert (tmp_path / "o" / "a.jpg").is_file()


class ClosedAfter:
    """A stdout whose reader leaves after the result lines of `images` images."""

    def __init__(self, images: int, spare):
        self.images, self.spare = images, spare

    def write(self, text):
        if " object(s)" in text:
            if self.images <= 0:
                raise BrokenPipeError(32, "Broken pipe")
            self.images -= 1
        return len(text)

    def flush(self):
        pass

    def fileno(self):  # what guarded points at /dev/null afterwards: a file of the test's own
        return self.spare.fileno()


def test_a_closed_stdout_keeps_the_detections_of_the_images_drawn(tmp_path, capsys,
                                                                  monkeypatch):
    # `darkcfg detect DIR | head` stopped at the first line it could not print and left the
    # drawn images without a detections.json
    import sys

    cfg = tiny_cfg(tmp_path)
    for i in range(3):
        save(tmp_path / "imgs" / f"{i}.png", 20, 30, seed=i)
    out = tmp_path / "o"
    with open(tmp_path / "spare", "w") as spare:
        monkeypatch.setattr(sys, "stdout", ClosedAfter(1, spare))
        assert run_cli(cfg, "--detect", tmp_path / "imgs", "--out", out, "--thresh", "0.3",
                       "--no-progress") == 0
    assert sorted(p.name for p in out.iterdir()) == ["0.jpg", "detections.json"]
    found = json.loads((out / "detections.json").read_text())
    assert found and {d["image_id"] for d in found} == {0}
    assert "1 of 3 image(s) written" in capsys.readouterr().err


def test_detections_json_is_written_as_it_comes_and_a_failed_write_leaves_nothing(
        tmp_path, monkeypatch):
    import errno

    from cfgparse import CfgError
    from darkcfg.detect.run import JsonList

    entries = [{"image_id": 1, "bbox": [0.5, 1, 2, 3], "score": 0.25}, {"image_id": "x"}]
    written = JsonList(tmp_path / "a.json")
    written.add(entries[:1])
    written.add([])
    written.add(entries[1:])
    written.close()
    assert (tmp_path / "a.json").read_text() == json.dumps(entries) + "\n"
    left = JsonList(tmp_path / "b.json")
    left.add(entries)
    left.discard()
    full = JsonList(tmp_path / "c.json")

    def no_space(data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(full._file, "write", no_space)
    try:
        full.add(entries)
    except CfgError as exc:
        assert "cannot write" in str(exc) and "c.json" in str(exc) and "no space" in str(exc)
    else:
        raise AssertionError("a full disk was not said")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_an_image_wider_than_jpeg_allows_is_drawn_scaled_down(tmp_path, capsys):
    # a 66000x2 PNG is an image (132k pixels); its drawn JPEG failed in the encoder ("Maximum
    # supported image dimension is 65500 pixels"), which stopped the run with "cannot write
    # ...: broken data stream" and no detections.json
    from PIL import Image

    cfg = tiny_cfg(tmp_path)
    wide = save(tmp_path / "imgs" / "wide.png", 2, 66000)
    save(tmp_path / "imgs" / "z.png", 20, 30)
    out = tmp_path / "o"
    assert run_cli(cfg, "--detect", wide.parent, "--out", out, "--thresh", "1",
                   "--no-progress") == 0, capsys.readouterr().err
    with Image.open(out / "wide.jpg") as im:
        assert im.size == (65500, 2)
    assert (out / "z.jpg").is_file() and (out / "detections.json").is_file()


def test_a_class_name_stdout_cannot_encode_is_escaped_not_a_traceback(tmp_path, monkeypatch):
    # a CJK names file with stdout in cp1252 (Windows, redirected) or PYTHONIOENCODING=ascii:
    # UnicodeEncodeError, a traceback after the first image
    import io
    import re
    import sys

    cfg = tiny_cfg(tmp_path)
    image = save(tmp_path / "猫.png", 20, 30)
    names = tmp_path / "cjk.names"
    names.write_text("".join(f"猫{i}\n" for i in range(7)), encoding="utf-8")
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii")
    monkeypatch.setattr(sys, "stdout", stdout)
    assert run_cli(cfg, "--detect", image, "--names", names, "--out", tmp_path / "o",
                   "--thresh", "0.3", "--no-progress") == 0
    stdout.flush()
    text = stdout.buffer.getvalue().decode("ascii")
    assert "\\u732b.png: " in text and re.search(r"^\\u732b\d: \d+%", text, re.M), text


def test_the_skipped_files_warning_escapes_a_name_that_does_not_print(tmp_path, capsys):
    # an ANSI escape in a skipped file's name reached the terminal (result lines escape it)
    from darkcfg.detect.run import image_paths

    save(tmp_path / "imgs" / "a.png", 4, 4)
    (tmp_path / "imgs" / "notes\x1b[2J.md").write_text("x")
    image_paths([str(tmp_path / "imgs")])
    err = capsys.readouterr().err
    assert "\x1b" not in err and "notes\\x1b[2J.md" in err


def test_a_damaged_exif_block_still_turns_the_image_it_does_not_crash(tmp_path):
    # a field whose tag says another type (a byte flipped: Make became PlanarConfiguration)
    # made ImageOps.exif_transpose's rewrite of the block raise struct.error: a traceback
    # from detect, predict and training for an image whose pixels read
    from PIL import Image

    from darkcfg.data.base import read_image
    from darkcfg.detect.decode import decoded

    im = Image.new("RGB", (30, 20), (200, 10, 10))
    exif = im.getexif()
    exif[0x0112] = 6  # stored sideways: turn 90 degrees
    exif[0x010F] = "maker"
    data = exif.tobytes()
    assert data.count(b"\x01\x0f\x00\x02") == 1  # Make, ASCII: the field to damage
    damaged = data.replace(b"\x01\x0f\x00\x02", b"\x01\x1c\x00\x02")
    for ext in ("webp", "jpg", "png"):
        path = tmp_path / f"x.{ext}"
        im.save(path, exif=damaged)
        with Image.open(path) as check:
            assert check.getexif().get(0x0112) == 6
        assert tuple(read_image(str(path), 3).shape) == (3, 30, 20)
        got = decoded(str(path), 3)
        assert (got.size if isinstance(got, Image.Image) else tuple(got.shape[:0:-1])) == \
            (20, 30)


def test_an_exif_block_that_does_not_read_leaves_the_pixels_as_stored(tmp_path, capsys):
    # Pillow's getexif raised "not a TIFF file" for a damaged block header, and detect left
    # the image out as one that does not decode (W901) although its pixels read; OpenCV's
    # reader ignores such a block
    from PIL import Image

    from darkcfg.data.base import read_image, upright_size
    from darkcfg.detect.decode import decoded

    im = Image.new("RGB", (30, 20), (10, 200, 10))
    exif = im.getexif()
    exif[0x0112] = 6
    data = exif.tobytes()
    assert data.count(b"MM\x00*") == 1
    path = tmp_path / "x.webp"
    im.save(path, exif=data.replace(b"MM\x00*", b"MM\x00\x16"))
    assert tuple(read_image(str(path), 3).shape) == (3, 20, 30)
    assert decoded(str(path), 3).size == (30, 20)
    with Image.open(path) as opened:
        assert upright_size(opened) == (30, 20)
    cfg = tiny_cfg(tmp_path)
    assert run_cli(cfg, "--detect", path, "--out", tmp_path / "o", "--no-progress") == 0
    assert "W901" not in capsys.readouterr().err and (tmp_path / "o" / "x.jpg").is_file()


def test_a_damaged_exif_tag_prints_no_pillow_warning_line(tmp_path, capsys):
    # Pillow skips a tag whose data lies past the block's end, and printed "TiffImagePlugin.py:
    # 946: UserWarning: Tag data larger than file. Skipping tag 274" with its source line
    import warnings

    from PIL import Image

    from darkcfg.cli import main

    im = Image.new("RGB", (30, 20), (10, 200, 10))
    exif = im.getexif()
    exif[0x0112] = 6
    data = exif.tobytes()
    entry = b"\x01\x12\x00\x03\x00\x00\x00\x01"  # orientation, SHORT, 1 value
    assert data.count(entry) == 1
    path = tmp_path / "x.jpg"
    im.save(path, exif=data.replace(entry, b"\x01\x12\x00\x03\x00\x00\x01\x00"))  # 256
    cfg = tiny_cfg(tmp_path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["detect", str(cfg), str(path), "--out", str(tmp_path / "o"),
                     "--no-progress"]) == 0
    assert not [str(w.message) for w in seen if "PIL" in w.filename]
    assert (tmp_path / "o" / "x.jpg").is_file()  # the pixels, as stored (the tag skipped)
    assert "W901" not in capsys.readouterr().err


def test_an_eps_file_named_as_an_image_never_reaches_ghostscript(tmp_path, capsys, monkeypatch):
    # Pillow reads a file by its content: an EPS named x.jpg went to Ghostscript, a PostScript
    # interpreter, wherever one is installed (hostile data runs code there)
    from PIL import EpsImagePlugin

    from darkcfg.data.base import read_image

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", "gs", raising=False)
    eps = tmp_path / "x.jpg"
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                    b"newpath 0 0 moveto 10 10 lineto stroke\nshowpage\n")
    cfg = tiny_cfg(tmp_path)
    assert run_cli(cfg, "--detect", eps, "--out", tmp_path / "o") == 2
    assert "cannot identify image file" in capsys.readouterr().err
    try:
        read_image(str(eps), 3)
    except Exception:  # noqa: BLE001 - a DataError naming the file
        pass
    assert ran == []


def test_predict_with_a_labels_file_shorter_than_classes_is_located_at_classes(
        tmp_path, capsys, monkeypatch, tiny_classifier):
    from darkcfg.cli import main

    monkeypatch.chdir(tmp_path)
    cfg = tiny_classifier.write(tmp_path / "tiny.cfg")
    save(tmp_path / "cat" / "a.png", 12, 12)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    (tmp_path / "train.txt").write_text("cat/a.png\n")
    (tmp_path / "c.data").write_text("train=train.txt\nclasses=4\nlabels=labels.txt\n")
    assert main(["predict", str(cfg), "cat/a.png", "--data", "c.data"]) == 2
    err = capsys.readouterr().err
    assert "c.data:2:1: error[E901]: 'c.data' says classes=4 but labels.txt lists 2" in err


def test_an_empty_out_is_the_default_folder_as_for_train(tmp_path, monkeypatch):
    # `--out "$DIR"` with DIR unset wrote the drawn images into the working folder
    monkeypatch.chdir(tmp_path)
    cfg = tiny_cfg(tmp_path)
    image = save(tmp_path / "imgs" / "a.png", 20, 30)
    assert run_cli(cfg, "--detect", image, "--out", "", "--no-progress") == 0
    assert (tmp_path / "runs" / "tiny" / "detect" / "a.jpg").is_file()
    assert not (tmp_path / "a.jpg").exists()


def test_a_folder_it_may_not_list_is_said_not_passed_over(tmp_path, capsys, monkeypatch):
    # os.walk drops a folder it may not list without a word: its images were silently not run
    import os

    from darkcfg.detect.run import image_paths

    save(tmp_path / "imgs" / "a.png", 4, 4)
    save(tmp_path / "imgs" / "locked" / "b.png", 4, 4)
    scandir = os.scandir

    def refusing(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    assert image_paths([str(tmp_path / "imgs")]) == ([tmp_path / "imgs" / "a.png"], True)
    err = capsys.readouterr().err
    assert "skipped 1 folder(s) that cannot be listed" in err and "locked: Permission" in err
