"""Celery entry point: `celery -A workers worker`. The worker builds the same Flask app as
the API, so both read one config and share the models and services."""

from platform_app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]

from workers import monitoring, tasks  # noqa: E402,F401  (registers tasks and signals)
