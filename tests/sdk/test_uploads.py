"""Uploads through presigned URLs, against a scripted platform whose URLs point back at
itself (standing in for the object store): a single PUT with exactly the signed headers,
and a multipart upload whose parts go in parallel, one of them failing once."""

from __future__ import annotations

import hashlib
import re

from tests.sdk.servers import PART, FakePlatform, Reply
from trainer_sdk import uploads


def test_multipart_upload_with_a_part_failing_once(scripted, make_client, tmp_path):
    FakePlatform(scripted, multipart=True)
    data = bytes(range(256)) * (4 * PART // 256) + b"tail" * 1000  # 4 full parts + a bit
    path = tmp_path / "best.pt"
    path.write_bytes(data)
    scripted.script("partNumber=3", [Reply(500, b"<Error>InternalError</Error>",
                                           headers={"Content-Type": "application/xml"})])
    client = make_client(f"{scripted.url}/api/v1", job_id=7, upload_workers=3)

    uri = client.upload_checkpoint(path, "best", epoch=4, metrics={"metrics/mAP50(B)": 0.5})

    assert uri == "s3://training/jobs/7/best.pt"
    ask = scripted.matching("/checkpoint/get-upload-url")[0]
    assert ask.json() == {"checkpoint_type": "best", "epoch": 4, "filename": "best.pt",
                          "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    puts = scripted.matching("/store/", "PUT")
    by_part: dict[int, list] = {}
    for put in puts:
        by_part.setdefault(int(re.search(r"partNumber=(\d+)", put.path).group(1)), []).append(put)
    assert sorted(by_part) == [1, 2, 3, 4, 5]
    # part 3 alone is sent again (PUTs are retried by the uploader, not the adapter)
    assert {n: len(reqs) for n, reqs in by_part.items()} == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1}
    reassembled = b"".join(by_part[n][-1].body for n in sorted(by_part))
    assert reassembled == data
    assert all(len(by_part[n][-1].body) == PART for n in (1, 2, 3, 4))
    assert all("Authorization" not in put.headers for put in puts)  # no platform token to S3

    done = scripted.matching("/checkpoint/upload-complete")[0].json()
    assert done["upload_id"] == "u1" and done["sha256"] == hashlib.sha256(data).hexdigest()
    assert done["metrics"] == {"metrics/mAP50(B)": 0.5}
    assert done["parts"] == [{"part_number": n, "etag": '"' + hashlib.md5(
        by_part[n][-1].body).hexdigest() + '"'} for n in range(1, 6)]


def test_single_put_sends_exactly_the_signed_headers(scripted, make_client, tmp_path):
    FakePlatform(scripted, multipart=False)
    path = tmp_path / "confusion matrix (normalized).png"
    path.write_bytes(b"\x89PNG fake image")
    client = make_client(f"{scripted.url}/api/v1", job_id=7)

    uri = client.upload_artifact(path, "validation_plot")

    ask = scripted.matching("/artifacts/get-upload-url")[0].json()
    assert ask["filename"] == "confusion_matrix__normalized_.png"  # what the platform accepts
    assert ask["content_type"] == "image/png" and ask["kind"] == "validation_plot"
    assert uri == f"s3://training/jobs/7/{ask['filename']}"
    (put,) = scripted.matching("/store/", "PUT")
    assert put.body == path.read_bytes()
    assert put.headers["x-amz-checksum-sha256"] == "base64-of-the-digest"
    assert put.headers["Content-Length"] == str(len(path.read_bytes()))
    assert put.headers["Content-Type"] == "image/png"
    assert "Authorization" not in put.headers
    assert scripted.matching("/artifacts/get-upload-url")[0].headers["Authorization"] == (
        "Bearer token-for-tests")
    done = scripted.matching("/artifacts/upload-complete")[0].json()
    assert "parts" not in done


def test_a_store_refusal_is_not_retried_and_returns_none(scripted, make_client, tmp_path,
                                                         caplog):
    FakePlatform(scripted, multipart=False)
    scripted.script("/store/", [Reply(403, b"<Error><Code>SignatureDoesNotMatch</Code></Error>",
                                      headers={"Content-Type": "application/xml"})])
    path = tmp_path / "last.pt"
    path.write_bytes(b"weights")
    client = make_client(f"{scripted.url}/api/v1", job_id=7)
    assert client.upload_checkpoint(path, "last") is None
    assert len(scripted.matching("/store/", "PUT")) == 1
    assert not scripted.matching("/upload-complete")
    assert "SignatureDoesNotMatch" in caplog.text
    assert "X-Amz-Signature" not in caplog.text  # presigned query strings stay out of logs


def test_a_large_file_is_hashed_while_its_parts_upload(scripted, make_client, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(uploads, "HASH_FIRST_BYTES", PART)  # "large" at test sizes
    FakePlatform(scripted, multipart=True)
    data = b"weights!" * (3 * PART // 8)
    path = tmp_path / "last.pt"
    path.write_bytes(data)
    client = make_client(f"{scripted.url}/api/v1", job_id=7)

    assert client.upload_checkpoint(path, "last") == "s3://training/jobs/7/last.pt"

    ask = scripted.matching("/checkpoint/get-upload-url")[0].json()
    assert ask == {"checkpoint_type": "last", "filename": "last.pt", "size": len(data)}
    assert len(scripted.matching("/store/", "PUT")) == 3
    done = scripted.matching("/checkpoint/upload-complete")[0].json()
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert [part["part_number"] for part in done["parts"]] == [1, 2, 3]


def test_part_uploads_default_to_two_per_core_and_at_most_eight(monkeypatch):
    for cores, expected in ((1, 2), (2, 4), (4, 8), (64, 8), (None, 2)):
        monkeypatch.setattr(uploads.os, "cpu_count", lambda cores=cores: cores)
        assert uploads.default_workers() == expected
