"""Data sources, [net] augmentations and the resumable sample order (darkcfg/data/__init__.py)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cfgparse import CfgError
from darkcfg.config import NetConfig
from darkcfg.data import (
    Augment,
    EmbeddedShapes,
    Samples,
    make_stream,
    open_data,
)
from darkcfg.train.tasks import ClassifyTask, RegressTask

IMAGES = ClassifyTask(3, (3, 12, 12))



def save_png(path: Path, colour: tuple[int, int, int], size=(20, 14)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# -- embedded -------------------------------------------------------------------------------------
def test_embedded_is_deterministic_balanced_and_sized_by_the_network():
    task = ClassifyTask(10, (3, 16, 24))
    a, b, c = (open_data(None, task, seed) for seed in (0, 0, 1))
    x0, y0 = a.train[7]
    assert x0.shape == (3, 16, 24) and x0.dtype == torch.uint8
    assert torch.equal(x0, b.train[7][0]) and y0 == b.train[7][1]  # pure in (seed, index)
    assert not torch.equal(x0, c.train[7][0])  # the seed matters
    labels = [a.train[i][1] for i in range(200)]
    assert sorted(set(labels)) == list(range(10)) and np.bincount(labels).min() == 20
    assert len(a.names) == 10 and len(set(a.names)) == 10
    assert a.val is not None and not torch.equal(a.val[7][0], x0)  # val is another draw
    # channels follow [net]
    grey = open_data(None, ClassifyTask(4, (1, 8, 8)), 0).train[0][0]
    assert grey.shape == (1, 8, 8)


def test_embedded_many_classes_are_distinct_factors():
    ds = EmbeddedShapes(8, 1000, 3, 16, 16, seed=0, split=0)
    assert len(set(ds.names)) == 1000  # shape x colour x quadrant x backdrop
    assert "disc" in ds.names[0] and ds.names[0] != ds.names[64]


def test_embedded_can_use_a_few_of_many_classes():
    splits = open_data(None, ClassifyTask(1000, (3, 8, 8)), 0, classes=5)
    assert len(splits.names) == 5 and {splits.train[i][1] for i in range(50)} == set(range(5))
    assert "5 of the network's 1000 classes" in splits.description
    with pytest.raises(CfgError, match="1000 outputs"):
        open_data(None, ClassifyTask(1000, (3, 8, 8)), 0, classes=1001)
    with pytest.raises(CfgError, match="embedded"):
        open_data("x.csv", ClassifyTask(1000, (3, 8, 8)), 0, classes=5)


def test_embedded_refuses_regression():
    with pytest.raises(CfgError, match="regresses"):
        open_data(None, RegressTask(1, (1,)), 0)


# -- files ----------------------------------------------------------------------------------------
def test_image_folder_with_train_and_val(tmp_path):
    for split, n in (("train", 3), ("val", 1)):
        for name, colour in (("cat", (200, 0, 0)), ("dog", (0, 200, 0))):
            for i in range(n):
                save_png(tmp_path / split / name / f"{i}.png", colour)
    splits = open_data(str(tmp_path), IMAGES, 0)
    assert splits.names == ["cat", "dog"]
    assert len(splits.train) == 6 and len(splits.val) == 2
    x, y = splits.train[4]
    assert x.shape == (3, 14, 20) and y == 1 and int(x[1].float().mean()) == 200


def test_image_folder_val_classes_train_lacks_are_named(tmp_path, capsys):
    """val/fox with no train/fox: its images were dropped from validation without a word."""
    for split, name in (("train", "cat"), ("train", "dog"), ("val", "cat"), ("val", "fox")):
        save_png(tmp_path / split / name / "a.png", (1, 2, 3))
    splits = open_data(str(tmp_path), IMAGES, 0)
    assert splits.names == ["cat", "dog"] and len(splits.val) == 1
    err = capsys.readouterr().err
    assert "warning:" in err and "1 class folder(s)" in err and "(fox)" in err


def test_image_folder_class_without_images_is_said(tmp_path, capsys):
    """An empty class folder (torchvision's ImageFolder refuses one) became a class the network
    never learns, without a word."""
    for name in ("cat", "dog"):
        save_png(tmp_path / "train" / name / "a.png", (1, 2, 3))
    (tmp_path / "train" / "emu").mkdir()
    splits = open_data(str(tmp_path), IMAGES, 0)
    assert splits.names == ["cat", "dog", "emu"] and len(splits.train) == 2  # places kept
    err = capsys.readouterr().err
    assert "warning: 1 class(es)" in err and "(emu)" in err and "never learns" in err
    (tmp_path / "train" / "emu" / "a.png").write_bytes((tmp_path / "train/cat/a.png").read_bytes())
    open_data(str(tmp_path), IMAGES, 0)
    assert "warning" not in capsys.readouterr().err


def test_image_folder_images_outside_class_folders_are_said(tmp_path, capsys):
    """A folder of images with no class folders was "no images in 'DIR'"; an image beside the
    class folders was left out without a word."""
    save_png(tmp_path / "a.png", (1, 2, 3))
    with pytest.raises(CfgError) as err:
        open_data(str(tmp_path), IMAGES, 0)
    assert "holds 1 image(s) but no class folder" in err.value.first.message
    assert "<class>" in err.value.first.hint
    save_png(tmp_path / "cat" / "b.png", (1, 2, 3))
    splits = open_data(str(tmp_path), IMAGES, 0)
    assert len(splits.train) == 1 and splits.val is None
    err = capsys.readouterr().err
    assert "warning: 1 image(s) lie in" in err and "(a.png)" in err


def test_image_folder_split_is_seeded(tmp_path):
    for i in range(20):
        save_png(tmp_path / ("a" if i % 2 else "b") / f"{i}.png", (i, i, i))
    one, two = open_data(str(tmp_path), IMAGES, 0), open_data(str(tmp_path), IMAGES, 0)
    assert len(one.train) == 18 and len(one.val) == 2
    assert one.val.items == two.val.items


def test_darknet_data_file_labels_by_substring(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "set"
    for name in ("n01_cat_1.png", "n02_dog_1.png", "n01_cat_2.png"):
        save_png(root / "img" / name, (10, 20, 30))
    (root / "labels.txt").write_text("cat\ndog\n")
    (root / "train.list").write_text("img/n01_cat_1.png\nimg/n02_dog_1.png\n")
    (root / "valid.list").write_text(f"{root}/img/n01_cat_2.png\n")
    (root / "names.txt").write_text("a cat\na dog\n")
    data = root / "my.data"
    data.write_text("classes= 2\ntrain = train.list\nvalid=valid.list\nlabels=labels.txt\n"
                    "names=names.txt\nbackup=backup/\n")
    splits = open_data(str(data), IMAGES, 0)
    assert [y for _, y in splits.train.items] == [0, 1]
    assert splits.names == ["a cat", "a dog"] and len(splits.val) == 1
    # backup= resolves as every .data path: as Darknet opens it (the current directory), else
    # next to the .data file where it exists there (darkcfg.data.datafile.resolve)
    assert splits.backup == "backup"
    (root / "backup").mkdir()
    assert open_data(str(data), IMAGES, 0).backup == str(root / "backup")

    (root / "train.list").write_text("img/n01_cat_1.png\nimg/catdog.png\n")
    with pytest.raises(CfgError, match="matches 2 labels"):
        open_data(str(data), IMAGES, 0)
    (root / "train.list").write_text("img/n01_cat_9.png\n")
    with pytest.raises(CfgError, match="does not exist"):
        open_data(str(data), IMAGES, 0)
    data.write_text("classes=3\ntrain=train.list\nlabels=labels.txt\n")
    with pytest.raises(CfgError, match="classes=3"):
        open_data(str(data), IMAGES, 0)
    # no classes= line: the message said "says classes=2", a line the file does not have
    (root / "labels.txt").write_text("cat\ndog\nbird\n")
    data.write_text("train=train.list\nlabels=labels.txt\n")
    with pytest.raises(CfgError) as err:
        open_data(str(data), IMAGES, 0)
    assert "has no classes= line (Darknet's default: 2)" in err.value.first.message
    assert "says" not in err.value.first.message and "classes=3" in err.value.first.hint


def test_darknet_labels_that_match_wrongly_are_located(tmp_path, monkeypatch):
    """A path matching two labels or none was an E901 at the .data file with no line: which of
    10,000 list lines, and why ('cat' inside 'wildcat', a label in a folder name, a label
    listed twice), was left to the user."""
    monkeypatch.chdir(tmp_path)
    for name in ("0_cat.png", "0_wildcat.png", "0_bird.png"):
        save_png(tmp_path / "data" / name, (1, 2, 3))
    data = tmp_path / "c.data"
    data.write_text("classes=2\ntrain=train.list\nlabels=labels.txt\n")

    def first(labels: str, listed: str):
        (tmp_path / "labels.txt").write_text(labels)
        (tmp_path / "train.list").write_text(listed)
        with pytest.raises(CfgError) as err:
            open_data(str(data), ClassifyTask(2, (3, 12, 12)), 0)
        return err.value.first

    d = first("cat\nwildcat\n", "data/0_cat.png\n  data/0_wildcat.png\n")
    assert (Path(d.path).name, d.line, d.column, d.span) == ("train.list", 2, 10, 7)
    assert "matches 2 labels ('cat', 'wildcat')" in d.message
    assert "'cat' is part of the label 'wildcat'" in d.hint
    d = first("cat\ndata\n", "data/0_cat.png\n")
    assert (d.line, d.column) == (1, 1) and "'data' occurs in the folders" in d.hint
    d = first("cat\ndog\n", "data/0_cat.png\ndata/0_bird.png\n")
    assert (d.line, d.column) == (2, 1) and "no label" in d.message
    d = first("cat\n\ncat\n", "data/0_cat.png\n")
    assert (Path(d.path).name, d.line) == ("labels.txt", 3) and "listed twice" in d.message
    d = first("cat\ndog\n", "data/0_cat.png\n\n data/9_dog.png\n")  # at its list line
    assert (Path(d.path).name, d.line, d.column) == ("train.list", 3, 2) and \
        "'data/9_dog.png' does not exist" in d.message
    d = first("cat\ndog\n", "\n \n")  # an empty list: at its line of the .data file
    assert (Path(d.path).name, d.line) == ("c.data", 2) and "is empty" in d.message


def test_darknet_classifier_names_keep_a_blank_lines_place(tmp_path, monkeypatch):
    """names= with a blank line: Darknet's get_labels keeps its place (as detection's names=
    does here); the classifier's reader dropped it, naming every later class by the next."""
    monkeypatch.chdir(tmp_path)
    for name in ("0_cat.png", "0_dog.png", "0_fox.png"):
        save_png(tmp_path / name, (1, 2, 3))
    (tmp_path / "labels.txt").write_text("cat\ndog\nfox\n")
    (tmp_path / "names.txt").write_text("a cat\n\na dog\na fox\n\n")
    (tmp_path / "train.list").write_text("0_cat.png\n0_dog.png\n0_fox.png\n")
    data = tmp_path / "c.data"
    data.write_text("classes=3\ntrain=train.list\nlabels=labels.txt\nnames=names.txt\n")
    assert open_data(str(data), IMAGES, 0).names == ["a cat", "1", "a dog"]


def test_logistic_head_on_image_data_says_what_trains(tmp_path, tiny_classifier):
    """Darknet's multi-label classifier ends in [logistic]: on an image set it was told "this
    network regresses ... pass --data X.csv", with no word of [logistic] or [softmax]."""
    from builders import build
    from darkcfg.train.tasks import task_for

    for name in ("cat", "dog"):
        save_png(tmp_path / "train" / name / "a.png", (1, 2, 3))
    for head, said in (("[logistic]\n", "[logistic] head"), ("[logistic]\n\n[cost]\n", "X.csv")):
        text = tiny_classifier.text(cost=False).replace("[softmax]\n", head)
        net = build(text)
        task = task_for(net, NetConfig.from_block(net.net_block))
        with pytest.raises(CfgError) as err:
            task.open_data(str(tmp_path), 0)
        assert said in err.value.first.hint and ("softmax" in err.value.first.hint) == \
            (said != "X.csv")


def test_regression_csv(tmp_path):
    task = RegressTask(1, (2,))
    path = tmp_path / "d.csv"
    path.write_text("a,b,target\n1,2,3\n4,5,9\n")
    splits = open_data(str(path), task, 0)
    x, y = splits.train[1]
    assert x.tolist() == [4.0, 5.0] and y.tolist() == [9.0]
    path.write_text("1,2\n")
    with pytest.raises(CfgError, match="2 columns"):
        open_data(str(path), task, 0)
    # NaN or inf trained into "the loss is nan ... lower learning_rate"; a row after a header was
    # numbered from the header (row 1 was line 2)
    for bad in ("nan", "inf", "-inf", "x", "1_000", "\u0661"):  # (float(): 1000, 1)
        path.write_text(f"a,b,target\n1,2,3\n4,{bad},9\n")
        with pytest.raises(CfgError) as err:
            open_data(str(path), task, 0)
        first = err.value.first
        assert f"'{bad}' is not a finite number" in first.message and first.line == 3, first
    # a U+2028 after a row: str.splitlines broke the line there, so the bad row after it was
    # called line 4; lines end at line breaks only (datafile.split_lines), and the character
    # is part of its cell (Darknet's atof reads 3 and stops)
    path.write_text("a,b,target\n1,2,3\u2028\n4,x,9\n", encoding="utf-8")
    with pytest.raises(CfgError) as err:
        open_data(str(path), task, 0)
    assert (err.value.first.line, err.value.first.message) == (
        2, "'3\u2028' is not a finite number"), err.value.first
    path.write_text("a,b,c\n")
    with pytest.raises(CfgError, match="no data rows"):
        open_data(str(path), task, 0)
    with pytest.raises(CfgError, match="flat inputs"):
        open_data(str(path), IMAGES, 0)


def test_class_csv_trains_a_classifier_of_numbers(tmp_path):
    # a [connected] + [softmax] network of flat inputs: the last column is the class; this was
    # refused with "image data needs ... or use --data X.csv" while given X.csv
    task = ClassifyTask(3, (2,))
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n0.5,2,0\n4,5,2\n")
    splits = open_data(str(path), task, 0)
    x, y = splits.train[1]
    assert x.tolist() == [4.0, 5.0] and y.item() == 2 and y.dtype == torch.int64
    assert len(splits.train) == 2 and splits.val is None and "3 classes" in splits.description
    for row, what in (("1,2,3", "class 3"), ("1,2,0.5", "class 0.5"), ("1,2,-1", "class -1"),
                      ("1,2", "2 columns")):
        path.write_text(f"a,b,c\n\n1,2,0\n{row}\n")
        with pytest.raises(CfgError) as err:
            open_data(str(path), task, 0)
        assert what in err.value.first.message and err.value.first.line == 4  # the file's line
        assert err.value.first.source == row


def write_idx(path: Path, array: np.ndarray) -> None:
    """The IDX format of MNIST: 0, 0, type 0x08 (uint8), ndim, big-endian sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    path.write_bytes(head + array.astype(np.uint8).tobytes())


def test_torchvision_dataset_from_a_local_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 2)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 255, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    splits = open_data(f"torchvision:MNIST:{tmp_path}", ClassifyTask(10, (3, 28, 28)), 0)
    x, y = splits.train[3]
    assert x.shape == (3, 28, 28) and x.dtype == torch.uint8 and y == 3
    assert len(splits.train) == 6 and len(splits.val) == 2 and splits.names[0].startswith("0")


@pytest.mark.parametrize("spec,match", [
    ("torchvision:MNIST:/no/such/root", "does not exist"),
    ("torchvision:MNSIT:/tmp", "MNIST"),
    ("torchvision:CIFAR10", "torchvision:NAME:ROOT"),
    ("/no/such/folder", "does not exist"),
])
def test_missing_data_is_a_clear_error(spec, match):
    with pytest.raises(CfgError) as err:
        open_data(spec, IMAGES, 0)
    assert match in str(err.value) + err.value.first.hint


def test_empty_and_unreadable_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CfgError, match="no images"):
        open_data(str(tmp_path / "empty"), IMAGES, 0)
    bad = tmp_path / "bad" / "cls" / "broken.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    with pytest.raises(CfgError, match="broken.png"):  # every header, located (E901)
        open_data(str(tmp_path / "bad"), IMAGES, 0)


def test_an_image_folder_follows_linked_folders_once(tmp_path):
    """A class folder holding a link to more of its images (`cat/more -> /data/cats`) and a
    link loop: the linked images count, once (Path.rglob skipped linked folders silently, as
    `detect` on a folder did not)."""
    outside = tmp_path / "more"
    outside.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (6, 5), (9, 9, 9)).save(outside / name)
    for label in ("cat", "dog", "owl"):
        (tmp_path / "set" / label).mkdir(parents=True)
        Image.new("RGB", (6, 5), (99, 9, 9)).save(tmp_path / "set" / label / "x.png")
    (tmp_path / "set" / "cat" / "more").symlink_to(outside)
    (tmp_path / "set" / "cat" / "loop").symlink_to(tmp_path / "set" / "cat")
    splits = open_data(str(tmp_path / "set"), IMAGES, 0)
    items = sorted(splits.train.items + (splits.val.items if splits.val else []))
    cat = tmp_path / "set" / "cat"
    assert [(Path(p), c) for p, c in items if c == 0] == [
        (cat / "more" / "a.png", 0), (cat / "more" / "b.png", 0), (cat / "x.png", 0)]


def test_hidden_files_and_folders_are_no_part_of_an_image_folder(tmp_path):
    """A set copied from a Mac (`._x.png` Finder metadata beside each image, `.DS_Store`) or
    opened in Jupyter (`.ipynb_checkpoints/`): the dot names were images that do not read (the
    run refused the set) and a class of their own; a shell glob and ultralytics pass them over."""
    for label in ("cat", "dog"):
        (tmp_path / "set" / label).mkdir(parents=True)
        Image.new("RGB", (6, 5), (99, 9, 9)).save(tmp_path / "set" / label / "x.png")
        (tmp_path / "set" / label / "._x.png").write_bytes(b"\x00\x05\x16\x07Mac OS X")
    (tmp_path / "set" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "set" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (6, 5)).save(tmp_path / "set" / ".ipynb_checkpoints" / "y.png")
    (tmp_path / "set" / "dog" / ".cache").mkdir()
    Image.new("RGB", (6, 5)).save(tmp_path / "set" / "dog" / ".cache" / "z.png")
    splits = open_data(str(tmp_path / "set"), IMAGES, 0)
    items = sorted(splits.train.items + (splits.val.items if splits.val else []))
    assert splits.names == ["cat", "dog"]
    assert [Path(p).relative_to(tmp_path / "set") for p, _ in items] == [
        Path("cat/x.png"), Path("dog/x.png")]
    from darkcfg.detect.run import image_paths  # detect on a folder reads it as training does

    assert image_paths([str(tmp_path / "set")]) == ([tmp_path / "set" / "cat" / "x.png",
                                                     tmp_path / "set" / "dog" / "x.png"], True)


def test_torchvision_dataset_without_files_is_a_clear_error(tmp_path):
    with pytest.raises(CfgError, match="cannot open torchvision MNIST"):
        open_data(f"torchvision:MNIST:{tmp_path}", ClassifyTask(10, (1, 28, 28)), 0)
    # torchvision's own advice, "You can use download=True", is no darkcfg option
    with pytest.raises(CfgError) as err:
        open_data(f"torchvision:CIFAR10:{tmp_path}", ClassifyTask(10, (3, 32, 32)), 0)
    assert "download=True" not in str(err.value) and "never downloads" in err.value.first.hint


# -- augmentations --------------------------------------------------------------------------------
def net_cfg(**keys) -> NetConfig:
    base = dict(width=12, height=12, channels=3, flip=False)
    return NetConfig(**{**base, **keys})


def gradient_image() -> torch.Tensor:
    x = torch.arange(20 * 30, dtype=torch.float32).reshape(20, 30) % 256
    return torch.stack([x, x.flip(1), 255 - x]).to(torch.uint8)


@pytest.mark.parametrize("pixels, grey", [
    ([np.nan, np.nan], [0, 0]),     # all NaN: numpy's raw "All-NaN slice" RuntimeWarning was said
    ([np.nan, 0.5], [0, 128]),      # 0..1 with a NaN: still scaled to 0..255
    ([np.nan, 200.0], [0, 200]),    # 0..255 with a NaN
])
def test_float_images_with_nan_pixels_read_without_a_python_warning(tmp_path, pixels, grey):
    import warnings

    from darkcfg.data.base import read_image

    path = tmp_path / "f.tif"
    Image.fromarray(np.array([pixels] * 2, np.float32), "F").save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image = read_image(str(path), 1)
    assert image[0, 0].tolist() == grey


def test_eval_view_resizes_the_shorter_side_and_centre_crops():
    out = Augment(net_cfg(), train=False)(gradient_image())
    assert out.shape == (3, 12, 12) and out.dtype == torch.uint8


@pytest.mark.parametrize("keys", [
    {"flip": True}, {"angle": 20.0}, {"saturation": 1.5}, {"exposure": 1.5}, {"hue": 0.2},
    {"aspect": 1.5, "min_crop": 12, "max_crop": 24},
])
def test_each_augmentation_is_random_but_seeded(keys):
    aug = Augment(net_cfg(**keys), train=True)
    assert aug.random
    img = gradient_image()
    outs = [aug(img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == (3, 12, 12) for o in outs)
    assert len({o.numpy().tobytes() for o in outs}) > 1  # the draws change the image
    again = aug(img, np.random.default_rng(3))
    assert torch.equal(again, outs[3])  # and the seed fixes it


def test_reversed_augmentation_bounds_draw_as_darknet_does():
    """Darknet's rand_uniform and rand_int swap reversed bounds: angle=-20 rotates as angle=20
    (it used to stop training with numpy's 'high - low < 0' traceback), and min_crop above
    max_crop draws sizes between the two (it used to take min_crop every time)."""
    img = gradient_image()
    negative = Augment(net_cfg(angle=-20.0, flip=False), train=True)
    positive = Augment(net_cfg(angle=20.0, flip=False), train=True)
    for s in range(4):
        assert torch.equal(negative(img, np.random.default_rng(s)),
                           positive(img, np.random.default_rng(s)))
    swapped = Augment(net_cfg(min_crop=24, max_crop=12, flip=False), train=True)
    ordered = Augment(net_cfg(min_crop=12, max_crop=24, flip=False), train=True)
    for s in range(4):
        assert torch.equal(swapped(img, np.random.default_rng(s)),
                           ordered(img, np.random.default_rng(s)))


def test_no_augmentation_keys_means_no_randomness():
    assert not Augment(net_cfg(), train=True).random
    assert not Augment(net_cfg(flip=True, angle=10.0), train=False).random


# -- order ----------------------------------------------------------------------------------------
def test_stream_resumes_mid_epoch_and_shards_ranks():
    ds = Samples(torch.utils.data.TensorDataset(torch.arange(20), torch.arange(20)), None, 0)
    stream = make_stream(ds, 4, 1, 0, seed=7, device=torch.device("cpu"), workers=0)
    assert stream.iterations_per_epoch == 5
    it = stream.batches(0)
    full = [next(it)[0].tolist() for _ in range(12)]
    assert sorted(sum(full[:5], [])) == list(range(20))  # an epoch sees every sample once
    assert full[:5] != full[5:10]  # and each epoch has its own order
    resumed = stream.batches(7)
    assert [next(resumed)[0].tolist() for _ in range(5)] == full[7:12]
    ranks = [make_stream(ds, 2, 2, r, 7, torch.device("cpu"), 0).batches(0) for r in (0, 1)]
    first = [next(r)[0].tolist() for r in ranks]
    assert not set(first[0]) & set(first[1])


def test_closing_the_batches_stops_the_loader_processes():
    import multiprocessing

    ds = Samples(torch.utils.data.TensorDataset(torch.arange(20), torch.arange(20)), None, 0)
    stream = make_stream(ds, 4, 1, 0, seed=7, device=torch.device("cpu"), workers=1)
    before = set(multiprocessing.active_children())  # other tests' processes, if any
    it = stream.batches(0)
    assert [next(it)[0].numel() for _ in range(7)] == [4] * 7  # across an epoch boundary
    assert set(multiprocessing.active_children()) - before  # persistent: the loader keeps them
    it.close()  # what darkcfg.train.loop.fit does when it returns
    assert not set(multiprocessing.active_children()) - before


def test_samples_seed_augmentations_per_epoch_and_index():
    base = open_data(None, ClassifyTask(4, (3, 12, 12)), 0).train
    aug = Augment(net_cfg(angle=30.0), train=True)
    samples = Samples(base, aug, seed=5, random=True)
    assert torch.equal(samples[(3, 1)][0], samples[(3, 1)][0])
    assert not torch.equal(samples[(3, 1)][0], samples[(3, 2)][0])


def test_classifier_colour_jitter_is_darknets_distort_image():
    """src/image.c random_distort_image: dhue = U(-hue, hue), then rand_scale of saturation and
    exposure, one float HSV pass (the detector's distort_image), rounded back to bytes."""
    from darkcfg.data.augment import distort_image
    from darkcfg.data.draws import rand_scale

    aug = Augment(net_cfg(hue=0.1, saturation=1.5, exposure=1.5), train=True)
    img = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8,
                        generator=torch.Generator().manual_seed(1))
    for seed in range(6):
        rng = np.random.default_rng(seed)
        dhue = float(rng.uniform(-0.1, 0.1))
        dsat, dexp = rand_scale(1.5, rng), rand_scale(1.5, rng)
        expected = distort_image(img.float() / 255, dhue, dsat, dexp).mul(255).round()
        got = aug(img, np.random.default_rng(seed))
        assert got.dtype == torch.uint8
        assert torch.equal(got, expected.to(torch.uint8))


@pytest.mark.parametrize("channels", [1, 4])
def test_colour_jitter_of_other_channel_counts_scales_the_value_only(channels):
    aug = Augment(net_cfg(hue=0.1, saturation=1.5, exposure=1.5), train=True)
    img = torch.full((channels, 12, 12), 100, dtype=torch.uint8)
    outs = {aug(img, np.random.default_rng(s)).numpy().tobytes() for s in range(6)}
    assert all(len(o) == channels * 144 for o in outs) and len(outs) > 1
    floats = img.float() / 255
    out = aug(floats, np.random.default_rng(0))
    assert out.shape == floats.shape and torch.equal(floats, img.float() / 255)  # not mutated


def test_native_distort_equals_the_torch_version(monkeypatch):
    """builders.native's distort (AVX2 lanes and the scalar tail) runs distort_image's float32
    steps on bytes: the same bytes (greys, channel ties, both hue directions, wraps, odd
    sizes), and distort_samples without the kernels gives them too."""
    from colour_trials import colour_trials

    from builders import native
    from darkcfg.data.augment import distort_image, distort_samples

    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")
    for t, img, (dhue, dsat, dexp) in colour_trials(0, 80, 40, primaries=True):
        want = distort_image(img.float() / 255, dhue, dsat, dexp).mul(255).round()
        got = native.distort_u8(img, dhue, dsat, dexp)
        assert torch.equal(got, want.to(torch.uint8)), t
        assert torch.equal(distort_samples(img, dhue, dsat, dexp), got)
        with monkeypatch.context() as m:
            m.setattr(native, "distort_u8", lambda *args: None)  # no kernels: torch's ops
            assert torch.equal(distort_samples(img, dhue, dsat, dexp), got)
