FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 UV_LINK_MODE=copy
RUN pip install --no-cache-dir uv
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
COPY streams ./streams
COPY models ./models
COPY risk ./risk
COPY bench ./bench
COPY schema.sql ./
RUN uv sync --frozen --all-extras --no-dev && rm -rf /root/.cache
ENV PATH=/app/.venv/bin:$PATH
# an unprivileged user owns only what the services write: local state and the models volume (a new named volume
# takes the ownership of its mount point in the image)
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin mlrisk \
    && mkdir -p /app/.mlrisk /models \
    && chown mlrisk:mlrisk /app/.mlrisk /models
USER mlrisk
EXPOSE 6066
ENTRYPOINT ["mlrisk"]
CMD ["worker"]
