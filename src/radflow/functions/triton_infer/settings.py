"""triton-infer's pipeline variables (Clara ``variables``), parsed and checked once per stage."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from radflow.sdk.stage import StageVariables


class TritonInferSettings(StageVariables):
    """Field names are the variable names; every field has the demo model's default."""

    #: Triton's HTTP endpoint, ``host:port`` (Clara's name); required with the Triton backend
    triton_url: str = Field("", alias="NVIDIA_TRITON_HTTPURI")
    #: ``triton`` (default) or ``onnxruntime``: in-process fallback where tritonserver cannot run
    backend: Literal["triton", "onnxruntime"] = Field("triton", alias="TRITON_BACKEND")
    #: model repository folder for the ``onnxruntime`` backend (``<repo>/<model>/<n>/model.onnx``)
    model_repository: str = Field("", alias="TRITON_MODEL_REPOSITORY")
    model_name: str = Field("brain_tumor_seg", alias="TRITON_MODEL_NAME")
    #: empty = the server's latest version
    model_version: str = Field("", alias="TRITON_MODEL_VERSION")
    input_name: str = Field("INPUT__0", alias="TRITON_INPUT")
    output_name: str = Field("OUTPUT__0", alias="TRITON_OUTPUT")
    #: the model's fixed input grid, ``z,y,x``
    model_size: tuple[int, int, int] = Field((32, 64, 64), alias="TRITON_MODEL_SIZE")
    normalisation: Literal["zscore", "minmax", "none"] = Field(
        "zscore", alias="TRITON_NORMALIZATION"
    )
    postprocess: Literal["argmax", "threshold"] = Field("argmax", alias="TRITON_POSTPROCESS")
    threshold: float = Field(0.5, alias="TRITON_THRESHOLD", ge=0.0, le=1.0)
    #: label names for values 1, 2, ... (comma list), written to masks.json
    labels: tuple[str, ...] = Field(("tumor",), alias="TRITON_LABELS")
    #: seconds to wait for one inference answer
    timeout: float = Field(120.0, alias="TRITON_TIMEOUT", gt=0)
    #: seconds to wait for a Triton scaled to zero to come back (activator hold, then readiness
    #: retries with backoff). Default: what the stage's own deadline leaves, 600 s
    #: (timeoutSeconds of an inference stage) - 120 s (TRITON_TIMEOUT) - 60 s for the rest of the
    #: stage; far above the measured local cold start (2.4 s, docs/inference.md), room for a GPU
    #: node to be provisioned where the GPU pool scales its nodes to zero too
    cold_start_timeout: float = Field(420.0, alias="TRITON_COLD_START_TIMEOUT", ge=0)

    @field_validator("model_size", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        if isinstance(value, str):
            parts = [p for p in value.replace("x", ",").split(",") if p.strip()]
            if len(parts) != 3:
                raise ValueError("expected three integers z,y,x, e.g. 32,64,64")
            return tuple(int(p) for p in parts)
        return value

    @field_validator("model_size")
    @classmethod
    def _positive(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if min(value) < 1:
            raise ValueError("sizes must be positive")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        return value
