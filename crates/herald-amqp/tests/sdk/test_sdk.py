"""The official azure-eventhub 5.15.1 SDK, unchanged, against Herald's AMQP listener.

Run with `crates/herald-amqp/tests/sdk/run.sh` (builds the `mem_server` example and
a venv), or with HERALD_AMQP_SERVER=<path to mem_server> and pytest from a venv that
has azure-eventhub==5.15.1.
"""

import datetime
import os
import subprocess
import threading
import time
import uuid

import pytest
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient, TransportType
from azure.eventhub.exceptions import AuthenticationError, EventHubError

KEY_NAME = "RootManageSharedAccessKey"
KEY = "cm9vdC1rZXktZm9yLXRlc3RzLW9ubHktMDEyMzQ1Njc="
SEND_KEY_NAME = "send-only"
SEND_KEY = "c2VuZC1vbmx5LWtleS1mb3ItdGVzdHMtMDEyMzQ1Njc="
TLS_NAMESPACE = "herald-test.servicebus.windows.net"

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SERVER = os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(HERE, "..", "..", "..", "..", "target")),
    "debug",
    "examples",
    "mem_server",
)


def start_server(*args):
    exe = os.environ.get("HERALD_AMQP_SERVER", DEFAULT_SERVER)
    log = open(os.path.join(os.environ.get("HERALD_AMQP_LOG_DIR", "/tmp"), f"herald-amqp-{uuid.uuid4().hex[:8]}.log"), "w")
    proc = subprocess.Popen([exe, *args], stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    assert line.startswith("LISTENING "), f"server did not start: {line!r}"
    return proc, int(line.split()[1])


@pytest.fixture(scope="session")
def port():
    proc, port = start_server()
    yield port
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def tls_server(tmp_path_factory):
    ca = str(tmp_path_factory.mktemp("tls") / "ca.pem")
    proc, port = start_server("--tls", ca)
    yield port, ca
    proc.terminate()
    proc.wait(timeout=10)


def conn_str(port, hub, key_name=KEY_NAME, key=KEY):
    return (
        f"Endpoint=sb://127.0.0.1:{port};SharedAccessKeyName={key_name};SharedAccessKey={key};"
        f"EntityPath={hub};UseDevelopmentEmulator=true"
    )


def producer(port, hub, **kw):
    return EventHubProducerClient.from_connection_string(conn_str(port, hub), **kw)


class Collector:
    """Runs EventHubConsumerClient.receive in a thread and collects events."""

    def __init__(self, client, **receive_kwargs):
        self.client = client
        self.events = []
        self.errors = []
        self.contexts = []
        self.lock = threading.Lock()

        def on_event(ctx, ev):
            if ev is None:
                return
            with self.lock:
                self.events.append(ev)
                self.contexts.append(ctx)

        def on_error(ctx, err):
            with self.lock:
                self.errors.append(err)

        self.thread = threading.Thread(
            target=lambda: client.receive(on_event, on_error=on_error, **receive_kwargs), daemon=True
        )
        self.thread.start()

    def wait_for(self, n, timeout=20.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if len(self.events) >= n:
                    return list(self.events)
            time.sleep(0.05)
        with self.lock:
            return list(self.events)

    def close(self):
        self.client.close()
        self.thread.join(timeout=15)


def consumer(port, hub, key_name=KEY_NAME, key=KEY, **kw):
    return EventHubConsumerClient.from_connection_string(
        conn_str(port, hub, key_name, key), consumer_group="$Default", **kw
    )


def key_str(pk):
    return pk.decode() if isinstance(pk, bytes) else pk


def props(ev):
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in (ev.properties or {}).items()}


def test_management_properties(port):
    p = producer(port, "t1")
    try:
        hp = p.get_eventhub_properties()
        assert hp["eventhub_name"] == "t1"
        assert hp["partition_ids"] == ["0", "1"]
        assert isinstance(hp["created_at"], datetime.datetime)
        assert p.get_partition_ids() == ["0", "1"]
        pp = p.get_partition_properties("0")
        assert pp["eventhub_name"] == "t1"
        assert pp["id"] == "0"
        assert pp["is_empty"] is True
        assert pp["beginning_sequence_number"] == -1
        assert pp["last_enqueued_sequence_number"] == -1
        assert pp["last_enqueued_offset"] == "-1"
    finally:
        p.close()


def test_send_batches_and_receive_from_start(port):
    hub = "t2"
    p = producer(port, hub)
    try:
        batch = p.create_batch(partition_key="device-7")
        for i in range(3):
            ev = EventData(f"keyed {i}")
            ev.properties = {"idx": i, "kind": "keyed", "ratio": 0.5 + i, "flag": i % 2 == 0}
            batch.add(ev)
        p.send_batch(batch)
        batch = p.create_batch(partition_id="1")
        for i in range(2):
            ev = EventData(f"p1 {i}")
            ev.properties = {"idx": i, "kind": "p1"}
            batch.add(ev)
        p.send_batch(batch)
        p.send_event(EventData("single"), partition_id="0")
        parts = {pid: p.get_partition_properties(pid) for pid in ("0", "1")}
    finally:
        p.close()
    total = sum(pp["last_enqueued_sequence_number"] + 1 for pp in parts.values())
    assert total == 6
    for pp in parts.values():
        assert pp["is_empty"] is False
        assert pp["last_enqueued_offset"] == str(pp["last_enqueued_sequence_number"])
        assert isinstance(pp["last_enqueued_time_utc"], datetime.datetime)

    c = Collector(consumer(port, hub), starting_position="-1")
    try:
        events = c.wait_for(6)
    finally:
        c.close()
    assert len(events) == 6, [e.body_as_str() for e in events]
    by_body = {e.body_as_str(): (e, ctx.partition_id) for e, ctx in zip(events, c.contexts)}
    keyed_partition = {by_body[f"keyed {i}"][1] for i in range(3)}
    assert len(keyed_partition) == 1, "one partition key, one partition"
    for i in range(3):
        ev, _ = by_body[f"keyed {i}"]
        assert key_str(ev.partition_key) == "device-7"
        assert props(ev) == {"idx": i, "kind": "keyed", "ratio": 0.5 + i, "flag": i % 2 == 0}
    for i in range(2):
        ev, pid = by_body[f"p1 {i}"]
        assert pid == "1"
        assert ev.partition_key is None
        assert props(ev) == {"idx": i, "kind": "p1"}
    assert by_body["single"][1] == "0"
    for ev in events:
        assert isinstance(ev.sequence_number, int)
        assert ev.offset == str(ev.sequence_number)
        assert isinstance(ev.enqueued_time, datetime.datetime)
        age = datetime.datetime.now(datetime.timezone.utc) - ev.enqueued_time
        assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=2)
    # dense sequence numbers per partition, in order
    for pid in ("0", "1"):
        seqs = [e.sequence_number for e, ctx in zip(events, c.contexts) if ctx.partition_id == pid]
        assert seqs == list(range(len(seqs)))


def test_receive_latest_gets_only_new_events(port):
    hub = "t3"
    p = producer(port, hub)
    try:
        p.send_event(EventData("before"), partition_id="0")
        c = Collector(consumer(port, hub), partition_id="0", starting_position="@latest")
        try:
            time.sleep(2.0)  # let the link attach
            sent_at = time.time()
            p.send_event(EventData("after"), partition_id="0")
            events = c.wait_for(1, timeout=10)
            latency = time.time() - sent_at
        finally:
            c.close()
    finally:
        p.close()
    assert [e.body_as_str() for e in events] == ["after"]
    assert events[0].sequence_number == 1
    assert latency < 3.0, f"a caught-up reader must get new events at once (took {latency:.2f}s)"


def test_receive_from_sequence_number(port):
    hub = "t4"
    p = producer(port, hub)
    try:
        batch = p.create_batch(partition_id="0")
        for i in range(5):
            batch.add(EventData(f"e{i}"))
        p.send_batch(batch)
    finally:
        p.close()
    c = Collector(consumer(port, hub), partition_id="0", starting_position=2)
    try:
        events = c.wait_for(2)
        time.sleep(0.5)
        events = c.wait_for(2)
    finally:
        c.close()
    assert [e.sequence_number for e in events] == [3, 4]
    c = Collector(consumer(port, hub), partition_id="0", starting_position=2, starting_position_inclusive=True)
    try:
        events = c.wait_for(3)
    finally:
        c.close()
    assert [e.sequence_number for e in events] == [2, 3, 4]
    # an offset string (as a reconnecting SDK sends it) round-trips
    c = Collector(consumer(port, hub), partition_id="0", starting_position="3")
    try:
        events = c.wait_for(1)
    finally:
        c.close()
    assert [e.body_as_str() for e in events] == ["e4"]


def test_receive_from_enqueued_time(port):
    hub = "t5"
    p = producer(port, hub)
    try:
        for i in range(3):
            p.send_event(EventData(f"old{i}"), partition_id="1")
        time.sleep(1.2)
        mark = datetime.datetime.now(datetime.timezone.utc)
        time.sleep(0.2)
        for i in range(2):
            p.send_event(EventData(f"new{i}"), partition_id="1")
    finally:
        p.close()
    c = Collector(consumer(port, hub), partition_id="1", starting_position=mark)
    try:
        events = c.wait_for(2)
        time.sleep(0.5)
        events = c.wait_for(2)
    finally:
        c.close()
    assert [e.body_as_str() for e in events] == ["new0", "new1"]
    assert all(e.enqueued_time >= mark for e in events)


def test_runtime_metrics(port):
    hub = "t6"
    p = producer(port, hub)
    try:
        for i in range(3):
            p.send_event(EventData(f"m{i}"), partition_id="0")
    finally:
        p.close()
    c = Collector(consumer(port, hub), partition_id="0", starting_position="-1",
                  track_last_enqueued_event_properties=True)
    try:
        c.wait_for(3)
        info = c.contexts[-1].last_enqueued_event_properties
    finally:
        c.close()
    assert info["sequence_number"] == 2
    assert info["offset"] == "2"
    assert isinstance(info["enqueued_time"], datetime.datetime)
    assert isinstance(info["retrieval_time"], datetime.datetime)


def test_send_only_token_cannot_receive(port):
    hub = "t7"
    p = producer(port, hub)
    p.send_event(EventData("secret"), partition_id="0")
    p.close()
    client = consumer(port, hub, SEND_KEY_NAME, SEND_KEY, retry_total=0)
    # A Send-only policy can still read management data (A9.4) ...
    assert client.get_partition_ids() == ["0", "1"]
    # ... but not events: the consumer gets the SDK's authorization error.
    c = Collector(client, partition_id="0", starting_position="-1")
    try:
        deadline = time.time() + 15
        while time.time() < deadline and not c.errors:
            time.sleep(0.1)
        events = c.wait_for(1, timeout=0.5)
    finally:
        c.close()
    assert events == []
    assert c.errors, "expected an authorization error"
    # 5.15.1 surfaces the link detach as ConnectionLostError carrying Azure's text.
    assert any("'Listen' claim(s) are required" in str(e) and "amqp:unauthorized-access" in str(e)
               for e in c.errors), c.errors


def test_bad_key_is_refused(port):
    p = EventHubProducerClient.from_connection_string(
        conn_str(port, "t8", key="d3Jvbmcta2V5LXdyb25nLWtleS13cm9uZy1rZXk="), retry_total=0
    )
    try:
        with pytest.raises(AuthenticationError):
            p.get_eventhub_properties()
    finally:
        p.close()


def test_unknown_hub_is_not_found(port):
    p = producer(port, "nohub", retry_total=0)
    try:
        with pytest.raises(EventHubError) as err:
            p.get_eventhub_properties()
        assert "could not be found" in str(err.value) or "404" in str(err.value)
    finally:
        p.close()


def test_epoch_receiver_steals_partition(port):
    hub = "t9"
    p = producer(port, hub)
    p.send_event(EventData("x"), partition_id="0")
    first = Collector(consumer(port, hub), partition_id="0", starting_position="-1", owner_level=1)
    try:
        assert len(first.wait_for(1)) == 1
        second = Collector(consumer(port, hub), partition_id="0", starting_position="-1", owner_level=2)
        try:
            assert len(second.wait_for(1)) == 1
            deadline = time.time() + 10
            while time.time() < deadline and not first.errors:
                time.sleep(0.1)
            assert first.errors, "the lower-epoch receiver must be disconnected"
            p.send_event(EventData("y"), partition_id="0")
            assert [e.body_as_str() for e in second.wait_for(2)] == ["x", "y"]
            assert [e.body_as_str() for e in first.wait_for(1, timeout=1)] == ["x"]
        finally:
            second.close()
    finally:
        first.close()
        p.close()


def test_tls_custom_endpoint(tls_server):
    tls_port, ca = tls_server
    cs = f"Endpoint=sb://{TLS_NAMESPACE}/;SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY};EntityPath=t10"
    kw = dict(
        custom_endpoint_address=f"sb://localhost:{tls_port}",
        transport_type=TransportType.Amqp,
        connection_verify=ca,
    )
    p = EventHubProducerClient.from_connection_string(cs, **kw)
    try:
        assert p.get_eventhub_properties()["partition_ids"] == ["0", "1"]
        batch = p.create_batch(partition_key="tls-key")
        batch.add(EventData("over tls"))
        p.send_batch(batch)
    finally:
        p.close()
    c = Collector(EventHubConsumerClient.from_connection_string(cs, consumer_group="$Default", **kw),
                  starting_position="-1")
    try:
        events = c.wait_for(1)
    finally:
        c.close()
    assert [e.body_as_str() for e in events] == ["over tls"]
    assert key_str(events[0].partition_key) == "tls-key"
