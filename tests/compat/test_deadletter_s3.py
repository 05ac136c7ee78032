"""Dead letters in S3-compatible storage (issue 4): Herald started with
`--dead-letter-url s3://BUCKET/PREFIX` writes Azure's blob layout into the
bucket. moto's in-process S3 server stands in for S3 or MinIO."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

import conftest
from conftest import Herald

BUCKET = "herald-dl"
CREDS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[str, Any]]:
    port = conftest._free_loopback_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


class RejectingReceiver:
    """Validates the subscription, then answers 400 so every event is dead-lettered."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("aeg-event-type") == "SubscriptionValidation":
                    out = json.dumps({"validationResponse": json.loads(body)[0]["data"]["validationCode"]}).encode()
                    status = 200
                else:
                    out, status = b'{"error":"no"}', 400
                self.send_response(status)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture(scope="module")
def herald_s3(s3: tuple[str, Any]) -> Iterator[Herald]:
    endpoint, _ = s3
    root = Path(tempfile.mkdtemp(prefix="herald-s3-"))
    data_dir = root / "data"
    data_dir.mkdir()
    port = conftest._free_loopback_port()
    token = "hrd_test_" + secrets.token_hex(16)
    env = dict(os.environ, HERALD_ADMIN_TOKEN=token, AWS_ENDPOINT=endpoint, AWS_ALLOW_HTTP="true", **CREDS)
    log_path = root / "herald.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(conftest._resolve_bin()), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", "--amqp-listen", "127.0.0.1:0",
             "--delivery-allowed-cidrs", "127.0.0.0/8", "--dead-letter-url", f"s3://{BUCKET}/herald"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    server = Herald(proc=proc, port=port, data_dir=data_dir, log_path=log_path, admin_token=token)
    try:
        conftest._wait_healthy(server)
        yield server
    finally:
        conftest.stop_herald(server)
        shutil.rmtree(root, ignore_errors=True)


def test_dead_letters_land_in_s3_with_azure_layout(herald_s3: Herald, s3: tuple[str, Any]) -> None:
    _, client = s3
    receiver = RejectingReceiver()
    topic = f"t-{uuid.uuid4().hex[:10]}"
    sub = f"s3-sub-{uuid.uuid4().hex[:6]}"
    assert herald_s3.mgmt("POST", "/api/v1/topics", json={"name": topic}).status_code == 201
    key = herald_s3.mgmt("GET", f"/api/v1/topics/{topic}/keys").json()["key1"]
    body = {
        "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": receiver.url}},
        "deadLetterDestination": {"endpointType": "StorageBlob", "properties": {
            "resourceId": "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/z",
            "blobContainerName": "deadletters"}},
    }
    resp = herald_s3.mgmt("PUT", f"/api/v1/topics/{topic}/eventSubscriptions/{sub}", json=body)
    assert resp.status_code == 201, resp.text
    assert resp.json()["provisioningState"] == "Succeeded"

    event_id = str(uuid.uuid4())
    event = {"id": event_id, "eventType": "Compat.S3", "subject": "s3/test",
             "eventTime": "2026-01-01T00:00:00Z", "data": {"n": 1}, "dataVersion": "1.0"}
    resp = requests.post(f"{herald_s3.base_url}/topics/{topic}/api/events?api-version=2018-01-01",
                         json=[event], headers={"aeg-sas-key": key}, verify=herald_s3.ca, timeout=30)
    assert resp.status_code == 200, resp.text

    prefix = f"herald/deadletters/{sub.upper()}/"
    deadline = time.monotonic() + 30
    keys: list[str] = []
    while time.monotonic() < deadline and not keys:
        listing = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        keys = [o["Key"] for o in listing.get("Contents", [])]
        time.sleep(0.2)
    assert keys, f"no dead-letter object under s3://{BUCKET}/{prefix}; log:\n{herald_s3.log_tail()}"

    # <container>/<SUB>/<YYYY>/<M>/<D>/<H>/<guid>.json, not zero-padded.
    parts = keys[0][len(prefix):].split("/")
    assert len(parts) == 5 and parts[4].endswith(".json"), keys[0]
    assert all(p.isdigit() and (p == "0" or not p.startswith("0")) for p in parts[:4]), keys[0]

    blob = json.loads(client.get_object(Bucket=BUCKET, Key=keys[0])["Body"].read())
    assert isinstance(blob, list) and len(blob) == 1
    dead = blob[0]
    assert dead["id"] == event_id
    assert dead["data"] == {"n": 1}
    assert dead["deadLetterReason"] == "UndeliverableDueToClientError"
    assert dead["lastDeliveryOutcome"] == "BadRequest"
    assert dead["deliveryAttempts"] == 1
    assert "publishTime" in dead and "lastDeliveryAttemptTime" in dead
