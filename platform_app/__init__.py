"""The training-callback platform: a Flask API whose slow work runs in Celery tasks."""

from __future__ import annotations

import logging
from pathlib import Path

import click
import flask_migrate
from flask import Flask, Response, request
from flask.sessions import SessionInterface

from platform_app import metrics
from platform_app.config import Config
from platform_app.errors import register_error_handlers
from platform_app.extensions import celery_init_app, db, migrate, rest_api, sock
from platform_app.services import outbox
from platform_app.services.backpressure import Backpressure
from platform_app.services.events import LiveHub
from platform_app.services.storage import ObjectStore
from platform_app.services.tracking import TrackingService

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def create_app(config: Config | None = None) -> Flask:
    config = config or Config.from_env()
    app = Flask(__name__)
    app.config.from_mapping(config.flask_settings())
    app.session_interface = NoSessions()
    _configure_logging(app)

    db.init_app(app)
    migrate.init_app(app, db, directory=str(MIGRATIONS))
    rest_api.init_app(app)
    from platform_app.api import callbacks, events, jobs, uploads, validation
    for module in (jobs, callbacks, uploads, validation, events):
        rest_api.register_blueprint(module.bp)
    from platform_app import health
    app.register_blueprint(health.bp)
    register_error_handlers(app)
    metrics.init_app(app)
    app.after_request(conditional_get)
    from platform_app import ws  # noqa: F401  (registers the WebSocket route)
    sock.init_app(app)
    app.extensions["live_hub"] = LiveHub(app.config["REDIS_URL"], app.config["WS_QUEUE_SIZE"])
    app.extensions["backpressure"] = Backpressure(
        app.config["BACKPRESSURE_LAG_SECONDS"], app.config["BACKPRESSURE_RETRY_AFTER_SECONDS"],
        app.config["BACKPRESSURE_MAX_RETRY_AFTER_SECONDS"])
    app.extensions["accept_batches"] = outbox.accept_batches()

    celery_init_app(app)
    app.extensions["tracking"] = TrackingService(
        app.config["MLFLOW_TRACKING_URI"], app.config["MLFLOW_HTTP_REQUEST_TIMEOUT"],
        app.config["MLFLOW_HTTP_REQUEST_MAX_RETRIES"],
        app.config["MLFLOW_OUTAGE_PROBE_SECONDS"])
    app.extensions["storage"] = ObjectStore(
        app.config["S3_ENDPOINT_URL"], app.config["S3_ACCESS_KEY"], app.config["S3_SECRET_KEY"],
        app.config["S3_BUCKET"], app.config["S3_REGION"],
        app.config["S3_PUBLIC_ENDPOINT_URL"] or None)
    app.cli.add_command(init_command)
    return app


class NoSessions(SessionInterface):
    """Every request authenticates with its own token or API key and nothing keeps state in
    a cookie, but Flask's default session builds a signing serializer on every request
    (4 % of a progress callback's instructions). With no session opened, Flask uses its null
    session and saves nothing."""

    def open_session(self, app: Flask, request) -> None:
        return None


def conditional_get(response: Response) -> Response:
    """ETag / If-None-Match on the API's GETs: a poller whose data has not changed gets a
    304 with no body."""
    if (request.method == "GET" and response.status_code == 200 and response.is_json
            and request.path.startswith("/api/")):
        response.add_etag()
        response.make_conditional(request)
    return response


def _configure_logging(app: Flask) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=app.config["LOG_LEVEL"],
            format="%(asctime)s %(levelname)s %(name)s %(message)s")


def init_platform(app: Flask, bucket: bool = True) -> list[str]:
    """Bring the schema to the newest migration and create the bucket if missing. Run once
    before starting several processes, and after every upgrade."""
    with app.app_context():
        flask_migrate.upgrade(directory=str(MIGRATIONS))
        done = ["database schema is at the newest migration"]
        if bucket:
            created = app.extensions["storage"].ensure_bucket()
            done.append(f"bucket {app.config['S3_BUCKET']} {'created' if created else 'exists'}")
    return done


@click.command("init")
@click.option("--no-bucket", is_flag=True, help="Tables only (the store makes its bucket).")
def init_command(no_bucket: bool) -> None:
    from flask import current_app
    for line in init_platform(current_app._get_current_object(), bucket=not no_bucket):
        click.echo(line)
