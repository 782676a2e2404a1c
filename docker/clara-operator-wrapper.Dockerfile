# Wraps an existing Clara operator image so it runs as a radflow function on Knative.
#
#   docker build -f docker/clara-operator-wrapper.Dockerfile \
#       --build-arg OPERATOR_IMAGE=nvcr.io/nvidia/clara/ai-liver:0.8.1 \
#       -t radflow/byo-<pipeline>-<operator> .
#
# The operator's own image stays the base (its binaries, libraries and paths are untouched); a
# self-contained Python with radflow and functions-framework is added under /opt/radflow. At run
# time the runtime stages inputs into the operator's Clara paths (/input, /output, named paths:
# RADFLOW_CLARA_PATHS=1), runs its container.command (from RADFLOW_STAGE_SPEC, written by the
# compiler), uploads the outputs and replies with the stage's completion event. The entry point
# sits where the compiled Service's FUNCTION_SOURCE (src/radflow/functions/entry.py, relative to
# the WORKDIR) expects it, as in every radflow image.
ARG OPERATOR_IMAGE

# the standalone CPython build is relocatable and only needs glibc, so it runs on most bases
FROM python:3.11-slim-bookworm AS radflow
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src/ src/
RUN python -m venv --copies /opt/radflow/venv \
 && /opt/radflow/venv/bin/pip install . \
 && mkdir -p /opt/radflow/app/src/radflow/functions \
 && cp src/radflow/functions/entry.py /opt/radflow/app/src/radflow/functions/ \
 && cp -a /usr/local/lib/libpython3* /opt/radflow/ 2>/dev/null || true

FROM ${OPERATOR_IMAGE}
COPY --from=radflow /usr/local /opt/radflow/python
COPY --from=radflow /opt/radflow /opt/radflow
ENV LD_LIBRARY_PATH=/opt/radflow/python/lib:${LD_LIBRARY_PATH} \
    PYTHONHOME=/opt/radflow/python \
    FUNCTION_TARGET=handle \
    FUNCTION_SOURCE=src/radflow/functions/entry.py \
    RADFLOW_OPERATOR=clara_operator \
    FUNCTION_SIGNATURE_TYPE=http \
    PORT=8080 \
    THREADS=1 \
    RADFLOW_CLARA_PATHS=1
WORKDIR /opt/radflow/app
ENTRYPOINT ["/opt/radflow/python/bin/python3", "-c", "import sys; sys.path[:0] = [p for p in __import__('glob').glob('/opt/radflow/venv/lib/python3*/site-packages')]; from functions_framework._cli import _cli; _cli()"]
