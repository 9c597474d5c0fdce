"""The API's gunicorn hooks."""

from __future__ import annotations

import gc

from platform_app import gunicorn_conf


def test_a_loaded_worker_freezes_what_the_app_allocated():
    assert gc.get_freeze_count() == 0
    try:
        gunicorn_conf.post_worker_init(worker=None)
        assert gc.get_freeze_count() > 100_000  # the test process has imported the app
    finally:
        gc.unfreeze()
