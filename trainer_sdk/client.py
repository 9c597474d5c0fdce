"""`Client`: what a training job uses to report to the platform.

It knows three things: the callback URL (ending in `/api/v1`), the job's callback token and
the job id (`Client.from_env()` reads them from `CALLBACK_URL`, `CALLBACK_TOKEN`, `JOB_ID`).
It never reads or needs an object-store or MLflow credential.

- Progress, logs and completion go through the background `Sender`: the call returns at
  once; order, retries, spooling and replay happen on the sender's thread.
- `send_validation()` and the uploads are synchronous (with retries) because callers use
  their outcome.
- Transport problems never raise into training code; they are logged and retried. Bad
  arguments raise `TypeError`/`ValueError` at once, where the mistake is.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import mimetypes
import numbers
import operator
import os
import re
import tempfile
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from trainer_sdk import __version__
from trainer_sdk.errors import APIError, SDKError
from trainer_sdk.sender import Sender, new_key
from trainer_sdk.transport import DEFAULT_TIMEOUT, Transport
from trainer_sdk.uploads import Uploader, local_file

log = logging.getLogger("trainer_sdk")

ENV_URL, ENV_TOKEN, ENV_JOB = "CALLBACK_URL", "CALLBACK_TOKEN", "JOB_ID"
ENV_SPOOL_DIR = "TRAINER_SDK_SPOOL_DIR"
CHECKPOINT_TYPES = ("best", "last", "epoch")
MAX_METRICS = 1000
MAX_LINE = 65536
MAX_ERROR_MESSAGE = 65536
LOG_TYPE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Client:
    """Reports one training job to the platform. Thread-safe; use one per job.

    `with Client.from_env() as client: ...` reports the job failed (with the traceback) if
    the block raises, and closes the client on the way out.
    """

    def __init__(self, callback_url: str, token: str, job_id: int | str, *,
                 timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
                 spool_dir: str | os.PathLike | None = None,
                 log_batch_lines: int = 500, log_interval: float = 2.0,
                 spool_after: float = 5.0, close_timeout: float = 30.0,
                 upload_workers: int | None = None, retry_base_delay: float = 0.5,
                 retry_max_delay: float = 30.0, call_timeout: float = 30.0) -> None:
        if not isinstance(callback_url, str) or not re.match(r"^https?://[^/]+", callback_url):
            raise ValueError(f"callback_url must be an http(s) URL, got {callback_url!r}")
        if not isinstance(token, str) or not token.strip():
            raise ValueError("token must be a non-empty string")
        self.job_id = _job_id(job_id)
        self.callback_url = callback_url.rstrip("/")
        self.close_timeout = float(close_timeout)
        self.call_timeout = float(call_timeout)
        if isinstance(timeout, (int, float)):
            timeout = (float(timeout), float(timeout))
        self._transport = Transport(self.callback_url, token.strip(), timeout=timeout,
                                    user_agent=f"trainer-sdk/{__version__}")
        self._stop = threading.Event()
        self._finished = False
        self._closed = False
        self._lock = threading.Lock()
        self._sender = Sender(
            self._transport, spool_path=self._spool_path(spool_dir),
            on_answer=self._on_answer, on_refused=self._on_refused,
            log_batch_lines=log_batch_lines, log_interval=log_interval,
            spool_after=spool_after, base_delay=retry_base_delay,
            max_delay=retry_max_delay)
        # synchronous calls (uploads, validation) wait between retries at most 15 s
        self._sync_delays = {"base_delay": retry_base_delay,
                             "max_delay": min(retry_max_delay, 15.0)}
        self._uploader = Uploader(self._transport, self.job_id, workers=upload_workers,
                                  call_timeout=call_timeout, **self._sync_delays)
        atexit.register(self._close_at_exit)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """Build a client from `CALLBACK_URL`, `CALLBACK_TOKEN` and `JOB_ID` (nothing else is
        read, except `TRAINER_SDK_SPOOL_DIR` for where undelivered events are kept)."""
        environ = os.environ if environ is None else environ
        missing = [name for name in (ENV_URL, ENV_TOKEN, ENV_JOB) if not environ.get(name)]
        if missing:
            raise ValueError(f"missing environment variable(s): {', '.join(missing)}")
        kwargs.setdefault("spool_dir", environ.get(ENV_SPOOL_DIR) or None)
        return cls(environ[ENV_URL], environ[ENV_TOKEN], environ[ENV_JOB], **kwargs)

    def __repr__(self) -> str:  # the token stays out of logs and tracebacks
        return f"<Client job {self.job_id} at {self.callback_url}>"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        try:
            if exc_type is not None and not self._finished and not _clean_exit(exc):
                message = "".join(traceback.format_exception(exc_type, exc, tb))
                self.fail(message)
        finally:
            self.close()
        return False

    # -- state -----------------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True once the platform answered a callback with a stop request (an operator
        cancelled the job): finish the current epoch and `complete()` (→ cancelled)."""
        return self._stop.is_set()

    @property
    def finished(self) -> bool:
        """True once `complete()` or `fail()` was called."""
        return self._finished

    @property
    def spool_path(self) -> Path | None:
        """Where events are kept while the platform is unreachable."""
        return self._sender.spool_path

    def pending(self) -> int:
        """Events accepted by the client and not delivered yet."""
        return self._sender.pending()

    # -- background callbacks ----------------------------------------------------------------

    def report_progress(self, epoch: int, metrics: Mapping[str, Any] | None, *,
                        total_epochs: int | None = None, step: int | None = None) -> None:
        """Queue one progress report and return at once (never waits for the network).
        `metrics` maps names to numbers (None: not measured; NaN/inf are kept)."""
        body: dict[str, Any] = {"current_epoch": _count(epoch, "epoch"),
                                "metrics": clean_metrics(metrics)}
        if total_epochs is not None:
            body["total_epochs"] = _count(total_epochs, "total_epochs", minimum=1)
        if step is not None:
            body["step"] = _count(step, "step")
        self._sender.submit("progress", self._path("callback/progress"), body)

    def log(self, lines: str | Iterable[str], log_type: str = "stdout") -> None:
        """Queue log lines; they are sent in batches (by count and by age)."""
        if not isinstance(log_type, str) or not LOG_TYPE.match(log_type):
            raise ValueError("log_type must be a short lowercase name such as 'stdout'")
        if isinstance(lines, str):
            lines = lines.splitlines()
        batch = []
        for line in lines:
            if not isinstance(line, str):
                raise TypeError(f"log lines must be str, got {type(line).__name__}")
            batch.append(line if len(line) <= MAX_LINE else line[:MAX_LINE - 1] + "…")
        if batch:
            self._sender.add_log_lines(self._path("callback/logs"), log_type, batch)

    def complete(self, final_metrics: Mapping[str, Any] | None = None,
                 best_checkpoint_path: str | None = None,
                 last_checkpoint_path: str | None = None, *, status: str | None = None,
                 timeout: float | None = None) -> bool:
        """Report the end of training and wait (up to `timeout`, default `close_timeout`)
        for everything queued to arrive. `status` defaults to "cancelled" after a stop
        request, else "completed". Returns True when it all arrived."""
        status = status or ("cancelled" if self.stop_requested else "completed")
        if status not in ("completed", "cancelled"):
            raise ValueError("status must be 'completed' or 'cancelled' (use fail())")
        body: dict[str, Any] = {"status": status,
                                "final_metrics": clean_metrics(final_metrics)}
        for name, value in (("best_checkpoint_path", best_checkpoint_path),
                            ("last_checkpoint_path", last_checkpoint_path)):
            if value is not None:
                body[name] = _path_text(value, name)
        return self._finish(body, timeout)

    def fail(self, error_message: str, *, timeout: float | None = None) -> bool:
        """Report the job failed with `error_message` (a traceback is fine; very long
        messages keep their end) and wait up to `timeout` (default `close_timeout`) for
        delivery."""
        message = str(error_message)
        if len(message) > MAX_ERROR_MESSAGE:
            message = "…" + message[-(MAX_ERROR_MESSAGE - 1):]
        return self._finish({"status": "failed", "error_message": message}, timeout)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued so far is delivered; False if `timeout` ran out."""
        return self._sender.flush(timeout)

    def close(self, timeout: float | None = None) -> bool:
        """Deliver what is queued (bounded by `timeout`, default `close_timeout`), keep the
        rest in the spool file, and release the connection. Safe to call twice."""
        with self._lock:
            if self._closed:
                return True
            self._closed = True
        atexit.unregister(self._close_at_exit)
        timeout = self.close_timeout if timeout is None else timeout
        try:
            return self._sender.close(timeout)
        finally:
            self._transport.close()

    # -- synchronous calls -------------------------------------------------------------------

    def send_validation(self, data: Mapping[str, Any], *, timeout: float | None = None
                        ) -> None:
        """POST one validation result (seed 003's ValidationCallbackRequest) and wait for the
        platform to accept it, retrying transient failures for up to `timeout` seconds.

        Raises `APIError` when the platform refuses the data (4xx other than 408/429): that
        is a bug in the caller's data. If the platform stays unreachable the result is
        handed to the background sender (spooled, delivered later) and a warning is logged.
        """
        if not isinstance(data, Mapping):
            raise TypeError("data must be a mapping (the ValidationCallbackRequest fields)")
        body = jsonable(dict(data))
        body.setdefault("job_id", self.job_id)
        if body["job_id"] != self.job_id:
            raise ValueError(f"data['job_id'] is {body['job_id']!r}, this client reports "
                             f"job {self.job_id}")
        for name in ("epoch", "task_type"):
            if name not in body:
                raise ValueError(f"data needs {name!r}")
        path, key = f"validation/jobs/{self.job_id}/results", new_key()
        deadline = time.monotonic() + (self.call_timeout if timeout is None else timeout)
        try:
            answer = self._transport.call(path, body, idempotency_key=key, deadline=deadline,
                                          **self._sync_delays)
        except APIError as exc:
            if not exc.transient:
                raise
            self._defer("validation", path, body, key, exc)
        except SDKError as exc:
            self._defer("validation", path, body, key, exc)
        else:
            self._on_answer({"kind": "validation"}, answer)

    def upload_checkpoint(self, path: str | os.PathLike, checkpoint_type: str, *,
                          epoch: int | None = None,
                          metrics: Mapping[str, Any] | None = None,
                          raise_errors: bool = False) -> str | None:
        """Upload a checkpoint file through a presigned URL and return its object URI.
        If the upload fails for good the error is logged and None returned (raised with
        `raise_errors=True`)."""
        if checkpoint_type not in CHECKPOINT_TYPES:
            raise ValueError(f"checkpoint_type must be one of {CHECKPOINT_TYPES}")
        info = local_file(path)
        fields: dict[str, Any] = {"checkpoint_type": checkpoint_type}
        if epoch is not None:
            fields["epoch"] = _count(epoch, "epoch")
        extra = {"metrics": clean_metrics(metrics)} if metrics else None
        return self._upload("checkpoint", info, fields, extra, raise_errors)

    def upload_artifact(self, path: str | os.PathLike, kind: str,
                        content_type: str | None = None, *,
                        raise_errors: bool = False) -> str | None:
        """Upload a file such as a plot (`kind` e.g. "validation_plot") and return its
        object URI; None (logged) if it fails for good, unless `raise_errors`."""
        if not isinstance(kind, str) or not kind:
            raise ValueError("kind must be a non-empty string")
        info = local_file(path)
        content_type = (content_type or mimetypes.guess_type(info.path.name)[0]
                        or "application/octet-stream")
        fields = {"kind": kind, "content_type": content_type}
        return self._upload("artifacts", info, fields, None, raise_errors)

    def dataset_url(self) -> str | None:
        """A presigned GET URL for the job's dataset (`dataset_uri` given at job creation),
        or None when the job has none. Raises `SDKError` if the platform cannot be asked."""
        try:
            answer = self._transport.get(self._path("dataset"))
        except APIError as exc:
            if exc.status == 404:
                return None
            raise
        return answer.get("download_url")

    # -- internals -------------------------------------------------------------------------

    def _path(self, suffix: str) -> str:
        return f"training/jobs/{self.job_id}/{suffix}"

    def _spool_path(self, spool_dir: str | os.PathLike | None) -> Path:
        base = Path(spool_dir) if spool_dir else Path(tempfile.gettempdir()) / "trainer-sdk-spool"
        digest = hashlib.sha256(self.callback_url.encode()).hexdigest()[:10]
        return base / f"job-{self.job_id}-{digest}.jsonl"

    def _finish(self, body: dict, timeout: float | None) -> bool:
        timeout = self.close_timeout if timeout is None else timeout
        with self._lock:
            if self._finished:
                log.warning("job %s already reported its end; %s ignored", self.job_id,
                            body["status"])
                return False
            self._finished = True
        self._sender.submit("completion", self._path("callback/completion"), body)
        delivered = self._sender.flush(timeout)
        if not delivered:
            log.warning("job %s: %s report not delivered within %.0f s; it stays queued",
                        self.job_id, body["status"], timeout)
        return delivered

    def _upload(self, resource: str, info, fields: dict, extra: dict | None,
                raise_errors: bool) -> str | None:
        try:
            done = self._uploader.upload(resource, info, fields, extra)
        except SDKError as exc:
            if raise_errors:
                raise
            log.error("upload of %s failed: %s", info.path, exc)
            return None
        self._on_answer({"kind": "upload"}, done)
        return done.get("s3_uri")

    def _defer(self, kind: str, path: str, body: dict, key: str, error: Exception) -> None:
        log.warning("%s not accepted yet (%s); it is queued and will be resent", kind, error)
        self._sender.submit(kind, path, body, key)

    def _on_answer(self, event: dict, answer: dict) -> None:
        if answer.get("stop_requested") and not self._stop.is_set():
            log.warning("job %s: the platform asked the trainer to stop", self.job_id)
            self._stop.set()

    def _on_refused(self, event: dict, error: APIError) -> None:
        kind = event.get("kind")
        if error.error_code == "JOB_FINISHED":
            status = error.details.get("status")
            log.warning("job %s has already finished (%s): %s event dropped", self.job_id,
                        status or "?", kind)
            if status == "cancelled":
                self._stop.set()
            return
        log.error("platform refused a %s event (%s); dropped. details: %s", kind, error,
                  error.details)

    def _close_at_exit(self) -> None:
        try:
            self.close(min(self.close_timeout, 10.0))
        except Exception:  # interpreter shutdown: nothing may escape
            pass


class LogHandler(logging.Handler):
    """A `logging.Handler` that ships formatted records through `client.log()`.

    `logging.getLogger("ultralytics").addHandler(LogHandler(client))`. The SDK's own records
    are skipped (they describe delivery problems and would queue behind them)."""

    def __init__(self, client: Client, log_type: str = "stdout",
                 level: int = logging.INFO) -> None:
        super().__init__(level)
        self.client = client
        self.log_type = log_type

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "trainer_sdk" or record.name.startswith("trainer_sdk."):
            return
        try:
            self.client.log(ANSI_ESCAPE.sub("", self.format(record)), self.log_type)
        except Exception:
            self.handleError(record)


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None]:
    """Validate and convert metric values to plain floats (numpy and 0-d tensors too)."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(f"metrics must be a mapping of name to number, got "
                        f"{type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise ValueError(f"at most {MAX_METRICS} metrics per call, got {len(metrics)}")
    clean: dict[str, float | None] = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name or len(name) > 250:
            raise ValueError(f"metric names must be non-empty strings of ≤ 250 characters, "
                             f"got {name!r}")
        clean[name] = _metric_value(name, value)
    return clean


def _metric_value(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or isinstance(value, (str, bytes)):
        raise TypeError(f"metric {name!r} must be a number or None, got {value!r}")
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "item"):  # numpy scalars, 0-d arrays and tensors
        try:
            return _metric_value(name, value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    raise TypeError(f"metric {name!r} must be a number or None, got {type(value).__name__}")


def jsonable(value: Any) -> Any:
    """Plain JSON types from numpy/torch containers and scalars (NaN/inf stay floats)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return jsonable(value.item())
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(f"cannot send a {type(value).__name__} as JSON")


def _count(value: Any, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ValueError(f"{name} must be ≥ {minimum}, got {number}")
    return number


def _job_id(value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    number = _count(value, "job_id", minimum=1)
    return number


def _path_text(value: Any, name: str) -> str:
    text = os.fspath(value) if isinstance(value, os.PathLike) else value
    if not isinstance(text, str) or not 0 < len(text) <= 1024:
        raise ValueError(f"{name} must be a string of 1-1024 characters")
    return text


def _clean_exit(exc: BaseException | None) -> bool:
    """A `sys.exit(0)` inside the block is not a failure."""
    return isinstance(exc, SystemExit) and exc.code in (None, 0)

