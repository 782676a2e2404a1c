"""Runs a real Triton Inference Server on one machine, from the ``nvidia-pytriton`` wheel.

The wheel ships a complete ``tritonserver`` binary with the python backend only (no onnxruntime
backend), so locally the model repository's python-backend config wraps ONNX Runtime around the
same ``model.onnx`` that a GPU cluster serves with ``platform: "onnxruntime_onnx"``
(``models/README.md``). The recipe, and why each step is needed, is in
``shared/docs/triton-local.md``:

1. a private backend folder whose ``python/`` also holds the python-backend stub built for *this*
   interpreter's version (the wheel keeps one stub per Python version aside);
2. ``LD_LIBRARY_PATH`` = this interpreter's own ``LIBDIR`` (its libpython, never the distro's:
   mixing patch levels breaks ``multiprocessing``) + the wheel's ``nvidia_pytriton.libs``;
3. free loopback ports; ready when ``/v2/health/ready`` answers 200; stop = SIGTERM (drain for
   ``exit_timeout`` seconds), then SIGKILL of the process group.

The compiled manifests make Triton a scale-to-zero Knative Service (``radflow.dev/embedded:
triton``); :class:`TritonLauncher` is the function host's launcher for it, so every instance the
activator starts (on the first request after a scale to zero) is this binary on the instance's
port, reading the model repository straight from the object store (``s3://http://host:port/
bucket/models``: the wheel's server has Triton's S3 filesystem built in) with the CPU model config.

On a cluster Triton is NVIDIA's container and this module is not used: operators get its URL from
``NVIDIA_TRITON_HTTPURI`` as in Clara.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path

from radflow.engine.children import die_with_parent
from radflow.engine.host import ServiceLaunch
from radflow.engine.host.spec import expand
from radflow.engine.ports import free_port
from radflow.sdk import http
from radflow.sdk.errors import ConfigError

#: where the project's committed model repository lives (``models/triton``)
MODEL_REPOSITORY = Path(__file__).resolve().parents[3] / "models" / "triton"
#: ``configs/<name>.pbtxt`` the local server loads: the python-backend (CPU) config
LOCAL_CONFIG = "cpu"
#: flags the launcher sets itself (ports and addresses are the instance's, backends are local)
_OWNED_FLAGS = (
    "--model-repository",
    "--model-config-name",
    "--backend-directory",
    "--http-port",
    "--http-address",
    "--grpc-port",
    "--grpc-address",
    "--metrics-port",
    "--metrics-address",
    "--allow-cpu-metrics",
    "--allow-gpu-metrics",
    "--strict-readiness",
    "--exit-on-error",
    "--exit-timeout-secs",
)


def _pytriton_root() -> Path | None:
    """The installed ``pytriton/tritonserver`` folder, or None when the wheel is missing."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def triton_available() -> tuple[bool, str]:
    """Whether the local ``tritonserver`` can run here, and the reason when it cannot.

    When it cannot, operators fall back to ONNX Runtime in process
    (:class:`radflow.imaging.inference.OnnxRuntimeClient`) and say so.
    """
    if sys.platform != "linux" or platform.machine() != "x86_64":
        return (
            False,
            "the nvidia-pytriton wheel's tritonserver is Linux x86_64 only "
            f"(this is {sys.platform}/{platform.machine()})",
        )
    root = _pytriton_root()
    if root is None:
        return (
            False,
            "the nvidia-pytriton wheel is not installed (pip install 'radflow[inference]')",
        )
    if not (root / "bin" / "tritonserver").exists():
        return False, f"no tritonserver binary in {root / 'bin'}"
    stub = root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    if not stub.exists():
        return (
            False,
            f"nvidia-pytriton has no python backend stub for Python {_python_version()} ({stub})",
        )
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    libpython = sysconfig.get_config_var("LDLIBRARY") or ""
    if (
        not libpython.endswith(".so")
        and not (Path(libdir) / f"libpython{_python_version()}.so").exists()
    ):
        return (
            False,
            f"this Python has no shared libpython{_python_version()}.so, "
            "which the backend stub links",
        )
    return True, "tritonserver from nvidia-pytriton"


def _backend_dir(root: Path, state_dir: Path) -> Path:
    """A private backend folder: the wheel's python backend plus this interpreter's stub."""
    backends = state_dir / "backends"
    python = backends / "python"
    if python.exists():
        shutil.rmtree(python)
    shutil.copytree(
        root / "backends" / "python", python, ignore=shutil.ignore_patterns("__pycache__")
    )
    stub = root / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    shutil.copy2(stub, python / "triton_python_backend_stub")
    return backends


def _environment(root: Path, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    libs = [
        sysconfig.get_config_var("LIBDIR") or "",
        str(root.parent.parent / "nvidia_pytriton.libs"),
    ]
    if env.get("LD_LIBRARY_PATH"):
        libs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in libs if p)
    # The stub embeds Python in isolated mode (PYTHONPATH is ignored) and finds its
    # prefix from "python3" on PATH: this interpreter's folder first makes that resolve
    # to this virtualenv (its pyvenv.cfg), so the stub and the models' model.py import this
    # environment's numpy < 2 and onnxruntime, not whatever the base install has.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _flag(args: list[str], name: str) -> str | None:
    for arg in args:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


class TritonLauncher:
    """The function host's launcher for ``radflow.dev/embedded: triton`` Knative Services.

    Each call maps one instance of the Service's container onto the wheel's ``tritonserver``:
    the container's env is expanded the kubelet's way (``$(RADFLOW_S3_ACCESS_KEY_ID)`` in
    ``AWS_ACCESS_KEY_ID``), then its args (``--model-repository=s3://$(RADFLOW_S3_ENDPOINT_URL)/
    ...``); the HTTP endpoint goes on the instance's port, gRPC and metrics on free loopback
    ports, and the model config is :data:`LOCAL_CONFIG` (the wheel has no onnxruntime backend,
    so a manifest's ``gpu`` config cannot load here, just as the dev-cpu overlay switches it).
    """

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._backends: Path | None = None

    def __call__(self, launch: ServiceLaunch) -> tuple[list[str], dict[str, str]]:
        ok, reason = triton_available()
        where = f"Service {launch.spec.namespace}/{launch.spec.name}"
        if not ok:
            raise ConfigError(f"{where}: cannot start Triton here: {reason}")
        root = _pytriton_root()
        assert root is not None
        if self._backends is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._backends = _backend_dir(root, self.state_dir)
        env = dict(launch.env)
        for name, value in launch.spec.env.items():  # in order, as the kubelet does
            env[name] = expand(value, env)
        args = [expand(str(a), env) for a in launch.spec.container.get("args") or []]
        repository = _flag(args, "--model-repository")
        if not repository:
            raise ConfigError(f"{where}: container args have no --model-repository")
        if "$(" in repository:
            raise ConfigError(
                f"{where}: --model-repository={repository} names a variable the engine does not "
                "set; use $(RADFLOW_S3_ENDPOINT_URL) and $(RADFLOW_S3_BUCKET)"
            )
        argv = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={repository}",
            f"--model-config-name={LOCAL_CONFIG}",
            f"--backend-directory={self._backends.resolve()}",
            f"--http-address={launch.host}",
            f"--http-port={launch.port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={free_port()}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={free_port()}",
            "--allow-cpu-metrics=false",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            "--exit-timeout-secs=5",
            *(a for a in args if not a.startswith(_OWNED_FLAGS)),
        ]
        return argv, _environment(root, env)


@dataclass
class TritonServer:
    """One ``tritonserver`` process serving ``model_repository`` on free loopback ports.

    ``model_repository`` is usually :data:`MODEL_REPOSITORY`; ``state_dir`` receives the
    private backend folder and ``tritonserver.log``. ``start()`` returns once every model is
    loaded and the server reports ready.
    """

    model_repository: Path
    state_dir: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    #: seconds a stopping server waits for in-flight requests (and idle keep-alive clients)
    exit_timeout: int = 5
    #: where the server's output goes (default ``state_dir/tritonserver.log``)
    log_file: Path | None = None
    #: ``configs/<name>.pbtxt`` of each model (Triton falls back to ``config.pbtxt``)
    model_config_name: str = LOCAL_CONFIG
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def http_url(self) -> str:
        """``host:port`` of the HTTP endpoint (what ``NVIDIA_TRITON_HTTPURI`` holds)."""
        return f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.log_file or self.state_dir / "tritonserver.log"

    def start(self, timeout: float = 120.0) -> None:
        ok, reason = triton_available()
        if not ok:
            raise RuntimeError(f"cannot start Triton here: {reason}")
        root = _pytriton_root()
        assert root is not None
        self.state_dir.mkdir(parents=True, exist_ok=True)
        backends = _backend_dir(root, self.state_dir)
        for name in ("http_port", "grpc_port", "metrics_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        args = [
            str(root / "bin" / "tritonserver"),
            f"--model-repository={self.model_repository.resolve()}",
            f"--model-config-name={self.model_config_name}",
            f"--backend-directory={backends.resolve()}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-cpu-metrics=false",
            "--allow-gpu-metrics=false",
            "--strict-readiness=true",
            "--exit-on-error=true",
            f"--exit-timeout-secs={self.exit_timeout}",
        ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_environment(root, os.environ.copy()),
                start_new_session=True,
                preexec_fn=die_with_parent,  # never outlives the engine (engine/children.py)
            )
        deadline = time.monotonic() + timeout
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with {self.process.returncode}; see {self.log_path}"
                )
            if http.probe(url, timeout=1) == 200:
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"Triton was not ready on {url} within {timeout:.0f} s; see {self.log_path}"
        )

    def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the server (it drains, then stops its python-backend stubs); SIGKILL the
        whole process group if it is still there after ``exit_timeout`` + 10 s."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(self.exit_timeout + 10 if timeout is None else timeout)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftovers: stubs of a server that hung
        except ProcessLookupError:
            pass
        proc.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
