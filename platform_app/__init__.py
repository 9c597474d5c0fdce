"""The training-callback platform: a Flask API whose slow work runs in Celery tasks."""

from __future__ import annotations

import logging

import click
from flask import Flask

from platform_app.config import Config
from platform_app.errors import register_error_handlers
from platform_app.extensions import celery_init_app, db, rest_api
from platform_app.services.tracking import TrackingService


def create_app(config: Config | None = None) -> Flask:
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.from_mapping(config.flask_settings())
    _configure_logging(app)

    db.init_app(app)
    rest_api.init_app(app)
    from platform_app.api import callbacks, events, jobs, validation
    for module in (jobs, callbacks, validation, events):
        rest_api.register_blueprint(module.bp)
    from platform_app import health
    app.register_blueprint(health.bp)
    register_error_handlers(app)

    celery_init_app(app)
    app.extensions["tracking"] = TrackingService(
        app.config["MLFLOW_TRACKING_URI"], app.config["MLFLOW_HTTP_REQUEST_TIMEOUT"],
        app.config["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    app.cli.add_command(init_db_command)
    return app


def _configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=app.config["LOG_LEVEL"],
            format="%(asctime)s %(levelname)s %(name)s %(message)s")


def init_db() -> None:
    """Create missing tables. (Schema changes will need migrations; see README.)"""
    db.create_all()


@click.command("init-db")
def init_db_command() -> None:
    init_db()
    click.echo("database tables are in place")
