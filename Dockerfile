# One image for the API and the worker; docker-compose.yml gives each its command:
#   api:    alembic upgrade head && uvicorn --factory api.main:app_factory
#   worker: python worker.py
FROM python:3.11-slim AS app

# Production is also the settings' default; said here so `docker inspect` shows it.
ENV APP_ENV=production \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
RUN useradd --create-home --uid 10001 --user-group onramp

# Dependencies first (their own layer, rebuilt only when pyproject.toml changes).
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && pip install -r /tmp/requirements.txt \
 && rm /tmp/requirements.txt

# Only what runs: no tests, virtualenvs or local databases in the image.
COPY alembic.ini worker.py ./
COPY migrations ./migrations
COPY api ./api
COPY activities ./activities
COPY core ./core
COPY workflows ./workflows
COPY support ./support
COPY sandbox ./sandbox
COPY devstack ./devstack
# Editable: templates and static files are read from /app; puts `onramp-support` on PATH.
RUN pip install --no-deps -e . \
 && python -m compileall -q api activities core workflows support

USER onramp
EXPOSE 8000 9464 9465
CMD ["uvicorn", "--factory", "api.main:app_factory", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
