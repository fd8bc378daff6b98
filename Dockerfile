# syntax=docker/dockerfile:1
# journeywatch: one image for every role (worker, sink, migrate, topics, simulate).
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/journeywatch
COPY pyproject.toml README.md constraints.txt ./
COPY pipeline ./pipeline
COPY streams ./streams
COPY sinks ./sinks
RUN /opt/journeywatch/bin/pip install --no-cache-dir -c constraints.txt .
# The journey engine's hot modules compiled with mypyc (pipeline/_compiled.py); the runtime
# image finds them through JW_COMPILED_DIR.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/compile_core.py ./deploy/compile_core.py
RUN /opt/journeywatch/bin/pip install --no-cache-dir -c constraints.txt mypy setuptools \
    && /opt/journeywatch/bin/python deploy/compile_core.py --out /opt/journeywatch/compiled \
    && /opt/journeywatch/bin/pip uninstall -y mypy

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/journeywatch --create-home journeywatch
COPY --from=build /opt/journeywatch /opt/journeywatch
ENV PATH=/opt/journeywatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JW_DATA_DIR=/var/lib/journeywatch \
    JW_WEB_HOST=0.0.0.0 \
    JW_COMPILED_DIR=/opt/journeywatch/compiled \
    JW_COMPILED=1
USER 10001
WORKDIR /var/lib/journeywatch
EXPOSE 6066 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
  CMD python -c "import os,sys,urllib.request; p=os.environ.get('JW_HEALTH_PORT','6066'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/livez', timeout=2).status == 200 else 1)"
ENTRYPOINT ["journeywatch"]
CMD ["worker"]
