# One image for both model services (classifier and detector): torch + timm + ultralytics.
# Build on a CUDA base for GPUs (BASE=pytorch/pytorch:2.x-cuda12-cudnn9-runtime) or the slim
# Python image for CPU. The command picks the service: `spine classifier` or `spine detector`.
ARG BASE=python:3.11-slim
FROM ${BASE}
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/ultralytics SPINE_CACHE_DIR=/cache HOME=/tmp
WORKDIR /app
COPY pyproject.toml README.md ./
# Exact versions CI tested (scripts/lock-requirements.sh writes it).
COPY requirements/constraints.txt ./requirements/constraints.txt
COPY spine ./spine
COPY shared ./shared
COPY classifier_service ./classifier_service
COPY detector_service ./detector_service
COPY training ./training
RUN mkdir gateway bench && touch gateway/__init__.py bench/__init__.py \
 && pip install -c requirements/constraints.txt ".[classifier,detector]"
RUN useradd --uid 10001 --no-create-home spine && mkdir -p /cache && chown spine /cache
USER spine
EXPOSE 8001 8002
CMD ["spine", "classifier", "--host", "0.0.0.0", "--port", "8001"]
