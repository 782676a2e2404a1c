"""Pre/post-processing of triton-infer: resizing conventions, normalisation, label decoding."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.functions.triton_infer.preprocess import (
    normalise,
    postprocess,
    preprocess,
    resize_linear,
    resize_nearest,
)


def test_linear_resize_of_a_ramp_is_exact_inside_and_keeps_shape() -> None:
    ramp = np.broadcast_to(np.arange(10, dtype=np.float32)[None, None, :], (4, 6, 10))
    up = resize_linear(ramp, (4, 6, 20))
    assert up.shape == (4, 6, 20) and up.dtype == np.float32
    # align_corners=False: output voxel j samples source coordinate (j + 0.5) / 2 - 0.5
    assert up[0, 0, 5] == pytest.approx(2.25)
    assert np.array_equal(resize_linear(ramp, (4, 6, 10)), ramp)


def test_nearest_resize_round_trip_restores_a_block_mask() -> None:
    mask = np.zeros((30, 50, 70), np.uint8)
    mask[10:20, 10:40, 20:60] = 1
    small = resize_nearest(mask, (15, 25, 35))
    assert small.dtype == np.uint8 and set(np.unique(small)) == {0, 1}
    back = resize_nearest(resize_nearest(mask, (60, 100, 140)), mask.shape)
    assert np.array_equal(back, mask)


def test_zscore_is_indifferent_to_the_scanner_scale_and_offset() -> None:
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 1000, (8, 16, 16)).astype(np.float32)
    assert np.allclose(normalise(v), normalise(3.5 * v + 0.0), atol=1e-4)
    m = normalise(v, "minmax")
    assert m.min() < 0.01 and m.max() > 0.99
    assert np.array_equal(normalise(v, "none"), v)


def test_preprocess_gives_the_model_tensor_shape() -> None:
    x = preprocess(np.ones((40, 70, 90), np.int16), (32, 64, 64))
    assert x.shape == (1, 1, 32, 64, 64) and x.dtype == np.float32


def test_postprocess_argmax_and_threshold_back_to_the_source_grid() -> None:
    scores = np.zeros((1, 2, 4, 4, 4), np.float32)
    scores[0, 0] = 0.7
    scores[0, 1, 1:3, 1:3, 1:3] = 0.9  # foreground wins there
    scores[0, 1, 0, 0, 0] = 0.6  # below class 0's 0.7: background with argmax
    arg = postprocess(scores, (8, 8, 8))
    assert arg.shape == (8, 8, 8) and arg.dtype == np.uint8 and int(arg.sum()) == 8 * 8
    thr = postprocess(scores, (4, 4, 4), mode="threshold", threshold=0.5)
    assert int(thr.sum()) == 9
    with pytest.raises(ValueError, match="expected"):
        postprocess(np.zeros((2, 2, 4, 4)), (4, 4, 4))
