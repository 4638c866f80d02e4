# syntax=docker/dockerfile:1
# The project's image: every role, the topics job and the analytics app run
# from it (`checkout-saga up --role X`, `checkout-saga topics create`,
# `checkout-saga analytics`). Build from the repository root:
#     docker build -t checkout-saga:local .
# Every dependency ships as a manylinux wheel (x86_64); nothing is compiled.

FROM python:3.11-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, so a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/python -c "import tomllib; d = tomllib.load(open('pyproject.toml', 'rb')); print('\n'.join(d['project']['dependencies']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY . .
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/checkout-saga --help > /dev/null

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
# The metrics port also serves /healthz and /readyz (the probes); it listens on
# every interface so that probes and Prometheus reach it from outside.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHECKOUT_DATA_DIR=/tmp/checkout-saga \
    CHECKOUT_METRICS_HOST=0.0.0.0 \
    CHECKOUT_METRICS_PORT=9100
# Never root: the workers need no privilege, and PostgreSQL's embedded
# fallback refuses root anyway (the image always points at real servers).
RUN useradd --system --uid 10001 --user-group --no-create-home checkout
USER 10001:10001
EXPOSE 9100
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('CHECKOUT_METRICS_PORT', '9100'), timeout=2)"]
ENTRYPOINT ["checkout-saga"]
CMD ["up"]
