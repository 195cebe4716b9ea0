# One image for every process of the stack: receiver, worker, beat, migrations, ehrsim.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY reconciler ./reconciler
COPY ehrsim ./ehrsim
COPY migrations ./migrations
RUN pip install --no-cache-dir . \
 && useradd --system --uid 10001 ingest
USER ingest
ENV EHRI_LOG_FORMAT=json
EXPOSE 8000
CMD ["ehr-ingest", "serve", "--host", "0.0.0.0", "--port", "8000"]
