"""The SDK stands alone: it imports nothing but the standard library and requests, runs in
an interpreter that has only those, and never reads or holds an object-store or MLflow
credential."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer_sdk import Client

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "trainer_sdk"
ALLOWED = {"requests", "urllib3", "trainer_sdk"}
SECRET_VARIABLES = ("S3_ACCESS_KEY", "S3_SECRET_KEY", "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "SECRET_KEY",
                    "OPERATOR_API_KEY", "DATABASE_URL")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_the_sdk_imports_only_the_standard_library_and_requests():
    for path in SDK.rglob("*.py"):
        extra = {"ultralytics"} if path.name == "ultralytics.py" else set()  # guarded import
        foreign = imported_modules(path) - set(sys.stdlib_module_names) - ALLOWED - extra
        assert not foreign, f"{path.relative_to(ROOT)} imports {sorted(foreign)}"


def test_the_sdk_works_in_an_interpreter_with_nothing_but_requests(tmp_path, scripted):
    """No site-packages at all: only the SDK and requests (with its own dependencies) on
    sys.path. The platform's packages must be out of reach."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "trainer_sdk").symlink_to(SDK)
    for name in ("requests", "urllib3", "idna", "charset_normalizer", "certifi"):
        spec = importlib.util.find_spec(name)
        (site / name).symlink_to(Path(spec.origin).parent)
    script = f"""
import importlib.util, sys
sys.path.insert(0, {str(site)!r})
for name in ("platform_app", "flask", "mlflow", "boto3", "celery"):
    assert importlib.util.find_spec(name) is None, name
from trainer_sdk import Client
from trainer_sdk.integrations import ultralytics  # importable without Ultralytics
client = Client({scripted.url + '/api/v1'!r}, "token", 3, spool_dir={str(tmp_path)!r})
client.report_progress(1, {{"loss": 0.5}})
assert client.complete()
print("ok")
"""
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert [r.json()["current_epoch"] for r in scripted.matching("/callback/progress")] == [1]


class RecordingEnviron(dict):
    """os.environ stand-in that notes every variable looked up."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key) -> bool:
        self.read.add(key)
        return super().__contains__(key)


def test_the_sdk_reads_no_store_or_mlflow_variable(monkeypatch, scripted, tmp_path):
    environ = RecordingEnviron(os.environ)
    environ.update({name: "x" * 20 for name in SECRET_VARIABLES})
    environ.update(CALLBACK_URL=f"{scripted.url}/api/v1", CALLBACK_TOKEN="job-token",
                   JOB_ID="4", TRAINER_SDK_SPOOL_DIR=str(tmp_path))
    monkeypatch.setattr(os, "environ", environ)
    client = Client.from_env()
    client.report_progress(1, {"loss": 1.0})
    client.log("line")
    client.send_validation({"epoch": 1, "task_type": "detection"})
    assert client.complete()
    client.close()
    suspicious = {key for key in environ.read
                  if any(word in key for word in ("S3", "AWS", "MLFLOW", "SECRET", "PASSWORD"))
                  or key in SECRET_VARIABLES}
    assert not suspicious
    assert {"CALLBACK_URL", "CALLBACK_TOKEN", "JOB_ID"} <= environ.read
    for variable in SECRET_VARIABLES:  # and the source does not name them
        assert not any(variable in path.read_text() for path in SDK.rglob("*.py")), variable


def test_a_client_built_from_a_full_environment_holds_no_secret(tmp_path):
    secrets = {name: f"secret-value-of-{name.lower()}" for name in SECRET_VARIABLES}
    environ = {**secrets, "CALLBACK_URL": "http://127.0.0.1:9/api/v1",
               "CALLBACK_TOKEN": "job-token", "JOB_ID": "4",
               "TRAINER_SDK_SPOOL_DIR": str(tmp_path)}
    client = Client.from_env(environ, close_timeout=0.2)
    try:
        dump = " ".join(walk(client))
        assert "job-token" in dump  # the walk does reach the configuration
        for name, value in secrets.items():
            assert value not in dump, f"the client holds {name}"
        assert "job-token" not in repr(client)
    finally:
        client.close()


def walk(obj, seen=None, depth=0):
    """Every string reachable from `obj` through attributes and containers."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 8:
        return
    seen.add(id(obj))
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, bytes):
        yield obj.decode(errors="replace")
    elif isinstance(obj, dict) or hasattr(obj, "items") and callable(obj.items):
        try:
            items = list(obj.items())
        except Exception:
            return
        for key, value in items:
            yield from walk(key, seen, depth + 1)
            yield from walk(value, seen, depth + 1)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for value in obj:
            yield from walk(value, seen, depth + 1)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        yield from walk(vars(obj), seen, depth + 1)


@pytest.mark.skipif(os.name != "posix", reason="flock-based spool ownership")
def test_two_clients_of_one_job_do_not_share_a_spool(make_client):
    first = make_client("http://127.0.0.1:9/api/v1", job_id=5)
    second = make_client("http://127.0.0.1:9/api/v1", job_id=5)
    assert first.spool_path != second.spool_path
