# The platform image: API (gunicorn), Celery worker, beat and Flower all run from it.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY platform_app ./platform_app
COPY workers ./workers
COPY trainer_sdk ./trainer_sdk
COPY celeryconfig.py wsgi.py ./
RUN pip install ".[stack]"
RUN useradd --create-home platform && mkdir -p /metrics && chown platform /metrics
USER platform
EXPOSE 8000
CMD ["gunicorn", "-c", "platform_app/gunicorn_conf.py", "--bind", "0.0.0.0:8000", "wsgi:app"]
