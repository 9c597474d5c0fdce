"""Optional: log lines also go to Grafana Loki's push API, labelled by job and log type.

Pushed by the logs projection before it records the lines, so a failed push is retried by
the queue and nothing is lost; a repeated push is harmless because Loki drops entries whose
stream, timestamp and line are identical — which is why each line's timestamp is derived
from the acceptance time plus its position, not the time of the push.
"""

from __future__ import annotations

import requests

from platform_app.metrics import sink_call
from platform_app.services.errors import SinkRejected, SinkUnavailable

PUSH_PATH = "/loki/api/v1/push"


def push_payload(job_id: int, log_type: str, lines: list[str], accepted_ms: int) -> dict:
    base_ns = accepted_ms * 1_000_000
    return {"streams": [{
        "stream": {"job_id": str(job_id), "log_type": log_type, "source": "training"},
        "values": [[str(base_ns + seq), line] for seq, line in enumerate(lines)],
    }]}


def push(loki_url: str, job_id: int, log_type: str, lines: list[str], accepted_ms: int) -> None:
    body = push_payload(job_id, log_type, lines, accepted_ms)
    try:
        with sink_call("loki", "push"):
            response = requests.post(loki_url.rstrip("/") + PUSH_PATH, json=body, timeout=10)
    except requests.RequestException as exc:
        raise SinkUnavailable(f"Loki unreachable: {exc}") from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise SinkUnavailable(f"Loki answered {response.status_code}: {response.text[:200]}")
    if response.status_code >= 400:
        raise SinkRejected(f"Loki refused the push ({response.status_code}): "
                           f"{response.text[:200]}")
