# MLflow tracking server with the drivers it needs for PostgreSQL and S3/MinIO.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 MLFLOW_DISABLE_TELEMETRY=true MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
RUN pip install "mlflow>=3.5" psycopg2-binary boto3
EXPOSE 5000
