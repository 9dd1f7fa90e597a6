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
EXPOSE 6066
ENTRYPOINT ["mlrisk"]
CMD ["worker"]
