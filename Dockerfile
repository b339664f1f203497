# One image for both roles: `recstream worker` and `recstream api`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY recstream ./recstream
COPY stream ./stream
COPY learner ./learner
COPY store ./store
COPY api ./api
# gcc only to build the compiled ranking loops (learner/_kernels.c), then removed from the image.
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install -c constraints.txt . \
    && (cd / && python -c "import learner._kernels") \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 recstream
USER recstream
EXPOSE 8000
CMD ["recstream", "api", "--host", "0.0.0.0"]
