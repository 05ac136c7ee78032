"""The official azure-eventhub 5.15.1 SDK, unmodified, against a real `herald serve`.

Herald serves AMQP 1.0 over TLS (`--amqp-listen`) and in plaintext for
`UseDevelopmentEmulator=true` connection strings (`--amqp-plain-listen`). The hub,
its policies and their connection strings come from Herald's management API, so
what the SDK is given is exactly what a user copies from `herald hub policy keys`.
The REST half is checked with SAS tokens made by the spec's Python recipe.
"""

from __future__ import annotations

import base64
import contextlib
import socket
import datetime
import hashlib
import hmac
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import quote_plus

import pytest
import requests
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient, TransportType
from azure.eventhub.exceptions import AuthenticationError, EventHubError

import conftest
from conftest import Herald


@contextlib.contextmanager
def _loopback():
    """Send every name (namespace hosts under *.localhost) to 127.0.0.1."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", conftest._loopback_getaddrinfo)
        yield


def sas(uri: str, key_name: str, key: str, ttl: int = 3600) -> str:
    """Azure's documented recipe, word for word."""
    sr = quote_plus(uri)
    se = str(int(time.time()) + ttl)
    mac = hmac.new(key.encode("utf-8"), f"{sr}\n{se}".encode("utf-8"), hashlib.sha256).digest()
    return f"SharedAccessSignature sr={sr}&sig={quote_plus(base64.b64encode(mac))}&se={se}&skn={key_name}"


class Hubs:
    def __init__(self, server: Herald, plain_port: int, tls_port: int):
        self.server = server
        self.plain_port = plain_port
        self.tls_port = tls_port

    def mgmt(self, method: str, path: str, **kw) -> requests.Response:
        return self.server.mgmt(method, "/api/v1/hubs" + path, **kw)

    def hub(self, partitions: int = 2) -> str:
        name = f"hub-{uuid.uuid4().hex[:10]}"
        r = self.mgmt("POST", "/namespaces/default/eventhubs", json={"name": name, "partitionCount": partitions})
        assert r.status_code == 201, r.text
        return name

    def policy(self, hub: str, name: str, rights: list[str]) -> dict:
        base = f"/namespaces/default/eventhubs/{hub}/authorizationRules/{name}"
        assert self.mgmt("PUT", base, json={"rights": rights}).status_code == 201
        r = self.mgmt("POST", base + "/listKeys")
        assert r.status_code == 200, r.text
        return r.json()

    def plain(self, keys: dict) -> str:
        """The policy's connection string, pointed at the plaintext listener (emulator mode)."""
        cs = keys["primaryConnectionString"]
        endpoint = cs.split(";", 1)[0]
        return cs.replace(endpoint, f"Endpoint=sb://127.0.0.1:{self.plain_port}") + ";UseDevelopmentEmulator=true"


def start_hubs_herald(root: Path, port: int, plain_port: int, tls_port: int, token: str) -> Herald:
    """`herald serve` with both AMQP listeners, on fixed ports so a restart finds it again."""
    binary = conftest._resolve_bin()
    with open(root / "herald.log", "ab") as log:
        proc = subprocess.Popen(
            [str(binary), "serve", "--data-dir", str(root / "data"), "--listen", f"127.0.0.1:{port}",
             "--amqp-listen", f"127.0.0.1:{tls_port}", "--amqp-plain-listen", f"127.0.0.1:{plain_port}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=dict(os.environ, HERALD_ADMIN_TOKEN=token),
        )
    server = Herald(proc=proc, port=port, data_dir=root / "data", log_path=root / "herald.log", admin_token=token)
    conftest._wait_healthy(server)
    return server


@contextlib.contextmanager
def hubs_server(tag: str) -> Iterator[Hubs]:
    root = Path(tempfile.mkdtemp(prefix=f"herald-{tag}-"))
    (root / "data").mkdir()
    port = conftest._free_loopback_port()
    plain_port = conftest._free_loopback_port()
    tls_port = conftest._free_loopback_port()
    token = "hrd_test_" + secrets.token_hex(16)
    hubs = Hubs(None, plain_port, tls_port)  # type: ignore[arg-type]
    hubs.root, hubs.port, hubs.token = root, port, token
    try:
        hubs.server = start_hubs_herald(root, port, plain_port, tls_port, token)
        yield hubs
    finally:
        if hubs.server is not None:
            conftest.stop_herald(hubs.server)
        if os.environ.get("HERALD_KEEP_DATA"):
            print(f"\nherald ({tag}) data and log kept in {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def hubs() -> Iterator[Hubs]:
    with hubs_server("eventhubs") as h:
        yield h


class Collector:
    """Runs EventHubConsumerClient.receive in a thread and collects events."""

    def __init__(self, client: EventHubConsumerClient, **receive_kwargs):
        self.client = client
        self.events: list = []
        self.contexts: list = []
        self.errors: list = []
        self.lock = threading.Lock()

        def on_event(ctx, ev):
            if ev is not None:
                with self.lock:
                    self.events.append(ev)
                    self.contexts.append(ctx)

        def on_error(ctx, err):
            with self.lock:
                self.errors.append(err)

        self.thread = threading.Thread(
            target=lambda: client.receive(on_event, on_error=on_error, **receive_kwargs), daemon=True)
        self.thread.start()

    def wait_for(self, n: int, timeout: float = 20.0) -> list:
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.events) >= n:
                    return list(self.events)
            time.sleep(0.05)
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        self.client.close()
        self.thread.join(timeout=15)


def props(ev) -> dict:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (ev.properties or {}).items()}


def key_str(pk):
    return pk.decode() if isinstance(pk, bytes) else pk


@pytest.fixture(scope="module")
def hub(hubs: Hubs) -> dict:
    """One hub with 2 partitions, a Send policy, a Listen policy and a second consumer group."""
    name = hubs.hub()
    send = hubs.policy(name, "sender", ["Send"])
    listen = hubs.policy(name, "app", ["Listen"])
    r = hubs.mgmt("PUT", f"/namespaces/default/eventhubs/{name}/consumergroups/analytics")
    assert r.status_code == 201, r.text
    return {"name": name, "send": hubs.plain(send), "listen": hubs.plain(listen), "send_keys": send,
            "listen_keys": listen}


def test_connection_strings_have_azures_grammar(hub: dict):
    cs = hub["send_keys"]["primaryConnectionString"]
    assert cs == ("Endpoint=sb://default.servicebus.localhost/;SharedAccessKeyName=sender;"
                  f"SharedAccessKey={hub['send_keys']['primaryKey']};EntityPath={hub['name']}")


def test_send_batches_and_read_properties(hubs: Hubs, hub: dict):
    p = EventHubProducerClient.from_connection_string(hub["send"])
    try:
        assert p.get_partition_ids() == ["0", "1"]
        hp = p.get_eventhub_properties()
        assert hp["eventhub_name"] == hub["name"]
        assert isinstance(hp["created_at"], datetime.datetime)
        batch = p.create_batch(partition_key="device-7")
        for i in range(3):
            ev = EventData(f"keyed {i}")
            ev.properties = {"idx": i, "kind": "keyed", "ratio": 0.5 + i, "flag": i % 2 == 0}
            batch.add(ev)
        p.send_batch(batch)
        batch = p.create_batch(partition_id="1")
        for i in range(2):
            batch.add(EventData(f"p1 {i}"))
        p.send_batch(batch)
        p.send_event(EventData("unkeyed"))
        parts = {pid: p.get_partition_properties(pid) for pid in ("0", "1")}
    finally:
        p.close()
    assert sum(pp["last_enqueued_sequence_number"] + 1 for pp in parts.values()) == 6
    for pp in parts.values():
        assert pp["is_empty"] is False
        assert pp["beginning_sequence_number"] == 0
        assert pp["last_enqueued_offset"] == str(pp["last_enqueued_sequence_number"])
        assert isinstance(pp["last_enqueued_time_utc"], datetime.datetime)
    # The same figures through the management API.
    shown = hubs.mgmt("GET", f"/namespaces/default/eventhubs/{hub['name']}").json()
    assert sum(p["incomingEvents"] for p in shown["partitions"]) == 6

    c = Collector(EventHubConsumerClient.from_connection_string(hub["listen"], consumer_group="$Default"),
                  starting_position="-1")
    try:
        events = c.wait_for(6)
    finally:
        c.close()
    assert len(events) == 6, [e.body_as_str() for e in events]
    by_body = {e.body_as_str(): (e, ctx.partition_id) for e, ctx in zip(events, c.contexts)}
    assert len({by_body[f"keyed {i}"][1] for i in range(3)}) == 1, "one key, one partition"
    for i in range(3):
        ev, _ = by_body[f"keyed {i}"]
        assert key_str(ev.partition_key) == "device-7"
        assert props(ev) == {"idx": i, "kind": "keyed", "ratio": 0.5 + i, "flag": i % 2 == 0}
    assert all(by_body[f"p1 {i}"][1] == "1" for i in range(2))
    for ev, ctx in zip(events, c.contexts):
        assert ev.offset == str(ev.sequence_number)
        age = datetime.datetime.now(datetime.timezone.utc) - ev.enqueued_time
        assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=5)
    for pid in ("0", "1"):
        seqs = [e.sequence_number for e, ctx in zip(events, c.contexts) if ctx.partition_id == pid]
        assert seqs == list(range(len(seqs))), "dense sequence numbers, in order"

    # A second consumer group reads the same events independently, with receive_batch.
    got: list = []
    done = threading.Event()
    client = EventHubConsumerClient.from_connection_string(hub["listen"], consumer_group="analytics")

    def on_batch(ctx, batch):
        got.extend(batch)
        if len(got) >= 6:
            done.set()

    t = threading.Thread(target=lambda: client.receive_batch(on_batch, starting_position="-1", max_batch_size=10),
                         daemon=True)
    t.start()
    done.wait(20)
    client.close()
    t.join(15)
    assert sorted(e.body_as_str() for e in got) == sorted(by_body)


def test_latest_sequence_number_and_enqueued_time(hubs: Hubs, hub: dict):
    name = hubs.hub()
    send = hubs.plain(hubs.policy(name, "s", ["Send"]))
    listen = hubs.plain(hubs.policy(name, "l", ["Listen"]))
    p = EventHubProducerClient.from_connection_string(send)
    try:
        batch = p.create_batch(partition_id="0")
        for i in range(5):
            batch.add(EventData(f"e{i}"))
        p.send_batch(batch)
        c = Collector(EventHubConsumerClient.from_connection_string(listen, consumer_group="$Default"),
                      partition_id="0", starting_position="@latest")
        try:
            time.sleep(2.0)
            sent = time.time()
            p.send_event(EventData("after"), partition_id="0")
            events = c.wait_for(1, timeout=10)
            took = time.time() - sent
        finally:
            c.close()
        assert [e.body_as_str() for e in events] == ["after"]
        assert took < 3.0, f"a caught-up receiver gets new events at once ({took:.2f}s)"
        time.sleep(1.1)
        mark = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(0.2)
        p.send_event(EventData("timed"), partition_id="0")
    finally:
        p.close()
    for position, inclusive, want in [(2, False, ["e3", "e4", "after", "timed"]),
                                      (2, True, ["e2", "e3", "e4", "after", "timed"]),
                                      (mark, False, ["timed"])]:
        c = Collector(EventHubConsumerClient.from_connection_string(listen, consumer_group="$Default"),
                      partition_id="0", starting_position=position, starting_position_inclusive=inclusive)
        try:
            events = c.wait_for(len(want))
            time.sleep(0.3)
            events = c.wait_for(len(want))
        finally:
            c.close()
        assert [e.body_as_str() for e in events] == want, position


def test_rights_are_enforced(hubs: Hubs, hub: dict):
    # A Send-only policy cannot receive: the SDK's own authorization error.
    c = Collector(EventHubConsumerClient.from_connection_string(hub["send"], consumer_group="$Default",
                                                                retry_total=0),
                  partition_id="0", starting_position="-1")
    try:
        deadline = time.time() + 15
        while time.time() < deadline and not c.errors:
            time.sleep(0.1)
    finally:
        c.close()
    assert any("'Listen' claim(s) are required" in str(e) for e in c.errors), c.errors
    # A Listen-only policy cannot send.
    p = EventHubProducerClient.from_connection_string(hub["listen"], retry_total=0)
    try:
        with pytest.raises(EventHubError):
            p.send_event(EventData("nope"), partition_id="0")
    finally:
        p.close()
    # A wrong key is an authentication error.
    bad = hub["send"].replace(hub["send_keys"]["primaryKey"], base64.b64encode(b"x" * 32).decode())
    p = EventHubProducerClient.from_connection_string(bad, retry_total=0)
    try:
        with pytest.raises(AuthenticationError):
            p.get_eventhub_properties()
    finally:
        p.close()


def test_an_expired_sas_token_is_refused(hubs: Hubs, hub: dict):
    expired = sas(f"sb://127.0.0.1:{hubs.plain_port}/{hub['name']}", "sender", hub["send_keys"]["primaryKey"], ttl=-60)
    cs = (f"Endpoint=sb://127.0.0.1:{hubs.plain_port};SharedAccessSignature={expired};EntityPath={hub['name']};"
          "UseDevelopmentEmulator=true")
    p = EventHubProducerClient.from_connection_string(cs, retry_total=0)
    try:
        with pytest.raises((AuthenticationError, EventHubError, ValueError)):
            p.get_eventhub_properties()
    finally:
        p.close()
    # And over REST, as the recipe makes it.
    url = f"https://default.servicebus.localhost:{hubs.server.port}/{hub['name']}/messages"
    with _loopback():
        r = requests.post(url, data=b"x", verify=hubs.server.ca, timeout=10,
                          headers={"Authorization": sas(f"https://default.servicebus.localhost/{hub['name']}", "sender",
                                                        hub["send_keys"]["primaryKey"], ttl=-60)})
        assert r.status_code == 401, r.text
        good = sas(f"https://default.servicebus.localhost/{hub['name']}", "sender", hub["send_keys"]["primaryKey"])
        r = requests.post(url, data=b"over rest", verify=hubs.server.ca, timeout=10,
                          headers={"Authorization": good, "BrokerProperties": '{"PartitionKey": "rest"}'})
        assert r.status_code == 201, r.text


def test_tls_with_the_connection_string_unchanged(hubs: Hubs, hub: dict):
    cs = hub["send_keys"]["primaryConnectionString"]
    kw = dict(custom_endpoint_address=f"sb://localhost:{hubs.tls_port}", transport_type=TransportType.Amqp,
              connection_verify=hubs.server.ca)
    p = EventHubProducerClient.from_connection_string(cs, **kw)
    try:
        assert p.get_partition_ids() == ["0", "1"]
        batch = p.create_batch(partition_key="tls-key")
        batch.add(EventData("over tls"))
        p.send_batch(batch)
    finally:
        p.close()
    listen = hub["listen_keys"]["primaryConnectionString"]
    c = Collector(EventHubConsumerClient.from_connection_string(listen, consumer_group="$Default", **kw),
                  starting_position="-1")
    try:
        events = [e for e in c.wait_for(7) if e.body_as_str() == "over tls"]
        deadline = time.time() + 10
        while not events and time.time() < deadline:
            time.sleep(0.2)
            events = [e for e in c.events if e.body_as_str() == "over tls"]
    finally:
        c.close()
    assert events and key_str(events[0].partition_key) == "tls-key"


def test_sdk_sends_survive_kill_9():
    """SDK senders with batches in flight, `kill -9`, restart on the same data dir:
    every batch whose send_batch returned is readable, in each sender's order,
    and each partition's sequence numbers run from 0 with no gap."""
    senders, batch_size, kill_after = 4, 25, 120
    with hubs_server("eventhubs-crash") as h:
        name = h.hub(partitions=2)
        keys = h.policy(name, "all", ["Send", "Listen"])
        cs = h.plain(keys)
        acked: list[list[str]] = [[] for _ in range(senders)]
        stop = threading.Event()

        def send(s: int) -> None:
            # No retries: once the server is gone a send's fate is unknown and the sender stops.
            p = EventHubProducerClient.from_connection_string(cs, retry_total=0)
            try:
                b = 0
                while not stop.is_set():
                    ids = [f"s{s}-{b * batch_size + i:06}" for i in range(batch_size)]
                    batch = p.create_batch(partition_key=f"sender-{s}")
                    for i in ids:
                        batch.add(EventData(i))
                    p.send_batch(batch)
                    acked[s].extend(ids)
                    b += 1
            except Exception:  # the kill
                return
            finally:
                with contextlib.suppress(Exception):
                    p.close()

        threads = [threading.Thread(target=send, args=(s,), daemon=True) for s in range(senders)]
        for t in threads:
            t.start()
        deadline = time.time() + 120
        while sum(len(a) for a in acked) < kill_after * batch_size:
            assert time.time() < deadline, "sending made no progress"
            time.sleep(0.01)
        h.server.proc.kill()  # SIGKILL
        h.server.proc.wait()
        assert h.server.proc.returncode != 0
        for t in threads:
            t.join(timeout=60)
        stop.set()
        confirmed = {i for a in acked for i in a}

        h.server = start_hubs_herald(h.root, h.port, h.plain_port, h.tls_port, h.token)
        listen = sas(f"https://default.servicebus.localhost/{name}", "all", keys["primaryKey"])
        seen: dict[str, tuple[int, int]] = {}
        with _loopback():
            for part in (0, 1):
                nxt = 0
                while True:
                    r = requests.get(
                        f"https://default.servicebus.localhost:{h.port}/{name}/consumergroups/$Default/partitions/"
                        f"{part}/messages?fromSequenceNumber={nxt}&max=5000",
                        headers={"Authorization": listen}, verify=h.server.ca, timeout=30)
                    assert r.status_code == 200, r.text
                    page = r.json()["value"]
                    if not page:
                        break
                    for e in page:
                        assert e["sequenceNumber"] == nxt, f"partition {part}: a gap before {e['sequenceNumber']}"
                        nxt += 1
                        seen[e["body"]] = (part, e["sequenceNumber"])
        lost = sorted(confirmed - seen.keys())
        assert not lost, f"{len(lost)} acknowledged events lost, e.g. {lost[:3]}"
        for s in range(senders):
            mine = [seen[i] for i in sorted(k for k in seen if k.startswith(f"s{s}-"))]
            assert all(a[0] == b[0] and a[1] < b[1] for a, b in zip(mine, mine[1:])), f"sender {s} kept its order"
        print(f"\nSDK kill -9: {len(confirmed)} events acknowledged before the kill; all readable after restart, "
              f"{len(seen)} stored in all")
