"""A fully convolutional network runs at other sizes than its cfg's (random=1 multi-scale
training, detection and export at any size): the same as the network built at that size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from builders import build
from cfgparse import parse

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cfg", ["yolov3-tiny.cfg", "yolov4-tiny.cfg"])
def test_a_net_built_at_one_size_runs_at_another(cfg):
    torch.manual_seed(0)
    blocks = parse(ROOT / "cfg" / cfg)
    small = build(blocks).eval()
    resized = [blocks[0].with_values(width=192, height=224), *blocks[1:]]
    large = build(resized).eval()
    large.load_state_dict(small.state_dict())
    x = torch.rand(2, 3, 224, 192)
    with torch.no_grad():
        got, want = small(x), large(x)
    assert [t.shape for t in got] == [t.shape for t in want]
    assert [t.shape[-2:] for t in got] == [(7, 6), (14, 12)]
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
