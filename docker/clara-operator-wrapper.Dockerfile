# Wraps an existing Clara operator image so it runs as a radflow function on Knative.
#
#   docker build -f docker/clara-operator-wrapper.Dockerfile \
#       --build-arg OPERATOR_IMAGE=nvcr.io/nvidia/clara/ai-liver:0.8.1 \
#       -t radflow/byo-<pipeline>-<operator> .
#
# skaffold.yaml has one such artifact per bring-your-own operator of the compiled pipelines
# (`radflow pipeline compile`). OPERATOR_IMAGE defaults to the example operator
# (docker/examples/copy-operator.Dockerfile), which CI builds and wraps.
#
# The operator's own image stays the base (its binaries, libraries and paths are untouched). A
# self-contained radflow runtime is added under /opt/radflow: Debian's Python, radflow and its
# dependencies, and every shared library they load, glibc and its dynamic loader included. It is
# started through that loader (`ld.so --library-path`), so it runs on any x86-64 Linux base
# whatever its glibc (older, or none) and sets no environment variable (no PYTHONHOME,
# PYTHONPATH or LD_LIBRARY_PATH) that the operator's own command, which inherits the function's
# environment, would pick up. At run time the runtime stages inputs into the operator's Clara
# paths (/input, /output, named paths: RADFLOW_CLARA_PATHS=1), runs its container.command (from
# RADFLOW_STAGE_SPEC, written by the compiler), uploads the outputs and replies with the stage's
# completion event. Every step below fails the build when it fails.
ARG OPERATOR_IMAGE=radflow-examples/copy-operator:1.0

FROM debian:bookworm-slim AS radflow
ENV LANG=C.UTF-8 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /tmp/pip
WORKDIR /build
COPY pyproject.toml constraints.txt docker/requirements.py /tmp/deps/
# pip-ca: an optional extra CA bundle for a TLS-inspecting proxy (docs/deploy.md); unused if absent
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && python3 /tmp/deps/requirements.py /tmp/deps/pyproject.toml "" > /tmp/deps/requirements.txt \
 && /tmp/pip/bin/pip install --target /opt/radflow/site-packages \
        -c /tmp/deps/constraints.txt -r /tmp/deps/requirements.txt
COPY pyproject.toml README.md ./
COPY src/ src/
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && /tmp/pip/bin/pip install --no-deps --target /opt/radflow/site-packages . \
 && mkdir -p /opt/radflow/python/bin /opt/radflow/lib /opt/radflow/app/src/radflow/functions \
 && cp /usr/bin/python3.11 /opt/radflow/python/bin/ \
 && mkdir -p /opt/radflow/python/lib \
 && cp -a /usr/lib/python3.11 /opt/radflow/python/lib/ \
 && rm -rf /opt/radflow/python/lib/python3.11/test \
 && cp src/radflow/functions/entry.py /opt/radflow/app/src/radflow/functions/ \
 && libs=$(find /opt/radflow/python /opt/radflow/site-packages -type f \
               \( -name 'python3.11' -o -name '*.so' -o -name '*.so.*' \) -print0 \
           | xargs -0 ldd 2>/dev/null \
           | awk '$2 == "=>" && $3 ~ /^\// && $3 !~ /^\/opt\/radflow\// {print $3}' | sort -u) \
 && test -n "$libs" \
 && cp -L $libs /opt/radflow/lib/ \
 && cp -L /lib64/ld-linux-x86-64.so.2 /opt/radflow/lib/ \
 && printf '%s\n' '#!/bin/sh' \
      'exec /opt/radflow/lib/ld-linux-x86-64.so.2 --library-path /opt/radflow/lib \' \
      '  /opt/radflow/python/bin/python3.11 -c "import sys; sys.path[:0] = [\"/opt/radflow/site-packages\"]; sys.argv[0] = \"radflow-python\"; exec(sys.argv.pop(1))" "$@"' \
      > /opt/radflow/python3 \
 && chmod 755 /opt/radflow/python3 \
 && /opt/radflow/python3 "import radflow.functions.clara_operator.logic, functions_framework"

FROM ${OPERATOR_IMAGE}
COPY --from=radflow /opt/radflow /opt/radflow
# the copied runtime must start on this base: a failure prints why and fails the build
RUN /opt/radflow/python3 "import functions_framework, radflow.functions.clara_operator.logic"
ENV FUNCTION_TARGET=handle \
    FUNCTION_SOURCE=src/radflow/functions/entry.py \
    RADFLOW_OPERATOR=clara_operator \
    FUNCTION_SIGNATURE_TYPE=http \
    PORT=8080 \
    THREADS=1 \
    RADFLOW_CLARA_PATHS=1
WORKDIR /opt/radflow/app
ENTRYPOINT ["/opt/radflow/python3", "from functions_framework._cli import _cli; _cli()"]
