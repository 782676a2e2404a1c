# One image per radflow function: docker build --build-arg FUNCTION=seg_writer --build-arg EXTRAS=imaging .
# (skaffold.yaml builds each; the Knative Service's env picks the entry point, as in the engine:
#  FUNCTION_SOURCE=src/radflow/functions/<function>/main.py, FUNCTION_TARGET=handle, FUNCTION_SIGNATURE_TYPE=http)
FROM python:3.11-slim-bookworm

ARG FUNCTION
ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# dcmtk for scu-export's tests/tools is not needed at run time; pynetdicom does the C-STORE
WORKDIR /app
COPY pyproject.toml README.md ./
COPY src/ src/
RUN test -f "src/radflow/functions/${FUNCTION}/main.py" || { echo "no function ${FUNCTION}"; exit 1; } \
 && pip install ".${EXTRAS:+[${EXTRAS}]}"

# one request per pod (containerConcurrency: 1); the Service's env may override
ENV FUNCTION_TARGET=handle \
    FUNCTION_SOURCE=src/radflow/functions/${FUNCTION}/main.py \
    FUNCTION_SIGNATURE_TYPE=http \
    PORT=8080 \
    THREADS=1
RUN useradd --uid 10001 --no-create-home radflow
USER 10001
EXPOSE 8080
CMD ["functions-framework"]
