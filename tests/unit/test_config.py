from __future__ import annotations

import pytest

from platform_app.config import Config, ConfigError

SECRETS = {"SECRET_KEY": "s" * 32, "OPERATOR_API_KEY": "o" * 32}


def test_defaults_run_on_one_machine(tmp_path):
    config = Config.from_env({**SECRETS, "PLATFORM_DATA_DIR": str(tmp_path)})
    assert config.DATABASE_URL == f"sqlite:///{tmp_path}/platform.db"
    assert config.CELERY_BROKER_URL == config.REDIS_URL


def test_broker_follows_redis_url():
    config = Config.from_env({**SECRETS, "REDIS_URL": "redis://cache:6379/2"})
    assert config.CELERY_BROKER_URL == "redis://cache:6379/2"


@pytest.mark.parametrize("name", ["SECRET_KEY", "OPERATOR_API_KEY"])
def test_secrets_have_no_default(name):
    env = dict(SECRETS)
    del env[name]
    with pytest.raises(ConfigError, match=name):
        Config.from_env(env)


@pytest.mark.parametrize("name, value", [
    ("OUTBOX_MAX_ATTEMPTS", "ten"), ("OUTBOX_MAX_ATTEMPTS", "0"),
    ("OUTBOX_STALE_AFTER_SECONDS", "-1"), ("MAX_CONTENT_LENGTH", "1.5"),
])
def test_malformed_numbers_name_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        Config.from_env({**SECRETS, name: value})


def test_round_trips_through_the_environment():
    config = Config.from_env({**SECRETS, "OUTBOX_MAX_ATTEMPTS": "3"})
    assert Config.from_env(config.as_environ()) == config
