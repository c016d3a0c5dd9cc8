# The driftloop image. EXTRAS picks what goes in: "embeddings,retrain" (default: daemon with monitoring,
# retraining and `driftloop serve`; needs torch) or "" for a small ingestion-only image without torch.
FROM python:3.11-slim-bookworm
ARG EXTRAS=embeddings,retrain
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY driftloop ./driftloop
COPY monitor ./monitor
COPY retrain ./retrain
COPY connectors ./connectors
COPY migrations ./migrations
COPY dashboards ./dashboards
RUN if [ -n "$EXTRAS" ]; then pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; fi \
 && pip install ".${EXTRAS:+[$EXTRAS]}"
RUN useradd --system --uid 10001 driftloop && mkdir -p /var/lib/driftloop/serving && chown -R driftloop /var/lib/driftloop
USER driftloop
ENTRYPOINT []
CMD ["driftloop", "run"]
