# Two images from one file:
#   production (the default, last stage): receiver, worker, beat, migrations. The product only: app,
#     workers, reconciler, migrations; no ehrsim, devstack, tests or bench (`ehr-ingest sim|demo` say
#     so and exit 2).
#   dev (`--target dev`): the same plus ehrsim and devstack, for the simulated EHR of the demo profile.
# pyproject's package list names every package; pip installs those present in the build context of
# the stage, so what a stage COPYs is what it ships.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv
RUN useradd --system --uid 10001 ingest
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY workers ./workers
COPY reconciler ./reconciler
COPY migrations ./migrations

FROM base AS dev
COPY ehrsim ./ehrsim
COPY devstack ./devstack
RUN pip install --no-cache-dir .
USER ingest
EXPOSE 8090
CMD ["python", "-m", "ehrsim", "--config", "/config/ehrsim.yaml", "--host", "0.0.0.0", "--port", "8090"]

FROM base AS production
RUN pip install --no-cache-dir .
USER ingest
ENV EHRI_LOG_FORMAT=json
EXPOSE 8000
CMD ["ehr-ingest", "serve", "--host", "0.0.0.0", "--port", "8000"]
