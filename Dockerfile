# lrsearch images for docker-compose.yml (see its header for the commands).
#
#   target "lrsearch" (the default): the `lrsearch` command, CPU torch unless TORCH_INDEX_URL says
#     otherwise, the PostgreSQL driver, and the study files in studies/. A CUDA build:
#       docker build --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 -t lrsearch:gpu .
#   target "dashboard": optuna-dashboard with the PostgreSQL driver (no lrsearch, no torch).
#
# Your own task: build FROM this image and install the package that holds it; workers need only
# the task's code, they read the study's spec from the database.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin lrsearch


FROM base AS dashboard
ARG OPTUNA_DASHBOARD_VERSION=0.21.0
RUN pip install "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" "optuna>=5.0,<6" "psycopg[binary]>=3.1"
USER lrsearch
EXPOSE 8080


FROM base AS lrsearch
# torch first, from the PyTorch index: the CPU wheel by default (a plain `pip install torch` pulls
# a multi-GB CUDA build); the package's own range `torch>=2.2,<3` then admits it as installed.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"
WORKDIR /app
# pyproject.toml names README.md as the package's readme: the build needs it.
COPY pyproject.toml README.md ./
COPY lrsearch/ lrsearch/
RUN pip install ".[postgres]"
COPY studies/ studies/
USER lrsearch
ENTRYPOINT ["lrsearch"]
CMD ["--help"]
