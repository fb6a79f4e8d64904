# trackstream's worker images: one slim target per role; docker-compose.yml picks one per service (build.target).
#   docker build --target streams -t trackstream-streams .   stream worker: extras streams,compression
#   docker build --target sink -t trackstream-sink .         sink worker for a ClickHouse server: sinks,compression
#   docker build -t trackstream-workers .                    default (last stage): both workers in one image
# No image carries chDB (`embedded`) or rich/matplotlib (`cli`): the sink writes to a ClickHouse server.
# Each role installs into its own virtualenv in a build stage; its runtime stage copies only that virtualenv, so the
# sources and the build tree stay behind. The .dockerignore keeps the context to the sources these stages copy.
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY producers ./producers
COPY streams ./streams
COPY sinks ./sinks
COPY trackstream ./trackstream

FROM source AS streams-venv
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[streams,compression]"

FROM source AS sink-venv
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[sinks,compression]"

FROM source AS workers-venv
RUN python -m venv /opt/venv && /opt/venv/bin/pip install --no-cache-dir ".[workers]"

# What every role runs on: a non-root user (uid 1000, as before, so existing volumes stay writable), /data for state,
# the `trackstream` console script as the entrypoint. The role stages add their virtualenv (root-owned, read-only).
FROM base AS runtime
RUN useradd --create-home --uid 1000 --user-group trackstream \
    && install -d -o trackstream -g trackstream /data
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /data
USER trackstream
ENTRYPOINT ["trackstream"]
CMD ["--help"]

FROM runtime AS streams
COPY --from=streams-venv /opt/venv /opt/venv
CMD ["streams", "worker", "--data-dir", "/data"]

FROM runtime AS sink
COPY --from=sink-venv /opt/venv /opt/venv
CMD ["sink", "worker"]

FROM runtime AS workers
COPY --from=workers-venv /opt/venv /opt/venv
