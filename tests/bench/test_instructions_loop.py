"""The loop `make bench-instructions` counts under valgrind, run once here without it: if the
API changes so that the loop's callbacks are refused, this fails instead of the count."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bench import instructions


def test_the_counted_loop_gets_every_callback_accepted(tmp_path: Path, redis_url: str,
                                                        monkeypatch: pytest.MonkeyPatch):
    database = tmp_path / "platform.db"
    for name, value in {"DATABASE_URL": f"sqlite:///{database}", "REDIS_URL": redis_url,
                        "SECRET_KEY": "instructions-" * 3, "OPERATOR_API_KEY": "operator-" * 4,
                        "PLATFORM_DATA_DIR": str(tmp_path)}.items():
        monkeypatch.setenv(name, value)
    instructions.run_callbacks(3)
    with sa.create_engine(f"sqlite:///{database}").connect() as connection:
        stored = connection.execute(sa.text("SELECT count(*) FROM events")).scalar_one()
    assert stored == instructions.WARMUP + 3
