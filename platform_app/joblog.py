"""Pipeline logging: every line carries the job id so one job's story can be grepped."""

from __future__ import annotations

import logging


class JobLogger(logging.LoggerAdapter):
    def process(self, msg, kwargs):
        return f"[job {self.extra['job_id']}] {msg}", kwargs


def job_logger(name: str, job_id: int) -> JobLogger:
    return JobLogger(logging.getLogger(name), {"job_id": job_id})
