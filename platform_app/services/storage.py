"""The object store (MinIO in production, SeaweedFS's S3 gateway here, or AWS S3).

The `minio` client does the server-side work (bucket, stat, streaming reads, deletes). boto3
does what minio-py 7.2 has no public API for: presigning a PUT with a signed Content-Length
and `x-amz-checksum-sha256` (so the store itself refuses any other body — minio's
`presigned_put_object` signs only the host), and multipart uploads with one presigned URL
per part (minio-py reaches those only through private methods). Presigning is offline and
uses the endpoint trainers reach (`S3_PUBLIC_ENDPOINT_URL`), since the signed host must match.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import boto3
import urllib3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError
from minio import Minio
from minio.error import MinioException, S3Error

from platform_app.metrics import sink_call
from platform_app.services.errors import SinkRejected, SinkUnavailable

READ_CHUNK = 8 * 1024 * 1024
MISSING_OBJECT = ("NoSuchKey", "NoSuchObject", "ResourceNotFound", "404")


class StoreRefused(SinkRejected):
    """The store answered with an S3 error code (4xx): the request itself is wrong."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"object store refused: {code}: {message}")
        self.code = code


@contextmanager
def _classified(action: str) -> Iterator[None]:
    try:
        with sink_call("object_store", action):
            yield
    except S3Error as exc:
        raise StoreRefused(exc.code or "S3Error", f"{action}: {exc.message}") from exc
    except ClientError as exc:
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
        if status >= 500:
            raise SinkUnavailable(f"object store failed to {action}: {exc}") from exc
        raise StoreRefused(str(error.get("Code", status)), f"{action}: {error.get('Message')}"
                           ) from exc
    except (MinioException, BotoCoreError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise SinkUnavailable(f"object store unreachable, could not {action}: {exc}") from exc


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


@dataclass(frozen=True)
class PresignedPut:
    url: str
    headers: dict[str, str]


def sha256_b64(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


class ObjectStore:
    def __init__(self, endpoint_url: str, access_key: str, secret_key: str, bucket: str,
                 region: str, public_endpoint_url: str | None = None) -> None:
        parts = urlsplit(endpoint_url)
        self.bucket = bucket
        self.minio = Minio(parts.netloc, access_key=access_key, secret_key=secret_key,
                           secure=parts.scheme == "https", region=region,
                           http_client=urllib3.PoolManager(
                               timeout=urllib3.Timeout(connect=3, read=30),
                               retries=urllib3.Retry(total=2, backoff_factor=0.2)))
        boto_config = BotoConfig(signature_version="s3v4", s3={"addressing_style": "path"},
                                 connect_timeout=3, read_timeout=30,
                                 retries={"max_attempts": 2, "mode": "standard"},
                                 request_checksum_calculation="when_required",
                                 response_checksum_validation="when_required")
        session = boto3.session.Session(aws_access_key_id=access_key,
                                        aws_secret_access_key=secret_key, region_name=region)
        self.s3 = session.client("s3", endpoint_url=endpoint_url, config=boto_config)
        self.presigner = session.client("s3", endpoint_url=public_endpoint_url or endpoint_url,
                                        config=boto_config)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, uri: str) -> str | None:
        """The key of an `s3://<our bucket>/…` URI; None for anything else."""
        prefix = f"s3://{self.bucket}/"
        return uri[len(prefix):] if uri.startswith(prefix) else None

    def ensure_bucket(self) -> bool:
        """Create the bucket if missing; True if it was created."""
        with _classified("create the bucket"):
            if self.minio.bucket_exists(self.bucket):
                return False
            self.minio.make_bucket(self.bucket)
            return True

    # --- presigning (offline: no request is made) ----------------------------------------

    def presign_put(self, key: str, size: int, sha256_hex: str | None, content_type: str,
                    expires_s: int) -> PresignedPut:
        params = {"Bucket": self.bucket, "Key": key, "ContentLength": size,
                  "ContentType": content_type}
        headers = {"Content-Length": str(size), "Content-Type": content_type}
        if sha256_hex:
            params["ChecksumSHA256"] = headers["x-amz-checksum-sha256"] = sha256_b64(sha256_hex)
        url = self.presigner.generate_presigned_url("put_object", Params=params,
                                                    ExpiresIn=expires_s)
        return PresignedPut(url, headers)

    def presign_part(self, key: str, s3_upload_id: str, part_number: int, size: int,
                     expires_s: int) -> PresignedPut:
        url = self.presigner.generate_presigned_url(
            "upload_part", ExpiresIn=expires_s,
            Params={"Bucket": self.bucket, "Key": key, "UploadId": s3_upload_id,
                    "PartNumber": part_number, "ContentLength": size})
        return PresignedPut(url, {"Content-Length": str(size)})

    def presign_get(self, key: str, expires_s: int) -> str:
        return self.presigner.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s)

    # --- multipart -------------------------------------------------------------------------

    def create_multipart(self, key: str, content_type: str) -> str:
        with _classified("start a multipart upload"):
            return self.s3.create_multipart_upload(Bucket=self.bucket, Key=key,
                                                   ContentType=content_type)["UploadId"]

    def complete_multipart(self, key: str, s3_upload_id: str, parts: list[dict]) -> None:
        """Idempotent: a repeat after success finds the upload gone and the object there."""
        ordered = sorted(parts, key=lambda p: p["part_number"])
        try:
            with _classified("complete the multipart upload"):
                self.s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=s3_upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": p["part_number"],
                                                "ETag": p["etag"]} for p in ordered]})
        except StoreRefused as exc:
            if exc.code != "NoSuchUpload" or self.stat(key) is None:
                raise

    def abort_multipart(self, key: str, s3_upload_id: str) -> None:
        try:
            with _classified("abort the multipart upload"):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key,
                                               UploadId=s3_upload_id)
        except StoreRefused as exc:
            if exc.code != "NoSuchUpload":
                raise

    def multipart_exists(self, key: str, s3_upload_id: str) -> bool:
        try:
            with _classified("list the upload's parts"):
                self.s3.list_parts(Bucket=self.bucket, Key=key, UploadId=s3_upload_id)
            return True
        except StoreRefused as exc:
            if exc.code == "NoSuchUpload":
                return False
            raise

    # --- objects ---------------------------------------------------------------------------

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            with _classified("stat the object"):
                info = self.minio.stat_object(self.bucket, key)
        except StoreRefused as exc:
            if exc.code in MISSING_OBJECT:
                return None
            raise
        return ObjectInfo(size=info.size or 0, etag=(info.etag or "").strip('"'))

    def stored_sha256(self, key: str) -> str | None:
        """The SHA-256 the store verified at upload time (signed-checksum PUTs), if kept."""
        with _classified("read the object's checksum"):
            head = self.s3.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        checksum = head.get("ChecksumSHA256")
        if not checksum or "-" in checksum:  # "…-N": a checksum of part checksums
            return None
        return base64.b64decode(checksum).hex()

    def sha256(self, key: str) -> str:
        """Hash the object by streaming it: multipart ETags are not content hashes."""
        digest = hashlib.sha256()
        with _classified("read the object"):
            response = self.minio.get_object(self.bucket, key)
            try:
                for chunk in response.stream(READ_CHUNK):
                    digest.update(chunk)
            finally:
                response.close()
                response.release_conn()
        return digest.hexdigest()

    def remove(self, key: str) -> None:
        with _classified("remove the object"):
            self.minio.remove_object(self.bucket, key)
