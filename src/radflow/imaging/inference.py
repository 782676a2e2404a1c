"""Model inference behind one interface: the only module that imports tritonclient.

Operators talk to an :class:`InferenceClient`. :class:`TritonInferenceClient` is the real thing
(Triton's KServe v2 HTTP protocol, tensors as binary data, as in Clara where operators find the
server through ``NVIDIA_TRITON_HTTPURI``). :class:`OnnxRuntimeClient` runs the same ``model.onnx``
from the same model repository in process, for platforms where the ``tritonserver`` binary cannot
run (not Linux x86_64); it gives the same outputs, but it is a fallback, and callers must say so.

Failures map onto radflow's error kinds: an unreachable or not-ready server is
:class:`~radflow.sdk.errors.Unavailable` (the broker retries later); an unknown model or a
request the model rejects (wrong tensor name, shape or dtype) is
:class:`~radflow.sdk.errors.InvalidInput`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from radflow.sdk.errors import InvalidInput, Unavailable


@dataclass(frozen=True)
class InferenceResult:
    """Named output tensors plus the model version that produced them (for provenance)."""

    outputs: dict[str, np.ndarray]
    model_name: str
    model_version: str


class InferenceClient(Protocol):
    """What operators need from an inference service."""

    #: ``"triton"`` or ``"onnxruntime"``: reported in summaries so a fallback is never silent
    backend: str

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> InferenceResult:
        """Run ``model`` on named input tensors and return the requested output tensors."""
        ...

    def close(self) -> None: ...


class TritonInferenceClient:
    """Triton over HTTP (``host:port``, no scheme), binary tensor data both ways.

    Triton scales to zero (a Knative Service): the first request after an idle period is held
    by the activator until a new server has loaded its models. ``cold_start_timeout`` is how
    long the client waits for that: one request may be held that long, and while the server
    answers "not ready" (or the activator 502/503/504) readiness is retried with exponential
    backoff (0.5 s doubling to 10 s) until it has passed; only then is the job failed as
    :class:`~radflow.sdk.errors.Unavailable` (retried later by the broker).
    """

    backend = "triton"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 120.0,
        model_version: str = "",
        cold_start_timeout: float = 0.0,
    ) -> None:
        self.url = url.removeprefix("http://").rstrip("/")
        self.model_version = model_version
        self.cold_start_timeout = cold_start_timeout
        try:
            self._client = httpclient.InferenceServerClient(
                self.url,
                connection_timeout=min(timeout, 10.0),
                network_timeout=max(timeout, cold_start_timeout),
            )
        except (InferenceServerException, OSError, ValueError) as exc:
            raise Unavailable(f"cannot create a Triton client for {self.url}: {exc}") from exc

    def _ready(self, model: str) -> None:
        deadline = time.monotonic() + self.cold_start_timeout
        delay = 0.5
        while True:
            try:
                self._ready_once(model)
                return
            except Unavailable:
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _ready_once(self, model: str) -> None:
        try:
            live = self._client.is_server_ready()
        except (InferenceServerException, OSError) as exc:
            raise Unavailable(f"Triton at {self.url} is unreachable ({exc}); retry later") from exc
        if not live:
            raise Unavailable(f"Triton at {self.url} is not ready; retry later")
        try:
            ready = self._client.is_model_ready(model, self.model_version)
        except (InferenceServerException, OSError) as exc:
            raise Unavailable(
                f"Triton at {self.url}: readiness of model {model!r} unknown ({exc})"
            ) from exc
        if not ready:
            try:
                known = {m.get("name") for m in self._client.get_model_repository_index()}
            except (InferenceServerException, OSError):
                known = set()
            if known and model not in known:
                raise InvalidInput(
                    f"Triton at {self.url} has no model {model!r} "
                    f"(it has: {', '.join(sorted(str(k) for k in known))});"
                    " fix TRITON_MODEL_NAME or the model repository"
                )
            raise Unavailable(f"model {model!r} is not ready on Triton at {self.url}; retry later")

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> InferenceResult:
        self._ready(model)
        request_inputs = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(array)
            tensor = httpclient.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            request_inputs.append(tensor)
        requested = [httpclient.InferRequestedOutput(name, binary_data=True) for name in outputs]
        try:
            answer = self._client.infer(
                model, request_inputs, model_version=self.model_version, outputs=requested
            )
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            if status.startswith("5") or "unavailable" in str(exc).lower():
                raise Unavailable(
                    f"Triton at {self.url} failed to run {model!r}: {exc.message()}"
                ) from exc
            raise InvalidInput(
                f"Triton rejected the request to {model!r}: {exc.message()}"
            ) from exc
        except OSError as exc:
            raise Unavailable(
                f"Triton at {self.url} dropped the request to {model!r} ({exc}); retry later"
            ) from exc
        result = answer.get_response()
        tensors: dict[str, np.ndarray] = {}
        for name in outputs:
            value = answer.as_numpy(name)
            if value is None:
                raise InvalidInput(
                    f"model {model!r} returned no output tensor {name!r}; check TRITON_OUTPUT"
                )
            tensors[name] = value
        return InferenceResult(
            tensors, str(result.get("model_name", model)), str(result.get("model_version", ""))
        )

    def close(self) -> None:
        self._client.close()


class OnnxRuntimeClient:
    """In-process ONNX Runtime on ``<repository>/<model>/<version>/model.onnx`` (latest version).

    The fallback when Triton cannot run on this platform: same model file, same tensor names.
    """

    backend = "onnxruntime"

    def __init__(self, model_repository: Path, *, threads: int = 0) -> None:
        self.model_repository = Path(model_repository)
        self.threads = threads
        self._sessions: dict[str, tuple[object, str]] = {}

    def _session(self, model: str) -> tuple[object, str]:
        if model in self._sessions:
            return self._sessions[model]
        import onnxruntime as ort

        folder = self.model_repository / model
        versions = sorted(
            int(p.name)
            for p in folder.glob("*")
            if p.name.isdigit() and (p / "model.onnx").exists()
        )
        if not versions:
            raise InvalidInput(
                f"no {model}/<version>/model.onnx in the model repository {self.model_repository}"
            )
        version = str(versions[-1])
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        session = ort.InferenceSession(
            str(folder / version / "model.onnx"),
            sess_options=options,
            providers=["CPUExecutionProvider"],
        )
        self._sessions[model] = (session, version)
        return session, version

    def infer(
        self, model: str, inputs: Mapping[str, np.ndarray], outputs: Sequence[str]
    ) -> InferenceResult:
        session, version = self._session(model)
        try:
            values = session.run(  # type: ignore[attr-defined]
                list(outputs), {k: np.ascontiguousarray(v) for k, v in inputs.items()}
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad feeds
            raise InvalidInput(f"ONNX Runtime rejected the request to {model!r}: {exc}") from exc
        return InferenceResult(dict(zip(outputs, values, strict=True)), model, version)

    def close(self) -> None:
        self._sessions.clear()
