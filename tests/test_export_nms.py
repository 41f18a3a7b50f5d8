"""`--export m.onnx --decode --nms` (darkcfg/export/nms.py): the image -> boxes ONNX graph, run in
onnxruntime, against `--detect`'s own detections (darkcfg's decode + NMS) on the oracle
detectors with Darknet's weights and input.

Where Darknet's greedy NMS and ONNX's differ, and how this test handles it:
- nms_kind=greedynms/diounms (yolov4, yolov4-tiny): Darknet suppresses on DIoU, for which ONNX
  has no operator; the graph builds it from plain ones (an ONNX Loop over the (image, class)
  groups, Cluster-NMS inside each) and is compared with --detect's own greedynms, exactly like
  the IoU nets. The test also checks that the DIoU rule matters there (IoU NMS keeps another
  set), so the comparison would catch a graph that fell back to IoU.
- Equal scores: Darknet's qsort order among ties is unspecified, onnxruntime's is lowest index
  first. A kept set may differ where a pair has an exactly tied, overlapping rival; the oracle
  nets have none.
- Rounding: the two runtimes round differently (--detect's 3x3 stride-1 convolutions run as
  Winograd F(4x4, 3x3), builders.winograd; onnxruntime's directly). A score within 1e-4 of
  thresh may land on either side (on yolov4-tiny at 0.25 three of ~10k do, scores
  0.2500003-0.2500015), and a pair within rounding of the NMS threshold may flip a suppression,
  with what follows from it in that class: at most 1 in 1000 kept pairs may differ so (5 of
  ~10k on yolov4-tiny at 0.25, in one class of ~100 overlapping boxes).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from darkcfg.export.nms import (  # noqa: E402
    check_decodable,
    detect_reference,
    export_image_to_boxes,
    match,
    run_image_to_boxes,
)
from darkcfg.export.onnx import onnx_session  # noqa: E402
from darkcfg.model import build_network, load_any_weights  # noqa: E402
from tests.oracle import ORACLE, oracle_input, weights_file  # noqa: E402

FAST = ["yolov3-tiny", "yolov4-tiny", "yolov2-tiny"]
SLOW = ["yolov3", "yolov2"]


def oracle_detector(name: str):
    if not ORACLE.is_dir():
        pytest.skip("../shared/darknet/oracle is not available")
    net, _, _ = build_network(str(ORACLE / "cfg" / f"{name}.cfg"), [], "alexeyab", 0)
    load_any_weights(net, str(weights_file(name, calibrated=True)))
    return net.eval()


def check_against_detect(name: str, tmp_path, thresh: float, mirrored: bool = True):
    net = oracle_detector(name)
    path = tmp_path / f"{name}.onnx"
    report = export_image_to_boxes(net, path, thresh=thresh, nms=0.45, dynamic_batch=True)
    assert report.outputs == ["boxes", "scores", "classes", "batch_index"]
    x = torch.from_numpy(oracle_input(name))
    # two images: the oracle input and its mirror, to check the batch index too
    x = torch.cat([x, x.flip(-1)]) if mirrored else x
    ours = run_image_to_boxes(onnx_session(path), x)
    kind, _ = check_decodable(net)  # what --detect runs: greedynms for yolov4-tiny
    theirs = detect_reference(net, x, thresh, 0.45, kind=kind)
    total = 0
    for a, b in zip(ours, theirs, strict=True):
        only_ours, only_theirs, worst = match(a, b, (x.shape[-1], x.shape[-2]))
        # a score within 1e-4 of thresh may fall on either side; beyond those, a pair within
        # rounding of the NMS threshold may flip one suppression, and the boxes that one
        # suppresses or spares after it (yolov3 at 0.005 keeps ~17k (box, class) pairs per
        # image through 106 float32 layers; yolov4-tiny's calibrated weights give one class
        # ~100 overlapping boxes at 0.25, pairs at DIoU 0.4495): at most 1 in 1000
        flipped = [found[k] for found, which in ((a, only_ours), (b, only_theirs))
                   for k in which if abs(found[k][1] - thresh) > 1e-4]
        print(f"{name}: {len(a)} kept by the graph, {len(b)} by --detect, {len(flipped)} differ")
        assert len(flipped) <= max(len(b) // 1000, 1), flipped
        a = [d for k, d in enumerate(a) if k not in only_ours]
        b = [d for k, d in enumerate(b) if k not in only_theirs]
        # the tiny nets stay within 1e-4 of the input size; yolov3's 106 float32 layers run
        # differently in onnxruntime and PyTorch (measured 1.09e-4 there with onnxruntime 1.2x,
        # 3.25e-4 with 1.32, the same code: its kernels' summation order): 5e-4 for the deep
        # ones, a fifth of a pixel at 608
        assert worst <= (1e-4 if name in FAST else 5e-4), worst
        # scores: 1e-5; yolov3 measured 1.18e-5 on 2 of 73k pairs (its float32 depth again)
        assert sorted(s for _, s, _ in a) == pytest.approx(sorted(s for _, s, _ in b),
                                                           abs=1e-5 if name in FAST else 3e-5)
        total += len(a)
    return net, x, theirs, total


@pytest.mark.parametrize("name", FAST)
def test_nms_graph_equals_detect(name, tmp_path):
    # at 0.25 the oracle nets keep few boxes; 0.005 (what `detector map` uses) keeps hundreds,
    # where NMS decides most
    for thresh in (0.25, 0.005):
        net, x, _, total = check_against_detect(name, tmp_path, thresh)
        if thresh == 0.005:
            assert total > 20  # the comparison has something to compare


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_nms_graph_equals_detect_large(name, tmp_path):
    # one image: the batch index is the small nets' check (yolov3 keeps ~17k pairs an image:
    # the mirror took half of the suite's slowest test, 64 s)
    check_against_detect(name, tmp_path, 0.005, mirrored=False)


def test_greedynms_graph_is_not_iou_nms(tmp_path):
    """yolov4-tiny runs greedynms: the graph equals --detect's DIoU rule (checked above), and
    on these inputs that rule keeps a different set from IoU NMS, in both directions (DIoU <=
    IoU suppresses less per pair, but a box DIoU keeps can then suppress one IoU kept)."""
    net, x, diou_kept, _ = check_against_detect("yolov4-tiny", tmp_path, 0.005)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "yolov4-tiny.onnx")).metadata_props}
    assert meta["nms_rule"].startswith("DIoU, beta 0.6 (greedynms")
    iou_kept = detect_reference(net, x, 0.005, 0.45, kind="default")
    for iou, diou in zip(iou_kept, diou_kept, strict=True):
        only_iou, only_diou, _ = match(iou, diou, (x.shape[-1], x.shape[-2]))
        print(f"yolov4-tiny at 0.005: IoU NMS keeps {len(iou)}, greedynms {len(diou)}; "
              f"{len(only_iou)} only under IoU, {len(only_diou)} only under greedynms")
        assert only_iou and only_diou


DIOUNMS_CFG = """[net]
width=64
height=64
channels=3

[convolutional]
filters=14
size=1
stride=8
pad=0
activation=linear

[yolo]
mask=0,1
anchors=10,14, 23,27
classes=2
num=2
nms_kind=diounms
beta_nms={beta}
"""


@pytest.mark.parametrize("beta", [0.3, 1.0])
def test_diounms_beta_and_an_empty_result(tmp_path, beta):
    """diounms with its own beta_nms, on an input with many overlapping boxes (bias raised so
    every cell passes), and at a threshold no box passes (the graph returns nothing)."""
    from darkcfg.export.nms import run_image_to_boxes

    cfg = tmp_path / "d.cfg"
    cfg.write_text(DIOUNMS_CFG.format(beta=beta))
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.5)
    net.eval()
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    path = tmp_path / "d.onnx"
    export_image_to_boxes(net, path, thresh=0.05, nms=0.3, dynamic_batch=True)
    ours = run_image_to_boxes(onnx_session(path), x)
    theirs = detect_reference(net, x, 0.05, 0.3, kind="diounms")
    assert sum(map(len, theirs)) > 20
    for a, b in zip(ours, theirs, strict=True):
        only_ours, only_theirs, worst = match(a, b, (64, 64))
        assert not only_ours and not only_theirs and worst <= 1e-5
    export_image_to_boxes(net, path, thresh=0.999, nms=0.3, dynamic_batch=True)
    assert run_image_to_boxes(onnx_session(path), x) == [[], [], []]


def test_cli_flag_form(tmp_path):
    from darkcfg.cli.flags import main

    net = oracle_detector("yolov3-tiny")
    del net
    out = tmp_path / "m.onnx"
    rc = main([str(ORACLE / "cfg" / "yolov3-tiny.cfg"),
               "--weights", str(weights_file("yolov3-tiny", calibrated=True)),
               "--export", str(out), "--decode", "--nms", "--thresh", "0.3"])
    assert rc == 0 and out.exists()
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["thresh"] == "0.3" and meta["nms"] == "0.45"
    session = onnx_session(out)
    boxes, scores, classes, batch = session.run(None, {"images": np.asarray(
        oracle_input("yolov3-tiny"))})
    assert boxes.shape[1] == 4 and (scores > 0.3).all() and (batch == 0).all()


def test_nms_needs_decode(tmp_path, capsys):
    from darkcfg.cli.flags import main

    rc = main([str(ORACLE / "cfg" / "yolov3-tiny.cfg"), "--export", str(tmp_path / "m.onnx"),
               "--nms"])
    assert rc == 2
    assert "needs --decode" in capsys.readouterr().err


@pytest.mark.parametrize("cfg", ["yolov3-tiny", "yolov4-tiny"])
def test_untrained_net_exports(tmp_path, cfg):
    """An untrained net (to try a deployment pipeline before training) has thousands of boxes
    with almost equal scores: onnxruntime's and PyTorch's last-bit differences reorder them,
    so a check against --detect's own forward failed (E904) for every untrained detector. The
    export's check compares the decoding within tolerances and the NMS on the same floats."""
    net, _, _ = build_network(f"cfg/{cfg}.cfg", ["width=160", "height=160"], "alexeyab", 0)
    report = export_image_to_boxes(net.eval(), tmp_path / "m.onnx", thresh=0.25, nms=0.45)
    assert (tmp_path / "m.onnx").exists() and report.max_rel_error <= 1e-3
    x = torch.rand(1, 3, 160, 160, generator=torch.Generator().manual_seed(5))
    kept = run_image_to_boxes(onnx_session(tmp_path / "m.onnx"), x)[0]
    assert len(kept) > 100  # the untrained net's flood of boxes went through the graph's NMS


def test_a_full_disk_during_an_nms_export_is_a_located_write_error(tmp_path, monkeypatch,
                                                                   capsys):
    """The first save of the NMS graph was outside write_failures: a full disk came out as
    `<file>: error[E901]: No space left on device`, not as the other exports' message."""
    import errno

    from darkcfg.cli import main as darkcfg_main

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", full)
    out = tmp_path / "out"
    out.mkdir()
    rc = darkcfg_main(["export", "cfg/yolov3-tiny.cfg", "--set", "width=64", "--set",
                       "height=64", "--out", str(out / "m.onnx"), "--decode", "--nms"])
    err = capsys.readouterr().err
    assert rc == 2 and f"error[E901]: cannot write '{out / 'm.onnx'}': no space left on the " \
        "device; nothing was written under that name" in err, err
    assert "Traceback" not in err and list(out.iterdir()) == []


def test_opset_and_dynamic_batch_are_honoured_with_nms(tmp_path):
    """--opset was ignored with --decode --nms (opset 20 written), and --dynamic-batch named the
    batch dimension after the exporter's symbol (`s6`), not `batch` as the plain export."""
    import onnx

    net, _, _ = build_network("cfg/yolov3-tiny.cfg", ["width=64", "height=64"], "alexeyab", 0)
    report = export_image_to_boxes(net.eval(), tmp_path / "m.onnx", opset=17,
                                   dynamic_batch=True)
    model = onnx.load(str(tmp_path / "m.onnx"))
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert default == [17] and report.opset == 17
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    found = run_image_to_boxes(onnx_session(tmp_path / "m.onnx"), x)
    assert len(found) == 3


def docs_snippet() -> str:
    """The Python block of docs/deploy.md's 'Running it on an image'."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "deploy.md").read_text()
    after = text.split("**Running it on an image.**", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("letter_box", [0, 1])
def test_the_docs_snippet_on_an_image_equals_detect(letter_box, tmp_path, capsys):
    """docs/deploy.md showed no way to feed the graph an image, and the obvious one (PIL's
    resize) gives other boxes than `detect`; its snippet, run as written on a photo, must give
    `darkcfg detect`'s detections.json: the same (class, box) set, boxes within 1e-4 of the
    image size, scores within 1e-5. `letter_box` is read from the file's metadata."""
    import json
    from pathlib import Path

    from PIL import Image

    from darkcfg.cli import main as darkcfg_main

    name = "yolov3-tiny"
    if not ORACLE.is_dir():
        pytest.skip("../shared/darknet/oracle is not available")
    cfg, weights = str(ORACLE / "cfg" / f"{name}.cfg"), str(weights_file(name, calibrated=True))
    photo = Path(__file__).resolve().parents[1] / "docs" / "detect-trained.jpg"
    model = tmp_path / "m.onnx"
    common = ["--weights", weights, "--set", f"letter_box={letter_box}", "--thresh", ".1"]
    assert darkcfg_main(["export", cfg, *common, "--out", str(model), "--decode",
                         "--nms"]) == 0
    assert darkcfg_main(["detect", cfg, *common, "--out", str(tmp_path / "det"),
                         str(photo)]) == 0
    capsys.readouterr()
    code = docs_snippet().replace('"m.onnx"', repr(str(model))).replace('"dog.jpg"',
                                                                       repr(str(photo)))
    scope: dict = {}
    exec(compile(code, "docs/deploy.md", "exec"), scope)  # noqa: S102 - the docs' own code
    assert scope["letter_box"] is bool(letter_box)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(scope["scores"]) and printed[0].startswith("class ")
    width, height = Image.open(photo).size
    theirs = json.loads((tmp_path / "det" / "detections.json").read_text())
    ours = [(int(c), float(s), tuple(b)) for b, s, c in
            zip(scope["boxes"].tolist(), scope["scores"], scope["classes"], strict=True)]
    # detections.json: [x, y, w, h] -> corners, as `match` pairs them (it leaves out a box
    # with no area in the image, wholly in the letterbox's band: so does the snippet)
    theirs = [(d["category_id"], d["score"], (x, y, x + bw, y + bh))
              for d in theirs for x, y, bw, bh in [d["bbox"]]]
    assert len(theirs) > 20  # the comparison has something to compare
    only_ours, only_theirs, worst = match(ours, theirs, (width, height))
    print(f"letter_box={letter_box}: {len(ours)} from the snippet, {len(theirs)} by detect, "
          f"worst box {worst:.2e} of the image size")
    assert not only_ours and not only_theirs
    assert worst <= 1e-4
    assert sorted(s for _, s, _ in ours) == pytest.approx(sorted(s for _, s, _ in theirs),
                                                          abs=1e-5)


@pytest.mark.parametrize("thresh", [1.5, -0.1, float("nan")])
def test_library_refuses_a_thresh_outside_0_1(thresh, tmp_path, monkeypatch):
    """`--thresh` was range-checked by the command only: export_image_to_boxes(thresh=1.5)
    wrote a graph that keeps nothing, and NaN one whose comparison is always false."""
    from pathlib import Path

    from darkcfg.export.onnx import ExportError

    monkeypatch.setattr(torch.export, "export", lambda *a, **k: pytest.fail("exported"))
    cfg = Path(__file__).resolve().parents[1] / "cfg" / "yolov3-tiny.cfg"
    net, _, _ = build_network(str(cfg), ["width=64", "height=64"], "alexeyab", 0)
    with pytest.raises(ExportError) as caught:
        export_image_to_boxes(net, tmp_path / "m.onnx", thresh=thresh, nms=0.45)
    assert caught.value.first.code == "E100"
    assert "--thresh must be in [0, 1]" in caught.value.first.message
    assert not (tmp_path / "m.onnx").exists()
