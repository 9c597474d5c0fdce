"""Checkpoint and artifact uploads through presigned URLs: the trainer never holds an
object-store credential.

1. Stat the file; a small one (a single PUT at the platform's default threshold) is hashed
   first, so its sha256 goes into the signed PUT and the store checks it on write. A large
   one is hashed on a thread of its own while its parts upload: the platform needs that
   sha256 only at upload-complete, and a trainer on a node with cores to spare then waits
   for the transfer alone, not the hash and then the transfer.
2. Ask the platform for an upload (`…/get-upload-url`, with the size). The answer is either
   one presigned PUT (`upload_url` + the exact `headers` to send, which include the signed
   length and, when it was declared, `x-amz-checksum-sha256`) or, above the platform's
   threshold, a multipart upload (`part_size` + one presigned URL per part).
3. PUT the bytes. Parts go in parallel on a bounded pool; each part is retried on its own
   (a fresh read of its byte range every time) and its `ETag` is kept.
4. Tell the platform (`…/upload-complete` with sha256 and the part ETags); a worker verifies
   the object and the answer carries its URI.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer_sdk.errors import APIError, TransportError
from trainer_sdk.sender import new_key
from trainer_sdk.transport import Transport, retry_delay

log = logging.getLogger("trainer_sdk")

CHUNK = 1 << 20
SMALL_FILE = 8 << 20
HASH_FIRST_BYTES = 64 << 20  # the platform's default MULTIPART_THRESHOLD_BYTES


@dataclass(frozen=True)
class FileInfo:
    path: Path
    size: int


def local_file(path: str | os.PathLike) -> FileInfo:
    """The file to upload and its size; FileNotFoundError unless it is a regular file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return FileInfo(path, path.stat().st_size)


def file_sha256(path: Path) -> str:
    """Read in 1 MiB chunks: hashlib releases the GIL on each, so part PUTs go on beside it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_in_background(path: Path) -> Future[str]:
    """The file's sha256 on a thread of its own, which ends with the hash: a failed upload
    does not wait for it."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer_sdk-sha256")
    try:
        return pool.submit(file_sha256, path)
    finally:
        pool.shutdown(wait=False)


def default_workers() -> int:
    """Parallel part PUTs: two per core, at most 8 (MLflow's rule for its own multipart
    uploads). More is not faster against a store that is CPU-bound: on 2 cores beside
    SeaweedFS, 4 parts at a time finished 512 MiB 4–7 % sooner than 8 (README, uploads)."""
    return min(8, 2 * (os.cpu_count() or 1))


def safe_filename(name: str) -> str:
    """A name the platform accepts (letters, digits, '.', '_', '-'; at most 128; starting
    with a letter or digit): other characters become '_', the extension is kept."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "file"
    if len(cleaned) > 128:
        _, dot, ext = cleaned.rpartition(".")
        ext = ("." + ext)[:16] if dot else ""
        cleaned = cleaned[:128 - len(ext)] + ext
    return cleaned


class Uploader:
    """Runs one upload at a time per call; parts of a multipart upload in parallel."""

    def __init__(self, transport: Transport, job_id: int, *, workers: int | None = None,
                 part_attempts: int = 5, call_timeout: float = 30.0,
                 base_delay: float = 0.5, max_delay: float = 15.0,
                 cooldown: float = 120.0) -> None:
        self._transport = transport
        self._job_id = job_id
        self.workers = max(1, int(workers or default_workers()))
        self.part_attempts = max(1, int(part_attempts))
        self.call_timeout = float(call_timeout)
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.cooldown = cooldown
        self._degraded_until = 0.0

    def upload(self, resource: str, info: FileInfo, fields: dict[str, Any],
               complete_fields: dict[str, Any] | None = None) -> dict:
        """Upload `info.path` as a `resource` ("checkpoint" or "artifacts"); returns the
        upload-complete answer with `s3_uri` set. Raises SDKError subclasses."""
        base = f"training/jobs/{self._job_id}/{resource}"
        request = {**fields, "filename": safe_filename(info.path.name), "size": info.size}
        if info.size <= HASH_FIRST_BYTES:
            request["sha256"] = file_sha256(info.path)
            hashing = None
        else:
            hashing = hash_in_background(info.path)
        grant = self._call(f"{base}/get-upload-url", request)
        started = time.monotonic()
        if grant.get("upload_url"):
            self._put_single(grant["upload_url"], grant.get("headers") or {}, info)
            parts = None
        elif grant.get("parts"):
            parts = self._put_parts(grant, info)
        else:
            raise APIError(200, "BAD_UPLOAD_GRANT",
                           "get-upload-url answered with neither upload_url nor parts",
                           {"keys": sorted(grant)})
        body = {"upload_id": grant["upload_id"],
                "sha256": hashing.result() if hashing else request["sha256"]}
        log.info("uploaded %s (%d bytes) in %.1f s", info.path.name, info.size,
                 time.monotonic() - started)
        if parts is not None:
            body["parts"] = parts
        body.update(complete_fields or {})
        done = self._call(f"{base}/upload-complete", body)
        done.setdefault("s3_uri", grant.get("s3_uri"))
        return done

    def _call(self, path: str, body: dict) -> dict:
        """POST with retries until `call_timeout`; after a call failed for good, the next
        ones for `cooldown` seconds get a single attempt, so a broken platform costs one
        wait, not one per plot."""
        now = time.monotonic()
        deadline = now if now < self._degraded_until else now + self.call_timeout
        try:
            answer = self._transport.call(path, body, idempotency_key=new_key(),
                                          deadline=deadline, base_delay=self.base_delay,
                                          max_delay=self.max_delay)
        except APIError as exc:
            if exc.transient:
                self._degraded_until = time.monotonic() + self.cooldown
            raise
        except TransportError:
            self._degraded_until = time.monotonic() + self.cooldown
            raise
        self._degraded_until = 0.0
        return answer

    def _put_single(self, url: str, headers: dict[str, str], info: FileInfo) -> None:
        def attempt() -> None:
            if info.size <= SMALL_FILE:  # bytes: also avoids chunked encoding for 0 bytes
                self._transport.put(url, info.path.read_bytes(), dict(headers))
                return
            with open(info.path, "rb") as handle:  # streamed; a retry reopens it
                self._transport.put(url, handle, dict(headers))
        self._retry(attempt, f"{info.path.name}")

    def _put_parts(self, grant: dict, info: FileInfo) -> list[dict]:
        part_size = int(grant["part_size"])
        parts = sorted(grant["parts"], key=lambda p: int(p["part_number"]))
        if part_size <= 0 or (len(parts) - 1) * part_size >= max(info.size, 1):
            raise APIError(200, "BAD_UPLOAD_GRANT",
                           f"{len(parts)} parts of {part_size} bytes do not fit "
                           f"{info.size} bytes", {})

        def put_part(part: dict) -> dict:
            number = int(part["part_number"])
            start = (number - 1) * part_size
            length = max(0, min(part_size, info.size - start))

            def attempt() -> str:
                with open(info.path, "rb") as handle:
                    handle.seek(start)
                    data = handle.read(length)
                response = self._transport.put(part["url"], data, dict(part.get("headers") or {}))
                etag = response.headers.get("ETag")
                if not etag:
                    raise TransportError(f"part {number}: the object store sent no ETag")
                return etag

            etag = self._retry(attempt, f"{info.path.name} part {number}/{len(parts)}")
            return {"part_number": number, "etag": etag}

        with ThreadPoolExecutor(max_workers=min(self.workers, len(parts)),
                                thread_name_prefix="trainer_sdk-upload") as pool:
            return list(pool.map(put_part, parts))

    def _retry(self, attempt, what: str):
        """Run `attempt()` up to `part_attempts` times; transient errors back off
        (honouring Retry-After), others raise at once."""
        for number in range(1, self.part_attempts + 1):
            try:
                return attempt()
            except (APIError, TransportError) as error:
                delay = retry_delay(error, number, self.base_delay, self.max_delay)
                if delay is None or number == self.part_attempts:
                    raise
                log.warning("upload of %s failed (%s); attempt %d of %d in %.1f s", what,
                            error, number + 1, self.part_attempts, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")
