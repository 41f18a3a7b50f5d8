"""`--detect`'s fast path: the native resize of the bytes read, the native DIoU NMS, and the
[yolo] decoding of only the emitted candidates (natively, or by torch from a view), each against
the plain version it replaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from builders import build, native
from builders.boxes import letterbox_image, resize_image
from darkcfg.detect.decode import (
    _suppressed_diou,
    decode,
    decoding_for,
    head_indices,
    nms,
)


def need_native():
    if native.library() is None:
        pytest.skip(f"no native kernels here: {native.status()}")


def torch_resize(x: torch.Tensor, w: int, h: int) -> torch.Tensor:
    f = x.float() / 255
    if f.shape[-2:] == (h, w):
        return f
    return F.interpolate(f[None], size=(h, w), mode="bilinear", align_corners=True)[0]


@pytest.mark.parametrize("size", [(480, 640, 416, 416), (37, 100, 416, 416), (64, 64, 64, 64),
                                  (1, 1, 5, 7), (3, 1000, 16, 16), (480, 640, 320, 480),
                                  (9, 7, 1, 1)])
def test_native_resize_of_bytes_equals_torch_to_float_rounding(size, monkeypatch):
    """resize_image on uint8 (read as value / 255): the native kernel, from contiguous planes
    and from a decoder's interleaved rows, equals torch's float path to float rounding (torch's
    own values move by 3 ulps between its one- and two-thread kernels); without the kernels
    resize_image gives torch's values exactly."""
    need_native()
    h, w, oh, ow = size
    g = torch.Generator().manual_seed(h * w)
    hwc = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=g)
    ran, real = [], native.resize_u8
    monkeypatch.setattr(native, "resize_u8", lambda a, b: ran.append(1) or real(a, b))
    for image in (hwc.permute(2, 0, 1), hwc.permute(2, 0, 1).contiguous()):
        ran.clear()
        got = resize_image(image, ow, oh)
        assert ran and got.dtype == torch.float32 and got.shape == (3, oh, ow)
        assert torch.allclose(got, torch_resize(image, ow, oh), rtol=0, atol=3e-7)
        batched = resize_image(image[None].expand(2, -1, -1, -1), ow, oh)
        assert torch.equal(batched[0], got) and torch.equal(batched[1], got)
    monkeypatch.setattr(native, "library", lambda: None)
    assert torch.equal(resize_image(image, ow, oh), torch_resize(image, ow, oh))


def test_native_letterbox_of_bytes_fills_the_canvas_inside():
    need_native()
    g = torch.Generator().manual_seed(1)
    image = torch.randint(0, 256, (48, 80, 3), dtype=torch.uint8, generator=g).permute(2, 0, 1)
    got = letterbox_image(image, 64, 64)
    want = letterbox_image(image.float() / 255, 64, 64)
    assert torch.allclose(got, want, rtol=0, atol=3e-7)
    assert torch.equal(got[:, :12], torch.full((3, 12, 64), 0.5))  # the grey band above
    # a sliver too thin to show at this size: Darknet embeds nothing
    assert torch.equal(letterbox_image(image[:, :1], 16, 16), torch.full((3, 16, 16), 0.5))


def random_candidates(g: torch.Generator, k: int, classes: int, grid: bool):
    xy = torch.rand(k, 2, generator=g)
    wh = torch.rand(k, 2, generator=g) * 0.4
    if grid:  # duplicates, equal boxes and equal probs: ties decide the order
        xy, wh = (xy * 4).round() / 4, (wh * 8).round() / 8
    probs = torch.rand(k, classes, generator=g)
    if grid:
        probs = (probs * 4).round() / 4
    probs = torch.where(probs > 0.5, probs, 0.0)
    active = torch.rand(k, generator=g) > 0.1
    return torch.cat([xy, wh], 1), probs, active


def test_native_diou_nms_keeps_the_pairs_the_numpy_walk_keeps():
    """The native greedy DIoU NMS zeroes exactly the (candidate, class) pairs the torch/numpy
    version does, for greedynms (beta 0.6) and diounms betas, with ties, duplicates, inactive
    rows, NaN boxes and no candidates."""
    need_native()
    g = torch.Generator().manual_seed(0)
    checked = 0
    for trial in range(120):
        k = int(torch.randint(0, 200, (1,), generator=g))
        classes = int(torch.randint(1, 10, (1,), generator=g))
        boxes, probs, active = random_candidates(g, k, classes, grid=trial % 3 == 0)
        if trial % 7 == 0 and k:
            boxes[0] = float("nan")
        for thresh, beta in ((0.45, 0.6), (0.3, 1.0), (0.6, 0.3)):
            got = native.greedy_nms_diou(boxes, probs, active, thresh, beta)
            want = _suppressed_diou(boxes, probs, active, thresh, beta)
            assert torch.equal(got, want), (trial, thresh, beta)
            # with too many overlapping pairs to list, each class tests its own
            unlisted = native.greedy_nms_diou(boxes, probs, active, thresh, beta, pair_budget=1)
            assert torch.equal(unlisted, want), (trial, thresh, beta)
            checked += int(want.sum())
    assert checked > 1000  # suppression happened: the comparison is not of empty masks


def test_nms_without_native_kernels_gives_the_same_detections(monkeypatch):
    need_native()
    g = torch.Generator().manual_seed(5)
    boxes, probs, active = random_candidates(g, 150, 6, grid=True)
    from darkcfg.detect.decode import Detections

    dets = Detections(boxes, active.float(), probs, torch.zeros(150, dtype=torch.long),
                      torch.arange(150), "greedynms", 0.6)
    fast = nms(dets)
    monkeypatch.setattr(native, "library", lambda: None)
    assert torch.equal(nms(dets).probs, fast.probs)
    assert (fast.probs == 0).sum() > (probs == 0).sum()


YOLO = """
[net]
width=96
height=64
channels=3

[convolutional]
filters=8
size=3
stride=8
pad=1
activation=leaky

[convolutional]
filters={filters}
size=1
activation=linear

[{section}]
mask=0,1,2
anchors=10,14, 23,27, 37,58
classes=5
num=3
{extra}
"""


def same_decoding(got: torch.Tensor, want: torch.Tensor, boxes: bool, fast: bool) -> bool:
    """Equal, except that the native kernel's e^t (C's expf, as Darknet's get_yolo_box) and
    torch's (Sleef) may differ in the last bit: box w and h within 2 float ulps there."""
    if not (fast and boxes):
        return torch.equal(got, want)
    return torch.equal(got[:, :2], want[:, :2]) and \
        torch.allclose(got[:, 2:], want[:, 2:], rtol=2.4e-7, atol=0)


@pytest.mark.parametrize("fast", [True, False], ids=["native", "torch"])
@pytest.mark.parametrize("section,extra", [("yolo", ""), ("yolo", "new_coords=1"),
                                           ("yolo", "scale_x_y=1.05"),
                                           ("Gaussian_yolo", "yolo_point=left_top")])
def test_yolo_decodes_only_the_emitted_candidates_as_all_of_them(tmp_path, section, extra,
                                                                 fast, monkeypatch):
    """[yolo]'s `emitted` (the cells above thresh decoded from the head output: by the native
    kernel, or by torch from a view) gives the rows, order and values of decoding every
    candidate and then selecting: a batch of three images."""
    calls = []
    if fast:
        need_native()
        emitted = native.yolo_emitted
        monkeypatch.setattr(native, "yolo_emitted",
                            lambda *a, **k: calls.append(emitted(*a, **k)) or calls[-1])
    else:
        monkeypatch.setattr(native, "library", lambda: None)
    box = 8 if section == "Gaussian_yolo" else 4
    path = tmp_path / "y.cfg"
    path.write_text(YOLO.format(filters=3 * (box + 1 + 5), section=section, extra=extra))
    torch.manual_seed(0)
    net = build(path).eval()
    x = torch.rand(3, 3, 64, 96)
    heads = head_indices(net)
    with torch.no_grad():
        outputs = net(x, collect=heads)
    layer, y = net.layers[heads[0]], outputs[heads[0]]
    decoding = decoding_for(layer)
    objectness = decoding.predictions(layer, y, 96, 64).objectness
    for q in (0.0, 0.5, 0.9, 1.0):  # all, half, a tenth, none of the candidates
        thresh = float(objectness.quantile(q)) - (1e-6 if q == 0 else 0)
        t = torch.tensor(thresh)
        image, index, parts, count = decoding.emitted(layer, y, t, 96, 64)
        everything = decoding.predictions(layer, y, 96, 64)
        keep = decoding.keep(layer, everything, t)
        want_image, want_index = torch.nonzero(keep, as_tuple=True)
        assert count == everything.boxes.shape[1] == 8 * 12 * 3
        assert torch.equal(image, want_image) and torch.equal(index, want_index)
        for k, (got, want) in enumerate(zip(parts, everything, strict=True)):
            assert same_decoding(got, want[want_image, want_index], k == 0, fast)
        assert len(index) == round((1 - q) * keep.numel()) or 0 < q < 1
    # the native kernel decoded [yolo] (and stayed out of [Gaussian_yolo]'s way)
    assert (fast and section == "yolo") == any(c is not None for c in calls)
    # decode() over the batch: each image's detections are its own rows
    median = float(objectness.median())
    dets = decode(net, outputs, median)
    parts = decoding.predictions(layer, y, 96, 64)
    for b, d in enumerate(dets):
        rows = torch.nonzero(parts.objectness[b] > median).flatten()
        assert 0 < len(rows) < parts.objectness.shape[1]
        assert torch.equal(d.index, rows)
        assert same_decoding(d.boxes, parts.boxes[b, rows], True, fast)


def test_detect_reads_bytes_and_gives_what_floats_give(tmp_path):
    """`detect` on a file resizes the bytes natively; the same image as floats through torch
    finds the same objects (boxes and scores to float rounding)."""
    from PIL import Image

    from darkcfg.detect.decode import detect, load_image

    path = tmp_path / "y.cfg"
    path.write_text(YOLO.format(filters=30, section="yolo", extra="nms_kind=greedynms"))
    torch.manual_seed(0)
    net = build(path).eval()
    rng = np.random.default_rng(0)
    image = tmp_path / "a.jpg"
    Image.fromarray((rng.uniform(0, 1, (50, 70, 3)) * 255).astype(np.uint8)).save(image)
    found = detect(net, [image], thresh=0.2)[0]
    floats = detect(net, load_image(image), thresh=0.2)[0]
    assert found and [f.class_id for f in found] == [f.class_id for f in floats]
    assert np.allclose([f.box for f in found], [f.box for f in floats], atol=1e-3)
    assert np.allclose([f.score for f in found], [f.score for f in floats], atol=1e-5)


def test_native_printed_objects_are_the_numpy_ones():
    """`found_objects` through the native kernel lists the pairs, order, probs and pixel corners
    of the numpy version (`_printed_pairs`): ties in left edge and in prob, NaN boxes and
    probs, rows with many classes above thresh (more pairs than the first buffer holds), none."""
    need_native()
    from darkcfg.detect.decode import _printed_pairs

    g = torch.Generator().manual_seed(1)
    checked = 0
    for trial in range(80):
        k = int(torch.randint(0, 120, (1,), generator=g))
        classes = int(torch.randint(1, 12, (1,), generator=g))
        boxes, probs, _ = random_candidates(g, k, classes, grid=trial % 2 == 0)
        if trial % 5 == 0 and k > 2:
            boxes[1] = float("nan")
            probs[2, 0] = float("nan")
        thresh = (0.25, 0.5, 0.75)[trial % 3]
        size = (640, 480) if trial % 4 else (417.5, 33)
        got = native.found_objects(probs, boxes, thresh, *size)
        want = _printed_pairs(probs.numpy(), boxes.numpy(), thresh, *size)
        assert got is not None
        np.testing.assert_array_equal(np.array(got[0], dtype=np.int64),
                                      np.array(want[0], dtype=np.int64))
        for ours, theirs in zip(got[1:], want[1:], strict=True):
            np.testing.assert_array_equal(np.array(ours), np.array(theirs))  # NaN == NaN here
        checked += len(want[0])
    assert checked > 2000
