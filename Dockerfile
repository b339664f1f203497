# One image for both roles: `recstream worker` and `recstream api`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY recstream ./recstream
COPY stream ./stream
COPY learner ./learner
COPY store ./store
COPY api ./api
RUN pip install -c constraints.txt . && useradd --system --uid 10001 recstream
USER recstream
EXPOSE 8000
CMD ["recstream", "api", "--host", "0.0.0.0"]
