"""The writers' common input: label masks (triton-infer) paired with their source series.

triton-infer writes ``masks/<SeriesInstanceUID>.nii.gz`` in the volume's geometry plus
``masks.json``; dicom-parser writes ``dicom/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. Here
each mask is matched to its source series and re-indexed onto the source planes (never
resampled): ``mask[k]`` lies on ``plan.slices[k]``. The writers (SEG, RTSTRUCT) only map
indices to instances.

``masks.json`` is read tolerantly; the fields used are (all optional)::

    {"model": {"name": "brain-tumour", "version": "3"}, "labels": ["tumour"],
     "<SeriesInstanceUID>": {"model": {...}, "labels": [...]}}

(``model_name`` / ``model_version`` at either level are accepted too.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from radflow.imaging import dicom
from radflow.imaging.volume import read_volume
from radflow.sdk.errors import InvalidInput
from radflow.sdk.storage import safe_component

MASK_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".nrrd")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class MaskedSeries:
    series_instance_uid: str
    headers: list[Dataset]  #: the source series' instance headers (no pixel data)
    plan: dicom.SlicePlan
    mask: np.ndarray  #: (z, y, x) uint8 labels, z = plan slice index
    model: ModelInfo

    def source_images(self) -> list[Dataset]:
        """Datasets in mask z order: one per plane, or the single multi-frame image."""
        instances = {r.instance for r in self.plan.slices}
        if any(r.frame is not None for r in self.plan.slices):
            if len(instances) != 1:
                raise InvalidInput(
                    "multi-frame source series spread over several instances are not supported"
                )
            return [self.headers[next(iter(instances))]]
        return [self.headers[r.instance] for r in self.plan.slices]

    def mask_in_source_order(self) -> np.ndarray:
        """The mask in the order highdicom pairs with :meth:`source_images` (frame order for
        multi-frame)."""
        if self.plan.slices[0].frame is None:
            return self.mask
        out = np.zeros_like(self.mask)
        for k, ref in enumerate(self.plan.slices):
            out[ref.frame] = self.mask[k]
        return out


def parse_labels(text: str) -> list[str]:
    """Label names (``NVIDIA_SEG_LABELS``): a JSON list (``["tumour", "edema"]``) or a comma list
    (``tumour,edema``)."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                "NVIDIA_SEG_LABELS starts with '[' but is not a JSON list", code="invalid_variables"
            ) from exc
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise InvalidInput(
                "NVIDIA_SEG_LABELS must be a JSON list of non-empty names", code="invalid_variables"
            )
        return [v.strip() for v in value]
    labels = [v.strip() for v in text.split(",")]
    if not all(labels):
        raise InvalidInput(
            "NVIDIA_SEG_LABELS has an empty name between commas", code="invalid_variables"
        )
    return labels


def _model_entry(doc: dict[str, Any]) -> tuple[str | None, str | None, list[str] | None]:
    raw = doc.get("model")
    model: dict[str, Any] = raw if isinstance(raw, dict) else {}
    name = model.get("name") or doc.get("model_name")
    version = model.get("version") or doc.get("model_version")
    labels = doc.get("labels") if isinstance(doc.get("labels"), list) else None
    return (str(name) if name else None, str(version) if version is not None else None, labels)


def model_info(masks_json: dict[str, Any], series_uid: str) -> ModelInfo:
    """Model name/version and labels for one series (series entry wins over top level)."""
    top = _model_entry(masks_json)
    entry = masks_json.get(series_uid)
    own = _model_entry(entry) if isinstance(entry, dict) else (None, None, None)
    name = own[0] or top[0] or "unknown-model"
    version = own[1] or top[1] or "unknown"
    labels = own[2] or top[2] or []
    return ModelInfo(name, version, tuple(str(v) for v in labels))


def _series_uid(path: Path) -> str | None:
    for suffix in MASK_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def load_masked_series(masks_dir: Path, dicom_dir: Path) -> list[MaskedSeries]:
    """Every mask in ``masks_dir`` with its source series from ``dicom_dir``, on the source planes.

    Raises InvalidInput when there is no mask, a mask has no source series, or a mask's grid is
    not the source grid (the message says which property differs).
    """
    doc_path = masks_dir / "masks.json"
    try:
        masks_json = json.loads(doc_path.read_text("utf-8")) if doc_path.exists() else {}
    except json.JSONDecodeError as exc:
        raise InvalidInput("masks.json is not valid JSON") from exc
    if not isinstance(masks_json, dict):
        masks_json = {}
    out = []
    mask_files = sorted(p for p in masks_dir.iterdir() if p.is_file() and _series_uid(p))
    if not mask_files:
        raise InvalidInput("input 'masks' holds no mask volume (<SeriesInstanceUID>.nii.gz)")
    for n, path in enumerate(mask_files):
        uid = _series_uid(path) or ""
        folder = dicom_dir / safe_component(uid)
        files = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
        if not files:
            raise InvalidInput(
                f"mask {n}: no source instances in input 'dicom' for its series "
                "(rule: mask name = SeriesInstanceUID)"
            )
        headers = [dicom.read_header(f) for f in files]
        plan = dicom.plan_slices(dicom.slice_refs(headers, f"mask {n} source"), f"mask {n} source")
        array, geometry = read_volume(path)
        if array.ndim != 3:
            raise InvalidInput(f"mask {n}: expected a 3D label volume, got {array.ndim}D")
        if np.issubdtype(array.dtype, np.floating) and not np.all(array == np.round(array)):
            raise InvalidInput(f"mask {n}: labels must be integers (got fractional values)")
        if array.min() < 0 or array.max() > 255:
            raise InvalidInput(f"mask {n}: label values must lie in 0..255")
        try:
            mapping = dicom.match_grid(
                plan, geometry.origin, geometry.spacing, geometry.direction, array.shape
            )
        except InvalidInput as exc:
            raise InvalidInput(f"mask {n}: {exc}", code="mask_geometry_mismatch") from exc
        mask = np.zeros(plan.shape, np.uint8)
        mask[mapping] = array.astype(np.uint8)
        out.append(MaskedSeries(uid, headers, plan, mask, model_info(masks_json, uid)))
    return out
