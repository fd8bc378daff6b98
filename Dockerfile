# syntax=docker/dockerfile:1
# journeywatch: one image for every role (worker, sink, migrate, topics, simulate).
FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/journeywatch
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY streams ./streams
COPY sinks ./sinks
RUN /opt/journeywatch/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/journeywatch --create-home journeywatch
COPY --from=build /opt/journeywatch /opt/journeywatch
ENV PATH=/opt/journeywatch/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    JW_DATA_DIR=/var/lib/journeywatch \
    JW_WEB_HOST=0.0.0.0
USER 10001
WORKDIR /var/lib/journeywatch
EXPOSE 6066 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=6 \
  CMD python -c "import os,sys,urllib.request; p=os.environ.get('JW_HEALTH_PORT','6066'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{p}/livez', timeout=2).status == 200 else 1)"
ENTRYPOINT ["journeywatch"]
CMD ["worker"]
