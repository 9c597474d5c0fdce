"""WSGI entry point: `gunicorn wsgi:app`."""

from platform_app import create_app

app = create_app()
