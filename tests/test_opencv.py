"""darkcfg's .weights against an independent reader: OpenCV's Darknet importer
(`cv2.dnn.readNetFromDarknet`, OpenCV 4.x; `pip install 'darkcfg[opencv]'`).

- every corpus cfg OpenCV can read: darkcfg writes .weights (BN statistics, scales and biases
  drawn away from their defaults so that a swapped or shifted field shows), OpenCV loads cfg +
  weights, and its output equals darkcfg's forward within 1e-4 relative (detectors: the input of
  each [yolo]/[region], which OpenCV exposes as `permute_<i>`); where OpenCV cannot read a cfg,
  the test names the sections/activations (and `check --target opencv` must name them too);
- a yolov4-tiny trained briefly by darkcfg gives the same detections through OpenCV's own
  [yolo] decoding as darkcfg's --detect.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2", reason="OpenCV is not installable here "
                          "(pip install 'opencv-python-headless<5')")
if not hasattr(cv2.dnn, "readNetFromDarknet"):
    pytest.skip(f"OpenCV {cv2.__version__} has no Darknet importer (OpenCV 5 removed it): "
                "pip install 'opencv-python-headless<5'", allow_module_level=True)

from builders.weights import save_weights  # noqa: E402
from cfgparse import CfgError, parse  # noqa: E402
from darkcfg.detect.decode import detect, head_indices  # noqa: E402
from darkcfg.lint.stages import Options, check_file  # noqa: E402
from darkcfg.lint.targets import check_target  # noqa: E402
from darkcfg.model import build_network, load_any_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path("/work/shared/darknet/corpus") if not (ROOT.parent / "shared").is_dir() \
    else ROOT.parent / "shared" / "darknet" / "corpus"
if not CORPUS.is_dir():
    CORPUS = ROOT.parents[1] / "shared" / "darknet" / "corpus"


def sized_cfg(src: Path, dst: Path, w: int, h: int, yolo_thresh: float | None = None) -> Path:
    """A copy of `src` with [net] width/height set (batch 1); optionally `thresh=` in every
    [yolo] (OpenCV zeroes class scores below it)."""
    out, section = [], ""
    for line in src.read_text(errors="replace").splitlines():
        s = line.strip()
        if s.startswith("["):
            section = s
        if section in ("[net]", "[network]") and re.match(r"(width|height|batch|subdivisions)\s*=",
                                                        s):
            continue
        if section == "[yolo]" and yolo_thresh is not None and re.match(r"thresh\s*=", s):
            continue
        out.append(line)
        if s in ("[net]", "[network]"):
            out += [f"width={w}", f"height={h}", "batch=1", "subdivisions=1"]
        if s == "[yolo]" and yolo_thresh is not None:
            out.append(f"thresh={yolo_thresh}")
    dst.write_text("\n".join(out) + "\n")
    return dst


def perturb_normalization(net, seed: int = 1) -> None:
    """BN statistics and affine terms away from 0/1, so that each .weights field matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.2, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-0.2, 0.2, generator=g)


def opencv_net(cfg: Path, weights: Path):
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return net


def compare(ours, cv, x: torch.Tensor) -> float:
    """Max rel. error of OpenCV's outputs against darkcfg's on x."""
    cv.setInput(x.numpy())
    heads = head_indices(ours)
    with torch.no_grad():
        if heads:
            mine = ours(x, collect=[h - 1 for h in heads])
            refs = [mine[h - 1].permute(0, 2, 3, 1).numpy() for h in heads]
            got = cv.forward([f"permute_{h}" for h in heads])
        else:
            # OpenCV's [cost]/[dropout] are identities of the layer before: compare the last
            # layer that computes (OpenCV's last unconnected output)
            last = max(i for i, m in enumerate(ours.meta) if m.type not in ("cost", "dropout"))
            refs = [ours(x, collect=[last])[last].numpy()]
            got = cv.forward(cv.getUnconnectedOutLayersNames())[-1:]
    worst = 0.0
    for o, r in zip(got, refs, strict=True):
        o = np.asarray(o).reshape(r.shape)
        err = float(np.abs(o - r).max() / max(np.abs(r).max(), 1e-30))
        # max(0.0, nan) is 0.0: a NaN output (a misread variance) must count as the worst
        worst = max(worst, err if np.isfinite(err) else np.inf)
    return worst


def opencv_refuses(cfg: Path) -> str | None:
    try:
        cv2.dnn.readNetFromDarknet(str(cfg))
        return None
    except cv2.error as exc:
        lines = [li for li in str(exc).splitlines() if "error:" in li]
        return (lines[-1] if lines else str(exc)).split("error:")[-1].strip()


def corpus_cfgs() -> list[str]:
    return sorted(str(p.relative_to(CORPUS)) for p in CORPUS.glob("*/*.cfg")) \
        if CORPUS.is_dir() else []


SIZES = (64, 96, 128, 224, 256, 416, 448)


def build_small(cfg: Path, tmp_path: Path, sizes=SIZES):
    """darkcfg's networks for `cfg` at small input sizes (the first that builds), each with the
    sized cfg copy."""
    for size in sizes:
        copy = sized_cfg(cfg, tmp_path / f"sized{size}.cfg", size, size)
        try:
            net, _, _ = build_network(str(copy), [], "alexeyab", 0)
        except CfgError:
            continue
        yield net, copy


#: cfgs OpenCV 4.14 reads but does not run like Darknet (observed; not darkcfg's .weights: every
#: other cfg of the corpus matches within 1e-4). xfail, not skip: a fixed OpenCV shows up.
OPENCV_DIVERGES = {
    "pjreddie/darknet9000.cfg": "[softmax] tree=data/9k.tree: the hierarchy file is not in the "
       "corpus, so darkcfg cannot build it here",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=pytest.mark.xfail(reason=OPENCV_DIVERGES[n], strict=False))
    if n in OPENCV_DIVERGES else n for n in corpus_cfgs()])
def test_opencv_reads_darkcfg_weights(name, tmp_path, record_property):
    cfg = CORPUS / name
    refused = opencv_refuses(cfg)
    if refused is not None:
        # the report names what OpenCV lacks, and so must `darkcfg check --target opencv`
        named = list(dict.fromkeys(d.message.split(": ", 1)[1]
                                   for d in check_target(parse(cfg), "opencv")
                                   if d.code in ("W601", "W602", "W603")))
        record_property("opencv_refuses", f"{refused}; darkcfg check --target opencv: "
                        f"{'; '.join(named)}")
        print(f"{name}: OpenCV cannot read it: {refused}; check --target opencv: "
              f"{'; '.join(named) or 'nothing'}")
        assert named, f"{name}: {refused}, but check --target opencv names nothing"
        return
    # OpenCV computes some output sizes differently from Darknet at odd sizes (a [shortcut]
    # then refuses its inputs): take the first small size at which both run
    failures = []
    for net, copy in build_small(cfg, tmp_path):
        perturb_normalization(net)
        net.eval()
        weights = tmp_path / "model.weights"
        save_weights(net, weights)
        x = torch.rand(1, net.info.channels, net.info.height, net.info.width,
                       generator=torch.Generator().manual_seed(2))
        try:
            err = compare(net, opencv_net(copy, weights), x)
            break
        except cv2.error as exc:
            failures.append(f"{net.info.width}px: {str(exc).strip().splitlines()[-1][-160:]}")
        # a refusal the check names at this size is the one to explain; other sizes would
        # only repeat it (the resnets' resampling [shortcut]s, vgg-16's [crop]: 7 sizes of
        # ~100 MB .weights each)
        named = refusals_named(copy)
        if named:
            record_property("opencv_refuses", f"{failures[-1]}; darkcfg check --target opencv: "
                            f"{'; '.join(named)}")
            return
    else:
        if not failures:
            pytest.skip(f"{name}: darkcfg builds it at no small size")
        # a cfg OpenCV reads but cannot run (e.g. the resnets' resampling [shortcut]s): the
        # check must have named why (W603, from the built shapes)
        named = refusals_named(cfg)
        record_property("opencv_refuses", f"{failures[0]}; darkcfg check --target opencv: "
                        f"{'; '.join(named)}")
        assert named, (f"{name}: OpenCV read the cfg but could not run it with darkcfg's "
                       f"weights at any size ({failures}), and check --target opencv names "
                       "nothing")
        return
    # W604: keys and shapes OpenCV computes differently (e.g. go.cfg's [softmax] over a 1x19x19
    # input, cifar.test.cfg's temperature=3: both measured, both named by the check)
    # (and W603s OpenCV runs anyway: weights it loads misplaced, e.g. share_index)
    ignored = list(dict.fromkeys(d.message.split(": ", 1)[1]
                                 for d in check_file(copy, Options(targets=("opencv",)))
                                 if d.code in ("W603", "W604")))
    record_property("max_rel_error", err)
    if ignored:  # OpenCV computes without these keys: a difference is expected, not required
        print(f"{name}: OpenCV ignores {ignored}; max rel. error {err:.2e}")
        return
    assert err <= 1e-4, f"{name}: OpenCV vs darkcfg max rel. error {err:.2e}"


def refusals_named(cfg: Path) -> list[str]:
    """What `darkcfg check --target opencv` says OpenCV refuses (W603) in `cfg`, once each."""
    return list(dict.fromkeys(d.message.split(": ", 1)[1] for d in check_file(
        cfg, Options(targets=("opencv",))) if d.code == "W603"))


def test_opencv_reads_darkcfg_weights_yolov4_tiny(tmp_path):
    """The fast, always-run member of the sweep."""
    net, copy = next(build_small(ROOT / "cfg" / "yolov4-tiny.cfg", tmp_path))
    perturb_normalization(net)
    net.eval()
    save_weights(net, tmp_path / "w.weights")
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 3, net.info.height, net.info.width, generator=g)
    assert compare(net, opencv_net(copy, tmp_path / "w.weights"), x) <= 1e-4


def opencv_detections(cv, x: np.ndarray, thresh: float, nms: float, w: int, h: int):
    """OpenCV's own [yolo] decoding (rows: cx, cy, w, h relative, objectness, class scores
    already objectness x class), then per-class NMS with cv2.dnn.NMSBoxesBatched."""
    cv.setInput(x)
    rows = np.concatenate([o.reshape(-1, o.shape[-1])
                           for o in cv.forward(cv.getUnconnectedOutLayersNames())])
    boxes, scores, classes = [], [], []
    for r in rows:
        for c in np.flatnonzero(r[5:] > thresh):
            cx, cy, bw, bh = r[:4]
            boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h])
            scores.append(float(r[5 + c]))
            classes.append(int(c))
    if not boxes:
        return []
    keep = cv2.dnn.NMSBoxesBatched(boxes, scores, classes, thresh, nms)
    return sorted((classes[i], round(scores[i], 4),
                   tuple(round(v, 2) for v in (boxes[i][0], boxes[i][1],
                                               boxes[i][0] + boxes[i][2],
                                               boxes[i][1] + boxes[i][3])))
                  for i in np.asarray(keep).flatten())


@pytest.mark.slow
def test_trained_yolov4_tiny_same_detections_through_opencv(tmp_path):
    size = 160
    cfg = sized_cfg(ROOT / "cfg" / "yolov4-tiny.cfg", tmp_path / "yolov4-tiny.cfg", size, size)
    out = tmp_path / "run"
    subprocess.run([sys.executable, str(ROOT / "runner.py"), str(cfg), "--train", "--classes",
                    "2", "--set", "batch=4", "--set", "max_batches=4", "--set", "burn_in=1",
                    "--set", "steps=3,4", "--valid-every", "0", "--no-progress", "--workers", "0",
                    "--out", str(out)], check=True, cwd=ROOT, capture_output=True, timeout=900)
    weights = out / "yolov4-tiny_final.weights"
    assert weights.exists()
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    load_any_weights(net, str(weights))
    net.eval()
    from darkcfg.data.detection.embedded import EmbeddedDetection

    image = EmbeddedDetection(1, 2, 3, size, size, 0, 1)[0][0].float() / 255  # a validation image
    # a low threshold: briefly trained objectness is low; OpenCV zeroes scores under its [yolo]
    # thresh=, so the copy it reads sets that lower still
    thresh, nms = 0.005, 0.45
    cv_cfg = sized_cfg(ROOT / "cfg" / "yolov4-tiny.cfg", tmp_path / "cv.cfg", size, size,
                       yolo_thresh=0.001)
    cv = opencv_net(cv_cfg, weights)
    theirs = opencv_detections(cv, image[None].numpy(), thresh, nms, size, size)
    # OpenCV's NMSBoxes is IoU-based: compare with --detect's IoU rule (do_nms_sort)
    ours = sorted((f.class_id, round(f.score, 4), tuple(round(v, 2) for v in f.box))
                  for f in detect(net, image, thresh, nms, letter_box=False,
                                  nms_kind="default")[0])
    assert ours, "the briefly trained net should find something at thresh 0.005"
    from darkcfg.export.nms import match

    only_ours, only_theirs, worst = match(ours, theirs, (size, size))
    # thousands of noisy boxes at 0.005: a pair whose IoU or score sits on the threshold may
    # fall either way between OpenCV's float path and darkcfg's; allow 1 in 1000 of those
    assert len(only_ours) + len(only_theirs) <= max(2, len(ours) // 1000), \
        ([ours[k] for k in only_ours], [theirs[k] for k in only_theirs])
    assert worst <= 1e-3


CONNECTED = """[net]
width=8
height=8
channels=3

[convolutional]
filters=4
size=3
pad=1
activation=leaky

[connected]
output=6
batch_normalize={bn}
activation=leaky

[connected]
output=3
activation=linear
"""


@pytest.mark.parametrize("bn", [0, 1])
def test_opencv_connected_batch_norm(bn, tmp_path):
    """Without batch-norm OpenCV reads darkcfg's (Darknet's) [connected] layers right; with it,
    OpenCV reads the batch-norm arrays from before the matrix, Darknet stores them after: its
    output is wrong, and `check --target opencv` says so (W603)."""
    cfg = tmp_path / "fc.cfg"
    cfg.write_text(CONNECTED.format(bn=bn))
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    perturb_normalization(net)
    net.eval()
    save_weights(net, tmp_path / "fc.weights")
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    err = compare(net, opencv_net(cfg, tmp_path / "fc.weights"), x)
    named = [d.code for d in check_target(parse(cfg), "opencv")]
    if bn:
        assert not err <= 1e-2, "OpenCV now reads [connected] batch-norm as Darknet stores it"
        assert named == ["W603"]
    else:
        assert err <= 1e-4 and named == []


_CONV4 = "[convolutional]\nfilters=4\nsize=3\npad=1\nactivation=leaky\n"
_HEAD = _CONV4 + "[convolutional]\nfilters=18\nsize=1\nactivation=linear\n[yolo]\n" \
    "anchors=1,1, 2,2, 3,3\nnum=3\nclasses=1\n"
#: found by fuzzing: (sections as written, the same with Darknet's reading written out, the
#: code of `check --target opencv` on the first)
DEFAULTS = {
    "conv-activation": ("[convolutional]\nfilters=4\nsize=1\n", "activation=logistic", "W604"),
    "connected-activation": ("[connected]\noutput=4\n", "activation=logistic", "W604"),
    "conv-filters": ("[convolutional]\nsize=1\nactivation=linear\n", "filters=1", "W603"),
    "conv-size": ("[convolutional]\nfilters=2\nactivation=linear\n", "size=1", "W603"),
    "maxpool-stride": ("[maxpool]\nsize=2\n", "stride=1", "W604"),
    "maxpool-size": ("[maxpool]\nstride=1\n", "size=1", "W604"),
    "upsample-stride": ("[upsample]\n", "stride=2", "W604"),
    "reorg-stride": (_CONV4 + "[reorg]\n", "stride=1", "W604"),
    "yolo-mask": (_HEAD, "mask=0,1,2", "W603"),
    "yolo-num": (_HEAD.replace("num=3\n", "mask=0,1,2\n"), "num=3", "W603"),
    "yolo-anchors": (_HEAD.replace("anchors=1,1, 2,2, 3,3\n", "mask=0,1,2\n"),
                     "anchors=1,1, 2,2, 3,3", "W603"),
}


def _opencv_error(cfg: Path, tmp_path: Path) -> float:
    """OpenCV's max rel. error against darkcfg on darkcfg's .weights; inf where OpenCV refuses
    the cfg or gives outputs of another shape."""
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    perturb_normalization(net)
    save_weights(net.eval(), tmp_path / "m.weights")
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    try:
        return compare(net, opencv_net(cfg, tmp_path / "m.weights"), x)
    except (cv2.error, ValueError):  # (ValueError: OpenCV's output has another size)
        return float("inf")


@pytest.mark.parametrize("case", sorted(DEFAULTS))
def test_opencv_reads_darknets_defaults_otherwise(case, tmp_path):
    """A key left out where OpenCV's importer has another default than Darknet (activation
    logistic, [maxpool] stride 1 and size = stride, [upsample] stride 2 ...): OpenCV refuses the
    layer or computes otherwise, and `check --target opencv` says so; with Darknet's value
    written out, both compute the same and the check is quiet."""
    text, written, code = DEFAULTS[case]
    cfg = tmp_path / "m.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n" + text)
    assert [d.code for d in check_target(parse(cfg), "opencv")] == [code]
    assert not _opencv_error(cfg, tmp_path) <= 1e-2, f"OpenCV now reads {case} as Darknet"
    cfg.write_text(cfg.read_text() + written + "\n")
    assert check_target(parse(cfg), "opencv") == []
    assert _opencv_error(cfg, tmp_path) <= 1e-4


_FC = "[connected]\noutput=6\nactivation=linear\n"
_FC4 = "[connected]\noutput=4\nactivation=linear\n"
_CONV2 = "[convolutional]\nfilters=2\nsize=1\nactivation=linear\n"
_YOLO1 = _CONV4 + "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n[yolo]\nmask=0\n" \
    "anchors=1,1\nnum=1\nclasses=1\n"


@pytest.mark.parametrize("section, code", [
    ("[convolutional]\nfilters=2\nsize=3\nactivation=linear\nstride_x=2\nstride_y=2\n", "W604"),
    ("[maxpool]\nsize=2\nstride=2\nstride_x=1\nstride_y=1\n", "W604"),
    ("[maxpool]\nsize=2\nstride_x=2\nstride_y=2\n", None),  # = OpenCV's default stride 2
    (_CONV4 * 3 + "[shortcut]\nfrom=-2,-3\nactivation=linear\n", "W604"),
    (_CONV4 * 3 + "[shortcut]\nfrom=-3\nactivation=linear\n", None),
    (_CONV4 + "[upsample]\nstride=-2\n", "W603"),
    ("[connected]\noutput=8\nactivation=linear\n[convolutional]\nfilters=2\nsize=1\n"
     "activation=linear\n", "W603"),
    ("[connected]\noutput=8\nactivation=linear\n[maxpool]\nsize=1\nstride=1\n", "W603"),
    ("[avgpool]\n[convolutional]\nfilters=2\nsize=1\nactivation=linear\n", None),
    ("[convolutional]\nfilters=4\nsize=3\npad=1\ndilation=2\nactivation=linear\n", "W604"),
    ("[convolutional]\nfilters=8\nsize=3\nactivation=linear\n[convolutional]\nfilters=8\n"
     "size=1\nactivation=linear\n[reorg]\nstride=2\n[sam]\nfrom=-3\n", "W603"),
    (_CONV4 * 2 + "[sam]\nfrom=-2\n", None),
    ("[convolutional]\nbatch_normalize=2\nfilters=8\nsize=1\nactivation=relu\n", "W603"),
    (_HEAD.replace("num=3\n", "num=3\nmask=0,1,2\n") + "[convolutional]\nfilters=3\nsize=1\n"
     "activation=leaky\n", "W603"),
    ("[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nactivation=relu\n", None),
    # Darknet's [cost] outputs zeros at inference, OpenCV's its input
    (_CONV4 + "[cost]\n[softmax]\n", "W604"),
    (_CONV4 + "[avgpool]\n[cost]\n[softmax]\n", "W604"),
    (_CONV4 + "[cost]\n[route]\nlayers=-1\n", "W604"),
    (_CONV4 + "[avgpool]\n[softmax]\n[cost]\n", None),
    # OpenCV counts the layer before a [connected] as c*h*w channels: a [route] to it, then a
    # [convolutional]
    (_CONV4 + _FC + "[route]\nlayers=-2\n" + _CONV2, "W603"),
    (_CONV4 + _FC + "[route]\nlayers=-2\n[maxpool]\nsize=2\nstride=2\n" + _CONV2, "W603"),
    (_CONV4 + _FC + "[route]\nlayers=-2\n" + _FC, None),
    (_CONV4 + "[avgpool]\n" + _FC + "[route]\nlayers=-2\n" + _CONV2, None),
    (_CONV4 * 2 + _FC + "[route]\nlayers=-3\n" + _CONV2, None),
    # a [maxpool] whose stride passes its input, then a 3x3 convolution of the 1x1 map: OpenCV
    # was right, darkcfg's gathered convolution read the map's strides wrong (fixed)
    (_CONV4 + "[maxpool]\nsize=2\nstride=13\n[convolutional]\nbatch_normalize=1\nfilters=8\n"
     "size=3\npad=1\nactivation=mish\n", None),
    # a [shortcut]/[sam] of a [connected] output (OpenCV: (N, C)) and an image
    (_CONV4 + "[avgpool]\n" + _FC4 + "[shortcut]\nfrom=-2\nactivation=linear\n", "W603"),
    (_CONV4 + "[avgpool]\n" + _FC4 + "[route]\nlayers=-2\n[shortcut]\nfrom=-2\n"
     "activation=linear\n", "W603"),
    (_CONV4 + "[avgpool]\n" + _FC4 + "[sam]\nfrom=-2\n", "W603"),
    (_CONV4 + "[avgpool]\n" + _FC4 + "[dropout]\n[shortcut]\nfrom=-2\nactivation=linear\n",
     None),
    (_CONV4 + "[avgpool]\n" + _FC4 * 2 + "[shortcut]\nfrom=-2\nactivation=linear\n", None),
    # a [scale_channels] of a larger map than its input, then a [connected]: OpenCV keeps the
    # input's width and height for the [connected]
    (_CONV4 + "[avgpool]\n[scale_channels]\nfrom=-2\n" + _FC4, "W603"),
    (_CONV4 + "[avgpool]\n[scale_channels]\nfrom=-2\n[maxpool]\nsize=2\nstride=2\n" + _FC4,
     "W603"),
    (_CONV4 + "[avgpool]\n[scale_channels]\nfrom=-2\n[avgpool]\n" + _FC4, None),
    # the same for a [route] back to a larger map
    (_CONV4 + "[maxpool]\nsize=2\nstride=2\n[route]\nlayers=-2\n" + _CONV2 + _FC4, "W603"),
    (_CONV4 + "[avgpool]\n[route]\nlayers=-2\n[avgpool]\n" + _FC4, None),
    (_CONV4 + _FC + "[route]\nlayers=-2\n" + _FC, None),
    (_CONV4 + "[avgpool]\n" + _FC4 + "[route]\nlayers=-2,-1\n", "W603"),  # Concat, the same
    (_CONV4 + "[avgpool]\n" + _FC4 * 2 + "[route]\nlayers=-2,-1\n", None),
    # OpenCV reads no [reorg] reverse=
    (_CONV4 + "[reorg]\nstride=2\nreverse=1\n", "W604"),
    (_CONV4 + "[reorg]\nstride=2\nreverse=0\n", None),
    # a [shortcut] naming the [yolo] before (OpenCV: its decoded boxes)
    (_YOLO1 + "[route]\nlayers=-2\n[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
     "[shortcut]\nfrom=-3\nactivation=linear\n", "W603"),
    (_YOLO1 + "[route]\nlayers=-2\n[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
     "[shortcut]\nfrom=-2\nactivation=linear\n", None),
])
def test_opencv_computes_these_otherwise(section, code, tmp_path):
    """Found by fuzzing: OpenCV's importer reads `stride` only (no stride_x/stride_y), adds
    several `from=` layers of a [shortcut] otherwise, cannot downsample in [upsample], reads no
    dilation, refuses a [sam] of two shapes, and its [connected] output is (N, C), which its
    spatial layers refuse (Darknet's is a 1x1xC image), as its [yolo] output is the decoded
    boxes (also to a [shortcut] naming it); its [cost] passes its input on (Darknet's outputs
    zeros); it counts the layer before a [connected] as c*h*w channels for a [route] to it; its
    Eltwise and Concat refuse a [connected] output with an image; it reads no [reorg]
    reverse=; it sizes a [connected] after a [scale_channels] or [route] by the layer before
    them; `check --target opencv` names each."""
    cfg = tmp_path / "m.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n" + section)
    named = [d.code for d in check_file(cfg, Options(targets=("opencv",)))
             if d.code.startswith("W60")]  # (the shape rules need the graph check)
    err = _opencv_error(cfg, tmp_path)
    if code is None:
        assert named == [] and err <= 1e-4
    else:
        assert named == [code] and not err <= 1e-2, section


def test_opencv_does_not_run_a_flat_input(tmp_path):
    """Found by fuzzing: a [net] with inputs= alone (flat data) loads in OpenCV, but its
    [connected] layer asserts on every input shape; with width=1 height=1 channels=N the same
    network runs and matches. `check --target opencv` names the first (W603)."""
    cfg = tmp_path / "flat.cfg"
    body = "[connected]\noutput=4\nactivation=linear\n"
    cfg.write_text("[net]\ninputs=16\n\n" + body)
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    save_weights(net.eval(), tmp_path / "flat.weights")
    cv = opencv_net(cfg, tmp_path / "flat.weights")
    for shape in ((1, 16), (1, 16, 1, 1)):
        cv.setInput(np.random.rand(*shape).astype(np.float32))
        with pytest.raises(cv2.error):
            cv.forward()
    assert [d.code for d in check_target(parse(cfg), "opencv")] == ["W603"]
    cfg.write_text("[net]\ninputs=16\nwidth=1\nheight=1\nchannels=16\n\n" + body)
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    save_weights(net.eval(), tmp_path / "image.weights")
    x = torch.rand(1, 16, 1, 1, generator=torch.Generator().manual_seed(9))
    assert compare(net, opencv_net(cfg, tmp_path / "image.weights"), x) <= 1e-4
    assert check_target(parse(cfg), "opencv") == []


def test_opencv_reads_converted_and_cut_weights(tmp_path, capsys):
    """`darkcfg weights --save-weights` (a 64-bit `seen` past 2**32 kept) and `--cutoff N`
    through OpenCV: the whole file with the cfg, the cut file with the cfg of its first N
    sections. With the whole cfg OpenCV reads a cut file without a word (the later layers
    keep whatever they had), where darkcfg refuses it (E902) unless told --cutoff."""
    from darkcfg.cli import main as darkcfg_main

    cfg = tmp_path / "fc.cfg"
    cfg.write_text(CONNECTED.format(bn=0))
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    perturb_normalization(net)
    net.eval()
    save_weights(net, tmp_path / "in.weights", seen=2**33 + 5)
    out, cut = tmp_path / "out.weights", tmp_path / "cut.weights"
    assert darkcfg_main(["weights", str(cfg), "--weights", str(tmp_path / "in.weights"),
                         "--save-weights", str(out)]) == 0
    assert darkcfg_main(["weights", str(cfg), "--weights", str(out), "--save-weights",
                         str(cut), "--cutoff", "1"]) == 0
    head = np.frombuffer(out.read_bytes()[:20], "<i4", 3).tolist(), \
        int(np.frombuffer(out.read_bytes()[12:20], "<u8")[0])
    assert head == ([0, 2, 5], 2**33 + 5)
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    assert compare(net, opencv_net(cfg, out), x) <= 1e-4
    first = tmp_path / "first.cfg"  # [net] and the first section
    first.write_text(CONNECTED.split("[connected]")[0])
    ours, _, _ = build_network(str(first), [], "alexeyab", 0)
    load_any_weights(ours, str(cut))
    assert compare(ours.eval(), opencv_net(first, cut), x) <= 1e-4
    opencv_net(cfg, cut)  # no error from OpenCV
    capsys.readouterr()
    assert darkcfg_main(["weights", str(cfg), "--weights", str(cut), "--save-weights",
                         str(tmp_path / "x.weights")]) == 2
    err = capsys.readouterr().err
    assert "error[E902]" in err and "--cutoff 1" in err and "Traceback" not in err


MISPLACING = {
    "shortcut": "[convolutional]\nfilters=3\nsize=3\npad=1\nactivation=leaky\n\n"
                "[shortcut]\nfrom=-2\nweights_type=per_feature\nactivation=linear\n\n",
    "share_index": "[convolutional]\nfilters=3\nsize=3\npad=1\nshare_index=0\n"
                   "activation=leaky\n\n",
}


@pytest.mark.parametrize("kind", sorted(MISPLACING))
def test_opencv_misplaces_the_weights_after_unread_or_shared_arrays(kind, tmp_path):
    """OpenCV reads no [shortcut] weights and reads a share_index layer's own: from there on
    every layer's .weights are misplaced (W603, not a key it merely computes without). The
    shortcut's weights set to 1 (a plain sum) still break it; the same file without those
    floats matches."""
    cfg = tmp_path / "m.cfg"
    cfg.write_text("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=3\n"
                   "size=3\npad=1\nactivation=leaky\n\n" + MISPLACING[kind]
                   + "[convolutional]\nfilters=5\nsize=1\nactivation=linear\n")
    net, _, _ = build_network(str(cfg), [], "alexeyab", 0)
    arrays = [net.layers[i].darknet_arrays() for i in range(len(net.layers))]
    with torch.no_grad():
        for t in arrays[2]:
            t.fill_(1.0)  # the shortcut's weights: 1 x each input, what OpenCV computes
    net.eval()
    save_weights(net, tmp_path / "m.weights")
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    assert not compare(net, opencv_net(cfg, tmp_path / "m.weights"), x) <= 1e-2
    assert [d.code for d in check_target(parse(cfg), "opencv")] == ["W603"]
    if kind == "shortcut":
        data = (tmp_path / "m.weights").read_bytes()
        start = 20 + 4 * sum(t.numel() for layer in arrays[:2] for t in layer)
        end = start + 4 * sum(t.numel() for t in arrays[2])
        (tmp_path / "skip.weights").write_bytes(data[:start] + data[end:])
        assert compare(net, opencv_net(cfg, tmp_path / "skip.weights"), x) <= 1e-4


def test_opencv_reads_a_runs_weights_with_the_runs_cfg(tmp_path, tiny_classifier):
    """A run with --set values that change the network: its <name>.cfg and _final.weights go
    through OpenCV as through darkcfg."""
    from darkcfg.cli.flags import main as runner_main

    cfg = tiny_classifier.write(tmp_path / "tiny.cfg", batch=4, subdivisions=1, burn_in=0,
                                second_conv=False, max_batches=2)
    out = tmp_path / "run"
    assert runner_main([str(cfg), "--train", "--out", str(out), "--no-progress", "--workers",
                        "0", "--valid-every", "0", "--set", "convolutional.filters=6",
                        "--set", "width=16", "--set", "height=16"]) == 0
    net, _, _ = build_network(str(out / "tiny.cfg"), [], "alexeyab", 0)
    load_any_weights(net, str(out / "tiny_final.weights"))
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    assert compare(net.eval(), opencv_net(out / "tiny.cfg", out / "tiny_final.weights"), x) <= 1e-4
