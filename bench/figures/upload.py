"""Checkpoint upload: the platform's presigned path against a raw S3 upload and MLflow's own.

For each size (50 MiB: one signed PUT; 512 MiB: multipart above the 64 MiB threshold), each
round times, in rotating order:

- platform: get-upload-url + the PUT(s) (parts in parallel) + upload-complete — what a
  trainer waits for. The time until the worker has verified it is reported too (not a
  target: the trainer does not wait for it).
- raw: boto3 `upload_file` with the store's credentials (its default multipart settings):
  the ceiling — what a trainer holding credentials could do.
- mlflow: `MlflowClient.log_artifact` through `mlflow server --serve-artifacts`.

Each path uploads the file once untimed first: in the full runs the first round was slow
for all three (50 MiB: 0.57–0.99 s against 0.25–0.55 s later), and the ratio of two cold
uploads measures the store warming up, not the path.

The file is random (incompressible) and its SHA-256 computed before timing (a trainer hashes
while it writes the checkpoint; all three paths read the same bytes from the page cache).
Ratios are per round, `vs_raw` = raw s ÷ platform s (1.0 = as fast as raw), `vs_mlflow` =
MLflow s ÷ platform s (> 1: the platform is faster).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.context import BenchContext
from bench.platform_client import JobCredentials, experiment_name
from bench.progress import log
from bench.results import FigureSpec, Target, at_least
from bench.settings import BenchSettings
from bench.stats import median

NAMES = frozenset({"upload"})
MIB = 1024 * 1024
PATHS = ("platform", "raw", "mlflow")
VERIFY_TIMEOUT_S = 300


def needs(selected: frozenset[str]) -> set[str]:
    return {"mlflow", "workers"}


def label(size_mib: int) -> str:
    return f"{size_mib}MiB"


def figures(settings: BenchSettings) -> list[FigureSpec]:
    specs = []
    for size in settings.upload_sizes_mib:
        prefix = f"upload.{label(size)}"
        specs += [
            FigureSpec(f"{prefix}.platform_s", "s",
                       f"{size} MiB: get-upload-url + presigned PUT(s) + upload-complete",
                       f"{prefix}.raw_s, {prefix}.mlflow_s"),
            FigureSpec(f"{prefix}.raw_s", "s", f"{size} MiB: boto3 upload_file with credentials",
                       "the ceiling"),
            FigureSpec(f"{prefix}.mlflow_s", "s",
                       f"{size} MiB: MLflow log_artifact via --serve-artifacts", "the alternative"),
            FigureSpec(f"{prefix}.vs_raw", "×", "raw s ÷ platform s (1 = as fast as raw)",
                       f"{prefix}.raw_s"),
            FigureSpec(f"{prefix}.vs_mlflow", "×", "MLflow s ÷ platform s (> 1: faster)",
                       f"{prefix}.mlflow_s"),
            FigureSpec(f"{prefix}.platform_verified_s", "s",
                       f"{size} MiB: until the worker has verified it (informational)"),
            FigureSpec(f"{prefix}.sha256_s", "s",
                       f"{size} MiB: reading and hashing the file, as the SDK does before "
                       "asking (not in platform_s; informational)"),
        ]
    return specs


def targets(settings: BenchSettings) -> list[Target]:
    result = []
    for size in settings.upload_sizes_mib:
        prefix = f"upload.{label(size)}"
        result += [at_least(f"{prefix}.vs_raw", 0.9), at_least(f"{prefix}.vs_mlflow", 1.0)]
    return result


def hash_seconds(path: Path) -> float:
    """What the trainer SDK spends reading and hashing a file before it asks for an upload
    (the page cache is warm, as it is right after a checkpoint was written)."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return time.perf_counter() - started


def make_file(directory: Path, size_mib: int) -> tuple[Path, str]:
    """Random bytes (a compressible file would flatter every path) and their SHA-256."""
    path = directory / f"checkpoint-{size_mib}mib.pt"
    digest = hashlib.sha256()
    with open(path, "wb") as fh:
        for _ in range(size_mib):
            chunk = os.urandom(MIB)
            digest.update(chunk)
            fh.write(chunk)
    return path, digest.hexdigest()


class Uploaders:
    """The three ways to get a file into the store, each returning seconds taken."""

    def __init__(self, ctx: BenchContext, job: JobCredentials) -> None:
        from mlflow.tracking import MlflowClient

        self.ctx = ctx
        self.job = job
        self.api = ctx.stack.api_url + f"/api/v1/training/jobs/{job.job_id}"
        self.auth = {"Authorization": f"Bearer {job.token}"}
        self.s3 = _boto_client(ctx)
        self.mlflow = MlflowClient(ctx.stack.mlflow_uri)
        experiment = self.mlflow.create_experiment(experiment_name("artifacts"))
        self.mlflow_run = self.mlflow.create_run(experiment).info.run_id
        self.epochs = iter(range(1, 1_000_000))
        self.last_upload_id = ""

    def platform(self, path: Path, sha256: str) -> float:
        size = path.stat().st_size
        session = requests.Session()
        started = time.perf_counter()
        response = session.post(f"{self.api}/checkpoint/get-upload-url", headers=self.auth,
                                timeout=60, json={
                                    "checkpoint_type": "epoch", "epoch": next(self.epochs),
                                    "filename": path.name, "size": size, "sha256": sha256})
        response.raise_for_status()
        body = response.json()
        complete = {"upload_id": body["upload_id"], "sha256": sha256}
        if "upload_url" in body:
            with open(path, "rb") as fh:
                put = session.put(body["upload_url"], data=fh, headers=body["headers"],
                                  timeout=600)
            put.raise_for_status()
        else:
            complete["parts"] = self._put_parts(path, size, body["part_size"], body["parts"])
        done = session.post(f"{self.api}/checkpoint/upload-complete", headers=self.auth,
                            json=complete, timeout=60)
        done.raise_for_status()
        self.last_upload_id = body["upload_id"]
        return time.perf_counter() - started

    def _put_parts(self, path: Path, size: int, part_size: int, parts: list[dict]) -> list[dict]:
        def put(part: dict) -> dict:
            offset = (part["part_number"] - 1) * part_size
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read(min(part_size, size - offset))
            response = requests.put(part["url"], data=data, timeout=600)
            response.raise_for_status()
            return {"part_number": part["part_number"], "etag": response.headers["ETag"]}

        with ThreadPoolExecutor(self.ctx.settings.upload_part_threads) as pool:
            return list(pool.map(put, parts))

    def wait_verified(self, upload_id: str) -> float:
        """Seconds from now until the worker has verified (or rejected) the upload."""
        started = time.perf_counter()
        deadline = time.monotonic() + VERIFY_TIMEOUT_S
        while time.monotonic() < deadline:
            for item in self.ctx.operator.checkpoints(self.job.job_id):
                if item["upload_id"] == upload_id and item["status"] != "pending":
                    if item["status"] != "verified":
                        raise RuntimeError(f"upload {upload_id} {item['status']}: "
                                           f"{item.get('reason')}")
                    return time.perf_counter() - started
            time.sleep(0.05)
        raise RuntimeError(f"upload {upload_id} not verified within {VERIFY_TIMEOUT_S} s")

    def raw(self, path: Path, sha256: str) -> float:
        started = time.perf_counter()
        self.s3.upload_file(str(path), self.ctx.stack.s3.bucket,
                            f"bench/raw/{next(self.epochs)}/{path.name}")
        return time.perf_counter() - started

    def mlflow_artifact(self, path: Path, sha256: str) -> float:
        started = time.perf_counter()
        self.mlflow.log_artifact(self.mlflow_run, str(path), artifact_path=f"r{next(self.epochs)}")
        return time.perf_counter() - started


def _boto_client(ctx: BenchContext):
    import boto3
    from botocore.config import Config as BotoConfig

    s3 = ctx.stack.s3
    return boto3.client("s3", endpoint_url=s3.endpoint_url, aws_access_key_id=s3.access_key,
                        aws_secret_access_key=s3.secret_key, region_name=s3.region,
                        config=BotoConfig(s3={"addressing_style": "path"}))


def run(ctx: BenchContext, selected: frozenset[str]) -> None:
    settings, stack = ctx.settings, ctx.stack
    stack.start_mlflow()
    stack.start_workers()
    stack.discard_backlog()
    job = ctx.own_job("uploads")
    uploaders = Uploaders(ctx, job)
    directory = stack.workdir / "uploads"
    directory.mkdir(exist_ok=True)
    for size in settings.upload_sizes_mib:
        path, sha256 = make_file(directory, size)
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        verified: list[float] = []
        hashing: list[float] = []
        methods = {"platform": uploaders.platform, "raw": uploaders.raw,
                   "mlflow": uploaders.mlflow_artifact}
        for name in PATHS:  # untimed: the store's first write of a size is slow for all
            methods[name](path, sha256)
        uploaders.wait_verified(uploaders.last_upload_id)
        for round_no in range(settings.upload_rounds):
            hashing.append(hash_seconds(path))
            order = PATHS[round_no % 3:] + PATHS[:round_no % 3]
            for name in order:
                times[name].append(methods[name](path, sha256))
                if name == "platform":
                    verified.append(times[name][-1] +
                                    uploaders.wait_verified(uploaders.last_upload_id))
            log.info("round %d/%d upload %d MiB: platform %.2f s (verified after %.2f s), "
                     "raw %.2f s, MLflow %.2f s", round_no + 1, settings.upload_rounds, size,
                     times["platform"][-1], verified[-1], times["raw"][-1],
                     times["mlflow"][-1])
        path.unlink()
        prefix = f"upload.{label(size)}"
        for name in PATHS:
            ctx.results.measured(f"{prefix}.{name}_s", times[name],
                                 note=_mbps(size, median(times[name])))
        ctx.results.measured(f"{prefix}.vs_raw", [r / p for r, p in
                                                  zip(times["raw"], times["platform"],
                                                      strict=True)])
        ctx.results.measured(f"{prefix}.vs_mlflow", [m / p for m, p in
                                                     zip(times["mlflow"], times["platform"],
                                                         strict=True)])
        ctx.results.measured(f"{prefix}.platform_verified_s", verified,
                             note="upload-complete → verified by the worker included")
        ctx.results.measured(f"{prefix}.sha256_s", hashing, note=_mbps(size, median(hashing)))


def _mbps(size_mib: int, seconds: float | None) -> str:
    return f"{size_mib * MIB / 1e6 / seconds:,.0f} MB/s" if seconds else ""
