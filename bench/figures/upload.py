"""Checkpoint upload: the platform's presigned path against a raw S3 upload and MLflow's own.

For each size (50 MiB: one signed PUT; 256 and 512 MiB: multipart above the 64 MiB
threshold), each round times, in rotating order:

- platform: the trainer SDK's upload (`trainer_sdk.uploads.Uploader`, its defaults) —
  get-upload-url, the PUT(s), upload-complete and the SHA-256 the SDK computes (before the
  request up to 64 MiB, beside the part PUTs above): what a trainer waits for. The time
  until the worker has verified it is reported too (not a target: the trainer does not
  wait for it).
- raw: boto3 `upload_file` with the store's credentials (its default multipart settings):
  the ceiling — what a trainer holding credentials could do.
- mlflow: `MlflowClient.log_artifact` through `mlflow server --serve-artifacts`. Below
  500 MB (MLflow's MLFLOW_MULTIPART_UPLOAD_MINIMUM_FILE_SIZE) the file goes through the
  tracking server, which spools it and uploads it with boto3; from 500 MB on, the client
  uploads 10 MiB parts straight to the store through presigned URLs (the server advertises
  multipart support), as the platform's SDK does.

Each path uploads the file once untimed first: in the full runs the first round was slow
for all three (50 MiB: 0.57–0.99 s against 0.25–0.55 s later), and the ratio of two cold
uploads measures the store warming up, not the path.

The file is random (incompressible); all three paths read the same bytes from the page
cache, as right after a checkpoint was written.
Ratios are per round, `vs_raw` = raw s ÷ platform s (1.0 = as fast as raw), `vs_mlflow` =
MLflow s ÷ platform s (> 1: the platform is faster).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from bench.context import BenchContext
from bench.platform_client import JobCredentials, experiment_name
from bench.progress import log
from bench.results import FigureSpec, Target, at_least
from bench.settings import BenchSettings
from bench.stats import median
from trainer_sdk.transport import Transport
from trainer_sdk.uploads import Uploader, local_file

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
                       f"{size} MiB: the trainer SDK's upload (hash, presigned PUTs, "
                       "upload-complete)",
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
                       f"{size} MiB: reading and hashing the file alone (in platform_s: "
                       "first up to 64 MiB, beside the parts above; informational)"),
        ]
    return specs


def targets(settings: BenchSettings) -> list[Target]:
    result = []
    for size in settings.upload_sizes_mib:
        prefix = f"upload.{label(size)}"
        result += [at_least(f"{prefix}.vs_raw", 0.9), at_least(f"{prefix}.vs_mlflow", 1.0)]
    return result


def hash_seconds(path: Path) -> float:
    """What reading and hashing the file costs on its own (the page cache is warm)."""
    started = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(MIB):
            digest.update(chunk)
    return time.perf_counter() - started


def make_file(directory: Path, size_mib: int) -> Path:
    """Random bytes: a compressible file would flatter every path."""
    path = directory / f"checkpoint-{size_mib}mib.pt"
    with open(path, "wb") as fh:
        for _ in range(size_mib):
            fh.write(os.urandom(MIB))
    return path


class Uploaders:
    """The three ways to get a file into the store, each returning seconds taken."""

    def __init__(self, ctx: BenchContext, job: JobCredentials) -> None:
        from mlflow.tracking import MlflowClient

        self.ctx = ctx
        self.job = job
        self.sdk = Uploader(Transport(ctx.stack.api_url + "/api/v1", job.token), job.job_id)
        self.s3 = _boto_client(ctx)
        self.mlflow = MlflowClient(ctx.stack.mlflow_uri)
        experiment = self.mlflow.create_experiment(experiment_name("artifacts"))
        self.mlflow_run = self.mlflow.create_run(experiment).info.run_id
        self.epochs = iter(range(1, 1_000_000))
        self.last_upload_id = ""

    def platform(self, path: Path) -> float:
        started = time.perf_counter()
        done = self.sdk.upload("checkpoint", local_file(path),
                               {"checkpoint_type": "epoch", "epoch": next(self.epochs)})
        elapsed = time.perf_counter() - started
        self.last_upload_id = done["upload_id"]
        return elapsed

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

    def raw(self, path: Path) -> float:
        started = time.perf_counter()
        self.s3.upload_file(str(path), self.ctx.stack.s3.bucket,
                            f"bench/raw/{next(self.epochs)}/{path.name}")
        return time.perf_counter() - started

    def mlflow_artifact(self, path: Path) -> float:
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
        path = make_file(directory, size)
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        verified: list[float] = []
        hashing: list[float] = []
        methods = {"platform": uploaders.platform, "raw": uploaders.raw,
                   "mlflow": uploaders.mlflow_artifact}
        for name in PATHS:  # untimed: the store's first write of a size is slow for all
            methods[name](path)
        uploaders.wait_verified(uploaders.last_upload_id)
        for round_no in range(settings.upload_rounds):
            hashing.append(hash_seconds(path))
            order = PATHS[round_no % 3:] + PATHS[:round_no % 3]
            for name in order:
                times[name].append(methods[name](path))
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
