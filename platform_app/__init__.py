"""The training-callback platform: a Flask API whose slow work runs in Celery tasks."""

from __future__ import annotations

import logging

import click
from flask import Flask

from platform_app.config import Config
from platform_app.errors import register_error_handlers
from platform_app.extensions import celery_init_app, db, rest_api, sock
from platform_app.services.events import LiveHub
from platform_app.services.storage import ObjectStore
from platform_app.services.tracking import TrackingService


def create_app(config: Config | None = None) -> Flask:
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.from_mapping(config.flask_settings())
    _configure_logging(app)

    db.init_app(app)
    rest_api.init_app(app)
    from platform_app.api import callbacks, events, jobs, uploads, validation
    for module in (jobs, callbacks, uploads, validation, events):
        rest_api.register_blueprint(module.bp)
    from platform_app import health
    app.register_blueprint(health.bp)
    register_error_handlers(app)
    from platform_app import ws  # noqa: F401  (registers the WebSocket route)
    sock.init_app(app)
    app.extensions["live_hub"] = LiveHub(app.config["REDIS_URL"], app.config["WS_QUEUE_SIZE"])

    celery_init_app(app)
    app.extensions["tracking"] = TrackingService(
        app.config["MLFLOW_TRACKING_URI"], app.config["MLFLOW_HTTP_REQUEST_TIMEOUT"],
        app.config["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    app.extensions["storage"] = ObjectStore(
        app.config["S3_ENDPOINT_URL"], app.config["S3_ACCESS_KEY"], app.config["S3_SECRET_KEY"],
        app.config["S3_BUCKET"], app.config["S3_REGION"],
        app.config["S3_PUBLIC_ENDPOINT_URL"] or None)
    app.cli.add_command(init_command)
    return app


def _configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=app.config["LOG_LEVEL"],
            format="%(asctime)s %(levelname)s %(name)s %(message)s")


def init_platform(app: Flask) -> list[str]:
    """Create what the platform needs and is missing: tables and the bucket. Run once
    before starting several processes. (Schema changes will need migrations; see README.)"""
    with app.app_context():
        db.create_all()
        created = app.extensions["storage"].ensure_bucket()
    bucket = app.config["S3_BUCKET"]
    return ["database tables are in place",
            f"bucket {bucket} {'created' if created else 'exists'}"]


@click.command("init")
def init_command() -> None:
    from flask import current_app
    for line in init_platform(current_app._get_current_object()):
        click.echo(line)
