"""Herald conformance: push delivery to webhooks (shared/spec/eventgrid.md §3.4-§3.5, §6-§7).

A plain Python receiver (http.server in a thread) stands in for a webhook written for Event Grid or
CloudEvents. It answers the Event Grid validation event with `{"validationResponse": code}`, answers the
CloudEvents OPTIONS handshake with `WebHook-Allowed-Origin: *`, and records every POST. Deliveries are
then checked with the reference libraries a real receiver would use:
  * Standard Webhooks signatures: `standardwebhooks.Webhook(secret).verify(body, headers)`;
  * CloudEvents: `cloudevents.http.from_http(headers, body)` (cloudevents 1.13.0 has no batch parser, so
    each element of a batch is parsed with `from_http` as a structured event of its own).

Herald specifics: webhook delivery to loopback needs the SSRF allow-list, so this module starts its own
`herald serve --delivery-allowed-cidrs 127.0.0.0/8` (the session server in conftest.py has none).
"""

from __future__ import annotations

import base64
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
from typing import Any, Callable, Iterator, Optional

import pytest
import requests
import standardwebhooks
from cloudevents.http import from_http
from standardwebhooks import Webhook

import conftest
from conftest import Herald

CLASSIC_API = "2018-01-01"
EG_JSON = "application/json"
CE_BATCH = "application/cloudevents-batch+json; charset=utf-8"
WAIT_S = 20.0


def unique(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:12]}"


# ======================================================================================
# Herald with the delivery allow-list
# ======================================================================================


def start_herald_with_allow_list(data_dir: Path, log_path: Path) -> Herald:
    """Like conftest.start_herald, plus `--delivery-allowed-cidrs 127.0.0.0/8` and a compressed retry schedule."""
    binary = conftest._resolve_bin()
    port = conftest._free_loopback_port()
    admin_token = "hrd_test_" + secrets.token_hex(16)
    env = dict(os.environ, HERALD_ADMIN_TOKEN=admin_token)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{port}", "--amqp-listen", "127.0.0.1:0",
             "--delivery-allowed-cidrs", "127.0.0.0/8", "--delivery-retry-scale", "0.001"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    server = Herald(proc=proc, port=port, data_dir=data_dir, log_path=log_path, admin_token=admin_token)
    try:
        conftest._wait_healthy(server)
    except BaseException:
        conftest.stop_herald(server)
        raise
    return server


@pytest.fixture(scope="module")
def hook_herald() -> Iterator[Herald]:
    root = Path(tempfile.mkdtemp(prefix="herald-webhooks-"))
    data_dir = root / "data"
    data_dir.mkdir()
    server = None
    try:
        server = start_herald_with_allow_list(data_dir, root / "herald.log")
        yield server
    finally:
        if server is not None:
            conftest.stop_herald(server)
        if os.environ.get("HERALD_KEEP_DATA"):
            print(f"\nherald (webhooks) data and log kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def hook_herald_still_running(hook_herald: Herald) -> None:
    code = hook_herald.proc.poll()
    if code is not None:
        pytest.fail(f"herald serve exited with code {code} before this test. Log tail:\n{hook_herald.log_tail()}",
                    pytrace=False)


# ======================================================================================
# The receiver
# ======================================================================================


class Delivery:
    def __init__(self, path: str, headers: dict[str, str], body: bytes):
        self.path = path
        self.headers = headers  # lower-case names
        self.body = body

    def header(self, name: str) -> Optional[str]:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Delivery({self.path}, {self.headers}, {self.body[:300]!r})"


class Receiver:
    """Records every POST; answers validation events and the OPTIONS handshake."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.posts: list[Delivery] = []
        self.options: list[dict[str, str]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

            def _reply(self, status: int, body: bytes = b"", headers: Optional[dict] = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if body:
                    self.wfile.write(body)

            def do_OPTIONS(self) -> None:  # noqa: N802
                with receiver.lock:
                    receiver.options.append({k.lower(): v for k, v in self.headers.items()})
                self._reply(200, headers={"WebHook-Allowed-Origin": "*", "WebHook-Allowed-Rate": "*",
                                          "Allow": "POST"})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                if headers.get("aeg-event-type") == "SubscriptionValidation":
                    code = json.loads(body)[0]["data"]["validationCode"]
                    payload = json.dumps({"validationResponse": code}).encode()
                    self._reply(200, payload, {"Content-Type": "application/json"})
                    return
                with receiver.lock:
                    receiver.posts.append(Delivery(self.path, headers, body))
                self._reply(200)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Delivery]:
        with self.lock:
            return [d for d in self.posts if d.path == path]

    def wait_for(self, path: str, pred: Callable[[list[Delivery]], bool], what: str,
                 timeout: float = WAIT_S) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if pred(got):
                return got
            time.sleep(0.05)
        pytest.fail(f"timed out waiting for {what} at {path}; got {self.at(path)}", pytrace=False)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# ======================================================================================
# Management / publishing helpers
# ======================================================================================


class Hooks:
    def __init__(self, herald: Herald, receiver: Receiver):
        self.herald = herald
        self.receiver = receiver

    def create_topic(self, schema: str = "EventGridSchema") -> dict:
        body = {"name": unique("t"), "inputSchema": schema}
        resp = self.herald.mgmt("POST", "/api/v1/topics", json=body)
        assert resp.status_code == 201, f"POST /api/v1/topics {body}: {resp.status_code} {resp.text}"
        info = resp.json()
        keys = self.herald.mgmt("GET", f"/api/v1/topics/{info['name']}/keys")
        assert keys.status_code == 200, keys.text
        info["_key"] = keys.json()["key1"]
        return info

    def put_webhook(self, topic: str, sub: str, path: str, *, schema: Optional[str] = None,
                    signing_secret: Optional[str] = None, **dest_props: Any) -> dict:
        props: dict[str, Any] = {"endpointUrl": self.receiver.url(path)}
        props.update(dest_props)
        body: dict[str, Any] = {"destination": {"endpointType": "WebHook", "properties": props}}
        if schema is not None:
            body["eventDeliverySchema"] = schema
        if signing_secret is not None:
            body["signingSecret"] = signing_secret
        resp = self.herald.mgmt("PUT", f"/api/v1/topics/{topic}/eventSubscriptions/{sub}", json=body)
        assert resp.status_code in (200, 201), f"PUT subscription {sub}: {resp.status_code} {resp.text}"
        info = resp.json()
        assert info["provisioningState"] == "Succeeded", info
        return info

    def publish(self, topic: dict, events: list[dict], content_type: str = EG_JSON) -> None:
        resp = requests.post(
            f"{self.herald.base_url}/topics/{topic['name']}/api/events?api-version={CLASSIC_API}",
            data=json.dumps(events).encode(), verify=self.herald.ca, timeout=30,
            headers={"aeg-sas-key": topic["_key"], "Content-Type": content_type},
        )
        assert resp.status_code == 200, f"publish: {resp.status_code} {resp.text}"

    def rotate(self, topic: str, sub: str, overlap_minutes: int) -> str:
        resp = self.herald.mgmt(
            "POST", f"/api/v1/topics/{topic}/eventSubscriptions/{sub}/rotateSigningSecret",
            params={"overlapMinutes": overlap_minutes})
        assert resp.status_code == 200, f"rotateSigningSecret: {resp.status_code} {resp.text}"
        secret = resp.json()["signingSecret"]
        assert secret.startswith("whsec_"), secret
        return secret


@pytest.fixture(scope="module")
def hooks(hook_herald: Herald, receiver: Receiver) -> Hooks:
    return Hooks(hook_herald, receiver)


def eg_event(**over: Any) -> dict:
    ev = {"id": str(uuid.uuid4()), "eventType": "Herald.Compat.Webhook", "subject": "compat/webhooks",
          "eventTime": "2024-01-01T00:00:00Z", "data": {"n": 1, "text": "héllo"}, "dataVersion": "1.0"}
    ev.update(over)
    return ev


def ce_event(**over: Any) -> dict:
    ev = {"specversion": "1.0", "id": str(uuid.uuid4()), "source": "/herald/compat/webhooks",
          "type": "com.example.herald.webhook", "subject": "compat/ce", "time": "2024-01-01T00:00:00Z",
          "datacontenttype": "application/json", "data": {"n": 1, "text": "héllo"}}
    ev.update(over)
    return ev


def new_secret_value() -> str:
    """A Standard Webhooks secret: whsec_ + base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


def delivered_ids(deliveries: list[Delivery]) -> list[str]:
    ids: list[str] = []
    for d in deliveries:
        body = d.json()
        ids.extend(e["id"] for e in (body if isinstance(body, list) else [body]))
    return ids


# ======================================================================================
# Standard Webhooks signatures (issue 4 §5)
# ======================================================================================


def test_signed_deliveries_verify_with_standardwebhooks(hooks: Hooks, receiver: Receiver) -> None:
    secret = new_secret_value()
    topic = hooks.create_topic()
    sub, path = unique("signed"), f"/signed/{uuid.uuid4().hex}"
    hooks.put_webhook(topic["name"], sub, path, signing_secret=secret)

    events = [eg_event(data={"n": i}) for i in range(3)]
    for ev in events:
        hooks.publish(topic, [ev])
    got = receiver.wait_for(path, lambda ds: len(ds) >= 3, "3 signed deliveries")
    assert sorted(delivered_ids(got)) == sorted(e["id"] for e in events)
    for d in got:
        sig = d.header("webhook-signature")
        assert sig is not None and sig.startswith("v1,"), d
        assert len(sig.split(" ")) == 1, f"one secret, one signature: {sig}"
        assert d.header("webhook-id") and d.header("webhook-timestamp"), d
        parsed = Webhook(secret).verify(d.body, d.headers)
        assert parsed == d.json()
        # A different secret must not verify, and neither must a tampered body.
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            Webhook(new_secret_value()).verify(d.body, d.headers)
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            Webhook(secret).verify(d.body + b" ", d.headers)

    # Rotation: during the overlap every delivery carries two v1 signatures, one per secret.
    new_secret = hooks.rotate(topic["name"], sub, overlap_minutes=60)
    assert new_secret != secret
    ev = eg_event(data={"after": "rotation"})
    hooks.publish(topic, [ev])
    got = receiver.wait_for(path, lambda ds: ev["id"] in delivered_ids(ds), "a delivery after rotation")
    after = [d for d in got if ev["id"] in delivered_ids([d])]
    assert len(after) == 1, after
    d = after[0]
    sigs = d.header("webhook-signature").split(" ")
    assert len(sigs) == 2 and all(s.startswith("v1,") for s in sigs), sigs
    assert Webhook(secret).verify(d.body, d.headers) == d.json()
    assert Webhook(new_secret).verify(d.body, d.headers) == d.json()

    # Each secret verifies exactly one of the two signatures.
    for s in (secret, new_secret):
        matching = [sig for sig in sigs
                    if _verifies(s, d, {**d.headers, "webhook-signature": sig})]
        assert len(matching) == 1, (s, sigs)


def _verifies(secret: str, d: Delivery, headers: dict) -> bool:
    try:
        Webhook(secret).verify(d.body, headers)
        return True
    except standardwebhooks.webhooks.WebhookVerificationError:
        return False


def test_rotation_without_overlap_signs_with_new_secret_only(hooks: Hooks, receiver: Receiver) -> None:
    secret = new_secret_value()
    topic = hooks.create_topic()
    sub, path = unique("rot0"), f"/rot0/{uuid.uuid4().hex}"
    hooks.put_webhook(topic["name"], sub, path, signing_secret=secret)
    new_secret = hooks.rotate(topic["name"], sub, overlap_minutes=0)
    ev = eg_event()
    hooks.publish(topic, [ev])
    (d,) = receiver.wait_for(path, lambda ds: len(ds) >= 1, "one delivery")
    assert len(d.header("webhook-signature").split(" ")) == 1, d
    assert Webhook(new_secret).verify(d.body, d.headers) == d.json()
    assert not _verifies(secret, d, d.headers)


def test_unsigned_subscription_has_no_signature_headers(hooks: Hooks, receiver: Receiver) -> None:
    topic = hooks.create_topic()
    sub, path = unique("plain"), f"/plain/{uuid.uuid4().hex}"
    hooks.put_webhook(topic["name"], sub, path)
    hooks.publish(topic, [eg_event()])
    (d,) = receiver.wait_for(path, lambda ds: len(ds) >= 1, "one delivery")
    assert d.header("webhook-signature") is None, d
    assert d.header("webhook-id") is None, d


# ======================================================================================
# CloudEvents deliveries, parsed with the CNCF SDK (spec §3.2, §3.5, §6)
# ======================================================================================


def _assert_ce_equal(parsed: Any, published: dict) -> None:
    for attr in ("id", "source", "type", "subject", "specversion"):
        assert parsed[attr] == published[attr], (attr, parsed, published)
    assert parsed.data == published["data"], (parsed.data, published["data"])


def test_cloudevents_structured_single_parses_with_cloudevents_sdk(hooks: Hooks, receiver: Receiver) -> None:
    topic = hooks.create_topic("CloudEventSchemaV1_0")
    sub, path = unique("ce1"), f"/ce1/{uuid.uuid4().hex}"
    n_options = len(receiver.options)
    hooks.put_webhook(topic["name"], sub, path, schema="CloudEventSchemaV1_0")
    # The abuse-protection handshake (§3.5) ran instead of the validation event.
    assert len(receiver.options) > n_options
    assert receiver.options[-1].get("webhook-request-origin"), receiver.options[-1]

    events = [ce_event(data={"i": i}, subject=f"compat/ce/{i}") for i in range(3)]
    hooks.publish(topic, events, CE_BATCH)
    got = receiver.wait_for(path, lambda ds: len(ds) >= 3, "3 structured deliveries")
    by_id = {e["id"]: e for e in events}
    seen = set()
    for d in got:
        ctype = d.header("content-type") or ""
        assert ctype.lower().startswith("application/cloudevents+json"), d
        assert isinstance(d.json(), dict), "structured mode: one JSON object"
        assert d.header("webhook-request-origin") and d.header("origin"), d
        assert d.header("aeg-event-type") == "Notification", d
        parsed = from_http(d.headers, d.body)
        _assert_ce_equal(parsed, by_id[parsed["id"]])
        seen.add(parsed["id"])
    assert seen == set(by_id)


def test_cloudevents_batched_parse_with_cloudevents_sdk(hooks: Hooks, receiver: Receiver) -> None:
    topic = hooks.create_topic("CloudEventSchemaV1_0")
    sub, path = unique("ceb"), f"/ceb/{uuid.uuid4().hex}"
    hooks.put_webhook(topic["name"], sub, path, schema="CloudEventSchemaV1_0", maxEventsPerBatch=10)

    events = [ce_event(data={"i": i}, subject=f"compat/ceb/{i}") for i in range(25)]
    hooks.publish(topic, events, CE_BATCH)
    got = receiver.wait_for(path, lambda ds: len(delivered_ids(ds)) >= 25, "25 batched events")
    by_id = {e["id"]: e for e in events}
    parsed_ids: list[str] = []
    for d in got:
        ctype = d.header("content-type") or ""
        assert ctype.lower().startswith("application/cloudevents-batch+json"), d
        body = d.json()
        assert isinstance(body, list) and 1 <= len(body) <= 10, f"batch of {len(body)}"
        # cloudevents 1.13.0 has no batch parser: parse each element as a structured event.
        for element in body:
            parsed = from_http({"content-type": "application/cloudevents+json; charset=utf-8"},
                               json.dumps(element).encode())
            _assert_ce_equal(parsed, by_id[parsed["id"]])
            parsed_ids.append(parsed["id"])
    assert sorted(parsed_ids) == sorted(by_id), "every event exactly once"
    assert len(got) >= 3, "25 events in batches of at most 10"


# ======================================================================================
# Event Grid schema deliveries (spec §6)
# ======================================================================================


def test_eventgrid_delivery_headers_and_array_body(hooks: Hooks, receiver: Receiver) -> None:
    topic = hooks.create_topic()
    sub, path = "MixedCase-" + uuid.uuid4().hex[:8], f"/eg/{uuid.uuid4().hex}?code=abc"
    hooks.put_webhook(topic["name"], sub, path)
    ev = eg_event(subject="orders/1807", data={"make": "Ducati"})
    hooks.publish(topic, [ev])
    (d,) = receiver.wait_for(path, lambda ds: len(ds) >= 1, "one delivery")
    assert (d.header("content-type") or "").lower().startswith("application/json"), d
    assert d.header("aeg-event-type") == "Notification"
    assert d.header("aeg-subscription-name") == sub.upper()
    assert d.header("aeg-delivery-count") == "0"
    assert d.header("aeg-metadata-version") == "1"
    assert d.header("aeg-data-version") == "1.0"
    assert d.header("aeg-output-event-id") == ev["id"]
    body = d.json()
    assert isinstance(body, list) and len(body) == 1, body
    got = body[0]
    for k in ("id", "subject", "eventType", "eventTime", "data", "dataVersion"):
        if k == "eventTime":
            assert got[k].startswith("2024-01-01T00:00:00"), got
        else:
            assert got[k] == ev[k], (k, got)
    assert got["topic"] == topic["id"], got
    assert got["metadataVersion"] == "1", got
