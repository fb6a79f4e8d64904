# One image for trackstream's stream and sink workers (docker-compose.yml runs both from it).
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY producers ./producers
COPY streams ./streams
COPY sinks ./sinks
COPY trackstream ./trackstream
RUN pip install ".[streams,sinks,compression]"
RUN useradd --create-home trackstream && mkdir -p /data && chown trackstream /data
USER trackstream
ENTRYPOINT ["trackstream"]
