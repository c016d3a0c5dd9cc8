# The driftloop daemon (ingestion + monitoring). Retraining needs the `retrain` extra and torch.
FROM python:3.11-slim-bookworm
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY driftloop ./driftloop
COPY monitor ./monitor
COPY retrain ./retrain
COPY connectors ./connectors
COPY migrations ./migrations
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install ".[embeddings]"
RUN useradd --system --uid 10001 driftloop && mkdir -p /var/lib/driftloop && chown driftloop /var/lib/driftloop
USER driftloop
ENTRYPOINT []
CMD ["driftloop", "run"]
