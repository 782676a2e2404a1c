"""The synthetic phantoms the demo model is trained and validated on."""

from __future__ import annotations

import numpy as np

from radflow.demo.phantom import brain_phantom


def test_same_seed_same_phantom_and_shape() -> None:
    a, b = brain_phantom((20, 40, 36), seed=5), brain_phantom((20, 40, 36), seed=5)
    assert a.t1c.shape == (20, 40, 36) and a.t1c.dtype == np.float32 and a.label.dtype == np.uint8
    assert np.array_equal(a.t1c, b.t1c) and np.array_equal(a.label, b.label)


def test_tumour_free_cases_have_empty_labels_and_tumour_cases_do_not() -> None:
    for seed in range(6):
        assert brain_phantom(seed=seed, tumor=False).label.sum() == 0
        assert brain_phantom(seed=seed, tumor=True).label.sum() >= 30


def test_the_tumour_enhances_on_t1c_only() -> None:
    p = brain_phantom(seed=11)
    inside = p.label.astype(bool)
    # the enhancing part is the brightest tissue on T1c and unremarkable on T1
    assert np.percentile(p.t1c[inside], 90) > 1.3 * np.median(p.t1c[p.t1c > p.t1c.mean()])
    assert np.percentile(p.t1[inside], 90) < 1.3 * np.median(p.t1[p.t1 > p.t1.mean()])


def test_seeds_randomise_intensity_scale_size_and_position() -> None:
    ps = [brain_phantom(seed=s) for s in range(8)]
    medians = [float(np.median(p.t1c[p.t1c > p.t1c.mean()])) for p in ps]
    sizes = [int(p.label.sum()) for p in ps]
    centres = [np.argwhere(p.label).mean(0) for p in ps]
    assert max(medians) / min(medians) > 1.5
    assert max(sizes) / min(sizes) > 2
    assert np.ptp(np.array(centres), axis=0).max() > 5
