# The public API: DICOM decoding, fan-out, fusion. No torch in this image.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
# Exact versions CI tested (scripts/lock-requirements.sh writes it).
COPY requirements/constraints.txt ./requirements/constraints.txt
COPY spine ./spine
COPY shared ./shared
COPY gateway ./gateway
RUN mkdir classifier_service detector_service training bench \
 && touch classifier_service/__init__.py detector_service/__init__.py training/__init__.py bench/__init__.py \
 && pip install -c requirements/constraints.txt ".[gateway]"
RUN useradd --uid 10001 --no-create-home spine && mkdir -p /audit && chown spine /audit
USER spine
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s CMD \
  python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/livez').status != 200)"
CMD ["spine", "gateway", "--host", "0.0.0.0", "--port", "8000"]
