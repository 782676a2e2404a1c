"""Slice ordering and series consistency checks on plane descriptions (no files)."""

from __future__ import annotations

import numpy as np
import pytest

from radflow.imaging.dicom import SliceRef, orientation_label, plan_slices
from radflow.sdk.errors import InvalidInput

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def ref(
    n: int,
    pos: tuple[float, float, float],
    ori: tuple[float, ...] = AXIAL,
    spacing: tuple[float, float] = (0.5, 0.8),
    rows: int = 4,
    cols: int = 6,
) -> SliceRef:
    return SliceRef(n, None, pos, ori, spacing, rows, cols, 1.0, 0.0, 2.0)


def test_orders_by_position_along_normal_not_by_list_order() -> None:
    refs = [ref(i, (0, 0, z)) for i, z in enumerate([6.0, 0.0, 9.0, 3.0])]
    plan = plan_slices(refs)
    assert [r.instance for r in plan.slices] == [1, 3, 0, 2]
    assert plan.origin == (0, 0, 0)
    assert plan.spacing == (0.8, 0.5, 3.0)  # (x = column spacing, y = row spacing, z)


def test_normal_pointing_to_feet_orders_descending_z() -> None:
    ori = (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # row x col = (0, 0, -1)
    plan = plan_slices([ref(i, (0, 0, z), ori) for i, z in enumerate([0.0, 3.0, 6.0])])
    assert [r.instance for r in plan.slices] == [2, 1, 0]
    assert plan.normal == (0.0, 0.0, -1.0) and plan.spacing[2] == pytest.approx(3.0)


def test_sagittal_and_oblique_normals() -> None:
    sag = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # normal (-1, 0, 0)
    plan = plan_slices([ref(i, (x, 0, 0), sag) for i, x in enumerate([2.0, -2.0, 0.0])])
    assert [r.position[0] for r in plan.slices] == [2.0, 0.0, -2.0]
    assert orientation_label(sag) == "Sagittal"
    a = np.deg2rad(20)
    row, col = np.array([1, 0, 0.0]), np.array([0, np.cos(a), np.sin(a)])
    n = np.cross(row, col)
    refs = [ref(i, tuple(k * 2.5 * n), tuple(row) + tuple(col)) for i, k in enumerate([3, 0, 2, 1])]
    plan = plan_slices(refs)
    assert [r.instance for r in plan.slices] == [1, 3, 2, 0]
    assert plan.spacing[2] == pytest.approx(2.5)
    assert orientation_label(tuple(row) + tuple(col)) == "Axial"


@pytest.mark.parametrize(
    ("refs", "message"),
    [
        (
            [ref(0, (0, 0, 0)), ref(1, (0, 0, 3), (0, 1, 0, 0, 0, -1))],
            "mixed ImageOrientationPatient",
        ),
        ([ref(0, (0, 0, 0)), ref(1, (0, 0, 3), rows=5)], "mixed Rows/Columns"),
        ([ref(0, (0, 0, 0)), ref(1, (0, 0, 3), spacing=(0.8, 0.5))], "mixed PixelSpacing"),
        ([ref(0, (0, 0, 0)), ref(1, (0, 0, 0)), ref(2, (0, 0, 3))], "duplicate slice positions"),
        ([ref(0, (0, 0, 0)), ref(1, (0, 0, 3)), ref(2, (0, 0, 9))], "non-uniform slice spacing"),
        ([ref(0, (0, 0, 0)), ref(1, (0, 1, 3)), ref(2, (0, 2, 6))], "gantry tilt"),
        ([], "no image planes"),
    ],
)
def test_inconsistent_series_are_rejected_naming_series_and_rule(
    refs: list[SliceRef], message: str
) -> None:
    with pytest.raises(InvalidInput, match=rf"series 7: .*{message}.*rule"):
        plan_slices(refs, "7")


def test_single_slice_uses_thickness_for_depth() -> None:
    assert plan_slices([ref(0, (1, 2, 3))]).spacing == (0.8, 0.5, 2.0)


def test_match_grid_maps_positions_and_names_what_differs() -> None:
    from radflow.imaging.dicom import match_grid

    plan = plan_slices([ref(i, (0, 0, z)) for i, z in enumerate([0.0, 3.0, 6.0])])
    direction = plan.direction
    assert match_grid(plan, (0, 0, 0), plan.spacing, direction, (3, 4, 6)) == [0, 1, 2]
    flipped = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert match_grid(plan, (0, 0, 6), plan.spacing, flipped, (3, 4, 6)) == [2, 1, 0]
    assert match_grid(plan, (0, 0, 3), plan.spacing, direction, (2, 4, 6)) == [1, 2]
    cases = [
        (((0, 0, 0), plan.spacing, direction, (3, 6, 4)), "in-plane size"),
        (
            ((0, 0, 0), plan.spacing, (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (3, 4, 6)),
            "directions differ",
        ),
        (((0, 0, 0), (0.5, 0.8, 3.0), direction, (3, 4, 6)), "pixel spacing"),
        (((0, 0, 1.5), plan.spacing, direction, (2, 4, 6)), "lies on no source plane"),
        (((0.4, 0, 0), plan.spacing, direction, (3, 4, 6)), "shifted in-plane"),
        (((0, 0, 0), (0.8, 0.5, 0.0), direction, (3, 4, 6)), "several mask slices"),
    ]
    for args, message in cases:
        with pytest.raises(InvalidInput, match=message):
            match_grid(plan, *args)
