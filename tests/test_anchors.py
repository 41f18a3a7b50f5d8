"""`darkcfg anchors`: Darknet's calc_anchors k-means (1 - IoU), our seeded restarts, the cfg edit
that keeps every other byte, and the command's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cfgparse import edit, parse_text
from darkcfg.cli import main
from darkcfg.data.detection.anchors import (
    anchors_text,
    average_iou,
    corner_iou,
    darknet_kmeans,
    fit_anchors,
    split_masks,
)

ROOT = Path(__file__).resolve().parents[1]


def clustered(centres, per=300, spread=0.05, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.asarray(c) * np.exp(rng.normal(0, spread, (per, 2)))
                           for c in centres])


def test_known_clusters_are_recovered():
    centres = [(20, 30), (80, 60), (150, 300), (330, 200)]
    fit = fit_anchors(clustered(centres), 4, 416, seed=3)
    # sorted by area, each within 4% of its cluster's centre
    expected = np.array(sorted(centres, key=lambda c: c[0] * c[1]), float)
    assert np.all(np.abs(fit.anchors / expected - 1) < 0.04), fit.anchors
    assert fit.avg_iou > 0.85


def test_average_iou_is_the_hand_computation():
    boxes = np.array([[10, 10], [20, 40], [100, 50]], float)
    anchors = np.array([[10, 20], [100, 100]], float)
    # box 1 vs (10,20): 100 / (100 + 200 - 100) = 0.5; vs (100,100): 100 / 10000 = 0.01
    # box 2 vs (10,20): 200 / (800 + 200 - 200) = 0.25; vs (100,100): 800 / 10000 = 0.08
    # box 3 vs (10,20): 200 / 5000 = 0.04;  vs (100,100): 5000 / 10000 = 0.5
    assert corner_iou(boxes, anchors) == pytest.approx(
        np.array([[0.5, 0.01], [0.25, 0.08], [0.04, 0.5]]))
    assert average_iou(boxes, anchors) == pytest.approx((0.5 + 0.25 + 0.5) / 3)


def test_seeded_and_never_worse_than_darknets_algorithm():
    rng = np.random.default_rng(7)
    boxes = np.exp(rng.normal([3.5, 3.7], [0.8, 0.7], (3000, 2)))  # one broad log-normal blob
    a = fit_anchors(boxes, 9, 416, seed=11)
    b = fit_anchors(boxes, 9, 416, seed=11)
    assert np.array_equal(a.anchors, b.anchors) and a.avg_iou == b.avg_iou
    assert a.avg_iou >= a.darknet_avg_iou
    # against Darknet's algorithm with other random draws: ours is at least their median
    theirs = [average_iou(boxes, np.round(darknet_kmeans(boxes, 9, s))) for s in range(12)]
    assert a.avg_iou >= float(np.median(theirs))
    assert len(a.anchors) == 9
    areas = a.anchors[:, 0] * a.anchors[:, 1]
    assert np.all(np.diff(areas) >= 0)  # smallest area first, as calc_anchors prints them


def test_printed_like_darknet():
    anchors = np.array([[10, 14], [23, 27], [344, 319]], float)
    assert anchors_text(anchors, 416) == "anchors =  10, 14,  23, 27, 344,319"
    assert anchors_text(np.array([[1.08, 1.19]]), 13) == "anchors = 1.0800,1.1900"


def test_masks_split_by_size_largest_anchors_to_the_coarsest_head():
    assert split_masks(9, [32, 16, 8]) == [[6, 7, 8], [3, 4, 5], [0, 1, 2]]
    assert split_masks(6, [32, 16]) == [[3, 4, 5], [0, 1, 2]]
    assert split_masks(7, [32, 16]) == [[4, 5, 6], [0, 1, 2, 3]]  # the finer head gets more
    assert split_masks(4, [8, 32]) == [[0, 1], [2, 3]]


def test_edit_keeps_every_other_byte():
    text = ("# a comment\r\n[net]\r\nwidth=416\r\n\r\n[yolo]\r\n; why\r\nmask = 3,4,5\r\n"
            "anchors = 10,14,  23,27 # from coco\r\nclasses=80\r\n")
    blocks = list(parse_text(text))
    out = edit(text, [(blocks[1], "anchors", "1,2, 3,4"), (blocks[1], "num", "2")])
    assert out == text.replace("10,14,  23,27", "1,2, 3,4").replace(
        "classes=80\r\n", "classes=80\r\nnum=2\r\n")
    assert list(parse_text(out))[1].values()["anchors"] == [1.0, 2.0, 3.0, 4.0]


# -- the command ----------------------------------------------------------------------------------
def labelled_set(tmp_path: Path, boxes: np.ndarray) -> Path:
    """A Darknet .data set of 8 tiny images sharing `boxes` (relative w,h) between them."""
    from PIL import Image

    images = labels = tmp_path / "set"  # AlexeyAB's Darknet: labels beside the images
    images.mkdir()
    lines = []
    for i, part in enumerate(np.array_split(boxes, 8)):
        Image.new("RGB", (32, 32), (i * 20, 40, 60)).save(images / f"{i}.png")
        (labels / f"{i}.txt").write_text("".join(
            f"{j % 2} 0.5 0.5 {w:.6f} {h:.6f}\n" for j, (w, h) in enumerate(part)))
        lines.append(str(images / f"{i}.png"))
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "names.txt").write_text("a\nb\n")
    data = tmp_path / "set.data"
    data.write_text(f"classes=2\ntrain={tmp_path / 'train.txt'}\nnames={tmp_path / 'names.txt'}\n")
    return data


def tiny_cfg(tmp_path: Path) -> Path:
    text = (ROOT / "cfg" / "yolov3-tiny.cfg").read_text().replace("classes=80", "classes=2") \
        .replace("filters=255", "filters=21")
    path = tmp_path / "tiny.cfg"
    path.write_text(text)
    return path


def changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_command_prints_writes_and_keeps_the_cfg(tmp_path, capsys):
    from darkcfg.lint.stages import check_file

    centres = np.array([(20, 30), (60, 40), (90, 120), (160, 100), (200, 260), (330, 300)])
    data = labelled_set(tmp_path, clustered(centres, per=40, spread=0.03) / 416)
    cfg = tiny_cfg(tmp_path)
    before = cfg.read_text()
    plot = tmp_path / "plot.png"
    assert main(["anchors", str(cfg), "--data", str(data), "--plot", str(plot), "--write"]) == 0
    out = capsys.readouterr().out
    line = next(li for li in out.splitlines() if li.startswith("anchors = "))
    printed = np.array([float(v) for v in line[len("anchors = "):].split(",")]).reshape(-1, 2)
    assert np.all(np.abs(printed / centres - 1) < 0.06), printed
    assert "avg IoU = " in out and "current" in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    after = cfg.read_text()
    changed = changed_lines(before, after)
    assert len(changed) == 2  # the anchors line of each head, nothing else
    assert all(old.startswith("anchors=") and new.startswith("anchors=") for old, new in changed)
    assert [d for d in check_file(cfg) if d.severity == "error"] == []

    # --num 9: anchors, num and mask of both heads, and the filters before each, change
    before = after
    assert main(["anchors", str(cfg), "--data", str(data), "--num", "9", "--plot", str(plot),
                 "--write"]) == 0
    after = cfg.read_text()
    changed = changed_lines(before, after)
    keys = sorted(new.split("=")[0] for _, new in changed)
    assert keys == ["anchors"] * 2 + ["filters"] * 2 + ["mask"] * 2 + ["num"] * 2
    # 9 = 4 (coarse head, the largest) + 5 (fine head): filters (2 + 5) x 4 and (2 + 5) x 5
    assert ("mask=3,4,5", "mask=5,6,7,8") in changed
    assert ("mask=0,1,2", "mask=0,1,2,3,4") in changed
    assert ("filters=21", "filters=28") in changed and ("filters=21", "filters=35") in changed
    assert [d for d in check_file(cfg) if d.severity == "error"] == []


def test_a_head_fed_through_a_route_is_a_located_warning(tmp_path, capsys):
    """--num that changes a head's input count where no [convolutional] right before it sets
    that count: a located W304 at the head's mask, not a bare "warning:" line."""
    data = labelled_set(tmp_path, clustered(np.array([(40, 40), (200, 160)]), per=30,
                                            spread=0.03) / 416)
    cfg = tiny_cfg(tmp_path)
    text = cfg.read_text()
    cfg.write_text(text.replace("\n[yolo]\n", "\n[route]\nlayers=-1\n\n[yolo]\n", 1))
    main(["anchors", str(cfg), "--data", str(data), "--num", "9", "--write"])
    err = capsys.readouterr().err
    line = next(i for i, li in enumerate(cfg.read_text().splitlines(), 1)
                if li.startswith("mask="))
    assert f"{cfg}:{line}:" in err and "warning[W304]: [yolo] now needs 28 input channels" in err
    assert "help: set filters=28 in the layer that feeds it" in err


def test_command_errors(tmp_path, capsys):
    data = labelled_set(tmp_path, np.full((8, 2), 0.1))
    cfg = tiny_cfg(tmp_path)
    assert main(["anchors", str(ROOT / "cfg" / "vgg11.cfg"), "--data", str(data)]) == 2
    assert "error[E300]" in capsys.readouterr().err
    before = cfg.read_bytes()
    assert main(["anchors", str(cfg), "--data", str(data), "--num", "9", "--write",
                 "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "error[E901]" in err and "8 labelled box(es) cannot make 9 anchors" in err
    assert cfg.read_bytes() == before
    assert main(["anchors", str(cfg), "--size", "big"]) == 2
    assert "--size big" in capsys.readouterr().err
    # fewer anchors than [yolo] heads to --write (it was E105 'empty value for mask' at a mask
    # the user never emptied), and no anchor at all
    for num, why in (("1", "2 heads with masks need at least 2 anchors"),
                     ("0", "at least one anchor")):
        assert main(["anchors", str(cfg), "--data", str(data), "--num", num, "--write",
                     "--plot", str(tmp_path / "p.png")]) == 2
        assert f"--num: error[E100]: --num {num}: {why}" in capsys.readouterr().err
    assert cfg.read_bytes() == before


def test_restarts_add_starts_and_zero_is_darknets_own(tmp_path, capsys):
    """--restarts R: R k-means++ starts besides Darknet's; 0 prints exactly Darknet's anchors."""
    rng = np.random.default_rng(5)
    boxes = np.clip(np.exp(rng.normal(np.log(60), 0.8, (400, 2))), 4, 400)  # starts differ
    only = fit_anchors(boxes, 6, 416, seed=2, restarts=0)
    assert only.starts == 1
    assert np.array_equal(only.anchors, only.darknet_anchors)
    many = fit_anchors(boxes, 6, 416, seed=2, restarts=20)
    assert many.starts == 21 and many.avg_iou >= only.avg_iou
    assert np.array_equal(many.darknet_anchors, only.darknet_anchors)  # the same seeded start

    data = labelled_set(tmp_path, boxes[:120] / 416)
    cfg = tiny_cfg(tmp_path)
    plot = str(tmp_path / "p.png")
    assert main(["anchors", str(cfg), "--data", str(data), "--restarts", "0", "--plot", plot]) == 0
    assert "1 starts from seed 0" in capsys.readouterr().err
    assert main(["anchors", str(cfg), "--data", str(data), "--restarts", "-1", "--plot", plot]) == 2
    err = capsys.readouterr().err
    assert "error[E100]" in err and "--restarts -1" in err and "Traceback" not in err
    # refused before the data is read: a data set that does not exist is not reached
    assert main(["anchors", str(cfg), "--data", str(tmp_path / "none.data"), "--restarts",
                 "-1"]) == 2
    assert "--restarts -1" in capsys.readouterr().err


def test_write_through_a_link_edits_the_cfg_it_names(tmp_path, capsys):
    """--write on a symlinked cfg edits the file behind the link (an atomic rename onto the
    link would replace the link and leave that cfg unchanged); the plot may not be the cfg."""
    data = labelled_set(tmp_path, clustered(np.array([(40, 40), (200, 160)]), per=30,
                                            spread=0.03) / 416)
    real = tiny_cfg(tmp_path)
    link = tmp_path / "link.cfg"
    link.symlink_to(real)
    before = real.read_text()
    assert main(["anchors", str(link), "--data", str(data), "--plot", str(tmp_path / "p.png"),
                 "--write"]) == 0
    assert link.is_symlink() and real.read_text() != before
    assert main(["anchors", str(link), "--data", str(data), "--plot", str(real)]) == 2
    assert "error[E100]: --plot" in capsys.readouterr().err


def test_unwritable_outputs_are_refused_before_the_data_is_read(tmp_path, capsys, monkeypatch):
    """A --plot under a file, or --write on a cfg in a folder that cannot be written, is E901
    before the data is read and the anchors fitted (they were found after the fit)."""
    from darkcfg.data.detection import anchors as fit

    data = labelled_set(tmp_path, np.full((8, 2), 0.1))
    cfg = tiny_cfg(tmp_path)
    monkeypatch.setattr(fit, "data_boxes", lambda *a: pytest.fail("read the data first"))
    (tmp_path / "afile").write_text("")
    assert main(["anchors", str(cfg), "--data", str(data),
                 "--plot", str(tmp_path / "afile" / "p.png")]) == 2
    assert "error[E901]: cannot write --plot" in capsys.readouterr().err
    (tmp_path / "plots").mkdir()
    real_access = __import__("os").access
    monkeypatch.setattr("os.access", lambda path, mode: Path(path) != tmp_path and
                        real_access(path, mode))  # the cfg's folder is read-only
    assert main(["anchors", str(cfg), "--data", str(data), "--write",
                 "--plot", str(tmp_path / "plots" / "p.png")]) == 2
    err = capsys.readouterr().err
    assert "error[E901]: cannot write the cfg (--write)" in err and "permission denied" in err


def test_write_refuses_a_read_only_cfg(tmp_path, capsys, monkeypatch):
    """A read-only cfg (chmod 444) was rewritten all the same: the new file is renamed over the
    name, which only the folder's permission governs (and root's os.access says yes to
    everything). Now E901 with a help line, before the data is read; the file is untouched."""
    import os

    from darkcfg.data.detection import anchors as fit

    data = labelled_set(tmp_path, np.full((8, 2), 0.1))
    cfg = tiny_cfg(tmp_path)
    before = cfg.read_bytes()
    os.chmod(cfg, 0o444)
    monkeypatch.setattr(fit, "data_boxes", lambda *a: pytest.fail("read the data first"))
    assert main(["anchors", str(cfg), "--data", str(data), "--write",
                 "--plot", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}: error[E901]: cannot write the cfg (--write) '{cfg}': the file is " \
        "read-only" in err
    assert f"help: make it writable (chmod u+w '{cfg}')" in err and "Traceback" not in err
    assert cfg.read_bytes() == before and cfg.stat().st_mode & 0o777 == 0o444
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def write_twice_at_once(tmp_path, monkeypatch):
    """Two --write edits of one cfg at once (threads calling write_anchors: what two processes
    do, since the lock is per open file): the second starts while the first checks its new
    text. Returns (cfg, the two anchors values, whether the second finished before the first
    wrote)."""
    import threading

    from darkcfg.cli import anchors as cli
    from darkcfg.data.detection.anchors import cfg_anchors_value
    from darkcfg.model import build_network

    cfg = tiny_cfg(tmp_path)
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0, device="meta")
    heads = cli.anchored_heads(net)
    first = np.array([[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]], float)
    second = first * 1.5
    lint = cli.lint_text
    other = threading.Thread(target=cli.write_anchors, args=(str(cfg), net, heads, second, 416))
    state = {}

    def first_lint(text, path):
        if not state:
            state["started"] = True
            other.start()
            other.join(timeout=5)  # long enough for a whole unhindered edit
            state["second done first"] = not other.is_alive()
        return lint(text, path)

    monkeypatch.setattr(cli, "lint_text", first_lint)
    cli.write_anchors(str(cfg), net, heads, first, 416)
    other.join()
    return cfg, cfg_anchors_value(first, 416), cfg_anchors_value(second, 416), \
        state["second done first"]


def test_two_writes_at_once_lose_no_edit(tmp_path, monkeypatch, capsys):
    """Each --write read the cfg, edited it and renamed the result over it: the second of two
    runs at once read the cfg before the first wrote, so the first one's file replaced the
    second's edit (the last rename won, with the other's edit lost). The edit now holds a lock
    on the cfg from the read to the rename: the second waits, then edits the first's result."""
    from darkcfg.lint.stages import check_file

    cfg, first, second, second_done_first = write_twice_at_once(tmp_path, monkeypatch)
    assert not second_done_first  # it waited for the first
    text = cfg.read_text()
    assert text.count(f"anchors={second}\n") == 2 and f"anchors={first}" not in text
    assert [d for d in check_file(cfg) if d.severity == "error"] == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert capsys.readouterr().err.count("wrote ") == 2


@pytest.mark.skipif(not hasattr(__import__("os"), "getuid") or __import__("os").getuid() != 0,
                    reason="giving a file to another user needs root")
def test_write_keeps_the_cfgs_mode_and_owner(tmp_path, capsys):
    """The rewritten cfg keeps its permissions and (run as root, e.g. in a container) its
    owner: it became root's."""
    import os

    data = labelled_set(tmp_path, clustered(np.array([(40, 40), (200, 160)]), per=30,
                                            spread=0.03) / 416)
    cfg = tiny_cfg(tmp_path)
    os.chmod(cfg, 0o640)
    os.chown(cfg, 4321, 4322)
    before = cfg.read_text()
    assert main(["anchors", str(cfg), "--data", str(data), "--write",
                 "--plot", str(tmp_path / "p.png")]) == 0
    st = cfg.stat()
    assert cfg.read_text() != before
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 4321, 4322)


@pytest.mark.parametrize("classes", ["0", "-1", "3"])
def test_classes_outside_the_networks_is_a_usage_error(tmp_path, capsys, classes):
    """`anchors CFG --classes 0` (or more than the network detects) was an E901 from the
    embedded data, as if a file were bad; it is a usage error (E100 at --classes)."""
    cfg = tiny_cfg(tmp_path)  # classes=2
    assert main(["anchors", str(cfg), "--classes", classes]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"--classes: error[E100]: --classes {classes}: the network detects 2 "
                          "classes"), err
    assert "help: use --classes 1..2 (or leave it out)" in err


@pytest.mark.parametrize("restarts", ["1001", str(2**64 + 1)])
def test_a_huge_restarts_is_refused_before_any_work(tmp_path, capsys, restarts):
    # --restarts 18446744073709551617 ran k-means starts for ever (deaf to a SIGTERM)
    cfg = tiny_cfg(tmp_path)
    assert main(["anchors", str(cfg), "--restarts", restarts]) == 2
    err = capsys.readouterr().err
    assert f"--restarts: error[E100]: --restarts {restarts}: at most 1000" in err and "help:" in err
