"""`--data digits`: scikit-learn's 8x8 digits, seeded 80/20 split."""

from __future__ import annotations

import pytest
import torch

from cfgparse import CfgError


def test_digits_data_source():
    pytest.importorskip("sklearn")
    from darkcfg.data import open_images

    splits = open_images("digits", (1, 8, 8), seed=3)
    assert len(splits.train) + len(splits.val) == 1797
    assert abs(len(splits.val) - 0.2 * 1797) < 1
    x, y = splits.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.uint8 and 0 <= int(y) < 10
    again = open_images("digits", (1, 8, 8), seed=3)
    assert torch.equal(splits.train[5][0], again.train[5][0])
    other = open_images("digits", (1, 8, 8), seed=4)
    assert not torch.equal(splits.val.x, other.val.x)
    with pytest.raises(CfgError, match="8x8x1"):
        open_images("digits", (3, 8, 8), seed=0)
