"""What an API process does once the app is loaded."""

from __future__ import annotations

import gc

from platform_app.process_hooks import freeze_loaded_objects


def test_a_loaded_worker_freezes_what_the_app_allocated():
    assert gc.get_freeze_count() == 0
    try:
        freeze_loaded_objects()
        assert gc.get_freeze_count() > 100_000  # the test process has imported the app
    finally:
        gc.unfreeze()
