"""`darkcfg data check`: what it reports that training would say or reject."""

from __future__ import annotations

import json

from test_data_formats import DETECTOR_CFG, write_coco, write_darknet, write_voc, write_yolo

from darkcfg.cli import main as cli


def check(capsys, *args) -> tuple[int, str, str]:
    code = cli(["data", "check", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_check_counts_images_without_a_label_file_as_training_does(tmp_path, capsys):
    path = write_yolo(tmp_path / "y")
    (tmp_path / "y" / "labels" / "train" / "im1.txt").unlink()
    (tmp_path / "y" / "labels" / "val" / "im5.txt").unlink()
    code, out, err = check(capsys, path, "--plot", tmp_path / "c.png")
    assert code == 0  # an image without objects trains (Darknet's rule): a warning
    assert (f"{path}: warning[W904]: 1 of 4 train images have no label file (trained as images "
            "without objects)") in err
    assert "1 of 2 valid images have no label file (scored as images without objects)" in err
    image, label = tmp_path / "y/images/train/im1.png", tmp_path / "y/labels/train/im1.txt"
    assert f"help: e.g. '{image}' has no '{label}' (ultralytics' rule" in err
    assert "labels: 0 error(s), 2 warning(s)" in out


def test_check_refuses_a_set_without_any_label_file(tmp_path, capsys):
    """A misnamed labels folder: every image without objects, nothing to learn."""
    path = write_yolo(tmp_path / "y")
    (tmp_path / "y" / "labels").rename(tmp_path / "y" / "label")
    code, out, err = check(capsys, path, "--plot", tmp_path / "c.png")
    assert code == 2 and "Traceback" not in err
    assert (f"{path}: error[E901]: none of the 4 train images has a label file: nothing to "
            "learn") in err
    assert f"'{tmp_path / 'y/labels/train/im0.txt'}'" in err  # the file it looked for
    assert "labels: 1 error(s), 1 warning(s)" in out  # and the valid split's warning


def test_check_names_darknets_label_rule(tmp_path, capsys):
    path = write_darknet(tmp_path / "d")
    (tmp_path / "d" / "img" / "im0.txt").unlink()
    code, _, err = check(capsys, path, "--plot", tmp_path / "c.png")
    assert code == 0 and "1 of 4 train images have no label file" in err
    assert "replace_image_to_label" in err


def detector_cfg(path, classes: int):
    path.write_text(DETECTOR_CFG.replace("filters=16", f"filters={2 * (5 + classes)}")
                    .replace("classes=3", f"classes={classes}"))
    return path


def test_check_with_a_cfg_rejects_what_training_rejects(tmp_path, capsys):
    data = write_yolo(tmp_path / "y")
    cfg = detector_cfg(tmp_path / "two.cfg", 2)
    code, out, err = check(capsys, data, "--cfg", cfg, "--plot", tmp_path / "c.png")
    said = f"{data}: error[E901]: '{data}' has 3 classes but the network detects 2"
    assert code == 2 and said in err and "labels: 1 error(s)" in out
    assert cli([str(cfg), "--train", "--data", str(data), "--device", "cpu"]) == 2
    assert said in capsys.readouterr().err  # training's own words


def test_check_with_a_cfg_of_more_classes_than_the_data_is_clean(tmp_path, capsys):
    """An 80-class cfg trains on 3-class data (docs/datasets.md): no stricter than training."""
    data = write_yolo(tmp_path / "y")
    cfg = detector_cfg(tmp_path / "eighty.cfg", 80)
    code, out, err = check(capsys, data, "--cfg", cfg, "--plot", tmp_path / "c.png")
    assert code == 0 and "labels: 0 error(s), 0 warning(s)" in out and "error" not in err


def test_check_warns_where_an_annotation_states_another_image_size(tmp_path, capsys):
    """COCO images[].width/height and VOC <size> are what the boxes are relative to: one that
    is not the image's size scales every box of it, so the check (which opens every image
    anyway) says where."""
    train, _ = write_coco(tmp_path / "c")
    doc = json.loads(train.read_text())
    doc["images"][0].update(width=128, height=64)  # im0 is 64x32
    train.write_text(json.dumps(doc, indent=1))
    code, out, err = check(capsys, train, "--plot", tmp_path / "c.png")
    line, col = next((n, s.index('"width"') + 1) for n, s in
                     enumerate(train.read_text().splitlines(), 1) if '"width": 128' in s)
    assert code == 0 and "labels: 0 error(s), 1 warning(s)" in out
    assert (f"{train}:{line}:{col}: warning[W904]: the annotation says the image is 128x64 but "
            f"'{tmp_path / 'c/images/im0.png'}' is 64x32") in err
    assert "come out at 0.5x their size" in err

    voc = write_voc(tmp_path / "v")
    xml = voc / "Annotations" / "im1.xml"  # im1 is 32x64
    xml.write_text(xml.read_text().replace("<width>32</width>", "<width>40</width>"))
    code, out, err = check(capsys, voc, "--plot", tmp_path / "v.png")
    assert code == 0 and f"{xml}:3:3: warning[W904]: the annotation says the image is 40x64" in err
    assert "come out at" not in err  # not one scale: no factor to give


def test_a_plot_never_replaces_an_image_of_the_set(tmp_path, capsys):
    """`--plot` naming a PNG of the data set (the check opens it, anchors fit its labels) wrote
    the histograms over the picture; both commands refuse it now, the image untouched."""
    data = write_yolo(tmp_path / "y")
    image = tmp_path / "y" / "images" / "val" / "im5.png"
    before = image.read_bytes()
    cfg = detector_cfg(tmp_path / "d.cfg", 3)
    for argv in (["data", "check", data, "--plot", image],
                 ["anchors", cfg, "--data", data, "--plot", image]):
        assert cli([str(a) for a in argv]) == 2
        err = capsys.readouterr().err
        assert f"error[E100]: --plot '{image}' is the image '{image}' of the data set" in err
        assert image.read_bytes() == before


def test_a_bad_size_is_one_diagnostic_with_its_help_as_in_anchors(tmp_path, capsys):
    """`data check --size` and `anchors --size` read WxH with one helper: the same message and
    a help line (data check's had none, and read '0x10' after building the --cfg)."""
    path = write_yolo(tmp_path / "y")
    for size in ("0x10", "big", "16x"):
        code, _, err = check(capsys, path, "--size", size, "--plot", tmp_path / "c.png")
        assert code == 2
        assert err == (f"--size: error[E100]: --size {size}: not WxH (two positive integers)\n"
                       "help: e.g. --size 416x416\n")
    assert not (tmp_path / "c.png").exists()


def test_check_takes_a_shipped_cfg_by_name(tmp_path, capsys, monkeypatch):
    """`--cfg yolov4-tiny.cfg` away from a checkout: the package's copy (its 80 classes)."""
    data = write_yolo(tmp_path / "y")
    monkeypatch.chdir(tmp_path)
    code, out, err = check(capsys, data, "--cfg", "yolov4-tiny.cfg", "--plot", "c.png")
    assert code == 0 and "error" not in err
    assert "stride 32 (13x13 cells)" in out
