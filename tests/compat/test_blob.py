"""Blob storage with the official `azure-storage-blob` SDK, from a connection string Herald
prints: containers, block blobs small and large, metadata, listings, conditional writes, SAS
tokens made by the SDK's own generate_*_sas, and a wrong key refused.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import (ClientAuthenticationError, HttpResponseError, ResourceExistsError,
                                   ResourceModifiedError, ResourceNotFoundError)
from azure.storage.blob import (AccountSasPermissions, BlobClient, BlobSasPermissions, BlobServiceClient,
                                ResourceTypes, generate_account_sas, generate_blob_sas)

from conftest import Herald


@pytest.fixture(scope="module")
def account(herald: Herald) -> dict:
    name = f"acct{uuid.uuid4().hex[:10]}"
    r = herald.mgmt("POST", "/api/v1/storage/accounts", json={"name": name})
    assert r.status_code == 201, r.text
    keys = herald.mgmt("POST", f"/api/v1/storage/accounts/{name}/listKeys")
    assert keys.status_code == 200, keys.text
    k = keys.json()
    return {"name": name, "key": k["keys"][0]["value"], "conn": k["connectionString"],
            "endpoint": r.json()["properties"]["primaryEndpoints"]["blob"]}


def service(herald: Herald, account: dict, **kw) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(account["conn"], connection_verify=herald.ca, **kw)


def test_connection_string_grammar(account: dict) -> None:
    parts = dict(p.split("=", 1) for p in account["conn"].split(";"))
    assert parts["DefaultEndpointsProtocol"] == "https"
    assert parts["AccountName"] == account["name"]
    assert parts["BlobEndpoint"].startswith(f"https://{account['name']}.blob.localhost:")


def test_containers_create_list_metadata_delete(herald: Herald, account: dict) -> None:
    svc = service(herald, account)
    names = [f"c{i}-{uuid.uuid4().hex[:6]}" for i in range(3)]
    for n in names:
        svc.create_container(n, metadata={"owner": "ci"})
    with pytest.raises(ResourceExistsError):
        svc.create_container(names[0])
    listed = [c.name for c in svc.list_containers(name_starts_with="c1-")]
    assert listed == [names[1]]
    paged = [c.name for c in svc.list_containers(results_per_page=1)]
    assert sorted(names) == sorted(n for n in paged if n in names)
    props = svc.get_container_client(names[0]).get_container_properties()
    assert props.metadata == {"owner": "ci"}
    svc.get_container_client(names[0]).set_container_metadata({"owner": "ops", "tier": "gold"})
    assert svc.get_container_client(names[0]).get_container_properties().metadata == {"owner": "ops", "tier": "gold"}
    with_meta = {c.name: c.metadata for c in svc.list_containers(include_metadata=True) if c.name == names[0]}
    assert with_meta[names[0]] == {"owner": "ops", "tier": "gold"}
    for n in names:
        svc.delete_container(n)
    with pytest.raises(ResourceNotFoundError):
        svc.get_container_client(names[0]).get_container_properties()


def test_upload_download_small_and_in_blocks(herald: Herald, account: dict) -> None:
    # Small single-put threshold and block size, so 5 MiB goes as Put Block + Put Block List.
    svc = service(herald, account, max_single_put_size=1024 * 1024, max_block_size=1024 * 1024)
    c = svc.create_container(f"data-{uuid.uuid4().hex[:6]}")
    c.upload_blob("hello.txt", b"hello, blob", metadata={"kind": "greeting"})
    b = c.get_blob_client("hello.txt")
    assert b.download_blob().readall() == b"hello, blob"
    props = b.get_blob_properties()
    assert props.size == 11 and props.metadata == {"kind": "greeting"} and props.etag
    assert props.blob_type == "BlockBlob"
    big = os.urandom(5 * 1024 * 1024 + 123)
    c.upload_blob("big.bin", big)
    got = c.get_blob_client("big.bin").download_blob(max_concurrency=2).readall()
    assert got == big
    part = c.get_blob_client("big.bin").download_blob(offset=1000, length=5000).readall()
    assert part == big[1000:6000]
    committed = c.get_blob_client("big.bin").get_block_list("committed")[0]
    assert len(committed) == 6
    # Metadata and properties round trip.
    b.set_blob_metadata({"kind": "changed"})
    assert b.get_blob_properties().metadata == {"kind": "changed"}
    c.get_blob_client("empty").upload_blob(b"")
    assert c.get_blob_client("empty").download_blob().readall() == b""
    b.delete_blob()
    with pytest.raises(ResourceNotFoundError):
        b.download_blob()


def test_listing_with_prefix_and_delimiter(herald: Herald, account: dict) -> None:
    c = service(herald, account).create_container(f"tree-{uuid.uuid4().hex[:6]}")
    for n in ["a/1.json", "a/2.json", "a/b/3.json", "c.json", "d/4.json"]:
        c.upload_blob(n, b"{}", metadata={"n": n.replace("/", "_").replace(".", "_")})
    assert [b.name for b in c.list_blobs(name_starts_with="a/")] == ["a/1.json", "a/2.json", "a/b/3.json"]
    # The SDK yields a page's prefixes before its blobs.
    top = [x.name for x in c.walk_blobs(delimiter="/")]
    assert top == ["a/", "d/", "c.json"]
    under_a = [x.name for x in c.walk_blobs(name_starts_with="a/", delimiter="/")]
    assert sorted(under_a) == ["a/1.json", "a/2.json", "a/b/"]
    paged = [b.name for b in c.list_blobs(results_per_page=2)]
    assert paged == ["a/1.json", "a/2.json", "a/b/3.json", "c.json", "d/4.json"]
    meta = {b.name: b.metadata for b in c.list_blobs(include=["metadata"])}
    assert meta["c.json"] == {"n": "c_json"}


def test_conditional_uploads(herald: Herald, account: dict) -> None:
    c = service(herald, account).create_container(f"cond-{uuid.uuid4().hex[:6]}")
    b = c.get_blob_client("lease.json")
    first = b.upload_blob(b"v1")
    with pytest.raises(ResourceExistsError):
        b.upload_blob(b"v2", overwrite=False)
    # A writer that read v1 may replace it; one holding a stale ETag may not.
    second = b.upload_blob(b"v2", overwrite=True, etag=first["etag"], match_condition=MatchConditions.IfNotModified)
    with pytest.raises(ResourceModifiedError):
        b.upload_blob(b"v3", overwrite=True, etag=first["etag"], match_condition=MatchConditions.IfNotModified)
    assert b.download_blob().readall() == b"v2"
    with pytest.raises(ResourceModifiedError):
        b.delete_blob(etag=first["etag"], match_condition=MatchConditions.IfNotModified)
    b.delete_blob(etag=second["etag"], match_condition=MatchConditions.IfNotModified)


def test_sas_tokens_from_the_sdk(herald: Herald, account: dict) -> None:
    svc = service(herald, account)
    cname = f"sas-{uuid.uuid4().hex[:6]}"
    c = svc.create_container(cname)
    c.upload_blob("report.csv", b"a,b\n1,2\n")
    expiry = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    sas = generate_blob_sas(account["name"], cname, "report.csv", account_key=account["key"],
                            permission=BlobSasPermissions(read=True), expiry=expiry)
    # BlobClient(account_url, ...) rather than from_blob_url: the SDK parses any URL whose host
    # contains "localhost" as the emulator's path style (/{account}/{container}/{blob}).
    reader = BlobClient(account["endpoint"], cname, "report.csv", credential=sas, connection_verify=herald.ca)
    assert reader.download_blob().readall() == b"a,b\n1,2\n"
    with pytest.raises(HttpResponseError) as e:
        reader.upload_blob(b"tampered", overwrite=True)
    assert e.value.status_code == 403
    acct_sas = generate_account_sas(account["name"], account_key=account["key"],
                                    resource_types=ResourceTypes(service=True, container=True, object=True),
                                    permission=AccountSasPermissions(read=True, write=True, list=True, create=True),
                                    expiry=expiry)
    via_account = BlobServiceClient(account["endpoint"], credential=acct_sas, connection_verify=herald.ca)
    via_account.get_container_client(cname).upload_blob("new.txt", b"from account sas")
    assert [b.name for b in via_account.get_container_client(cname).list_blobs()] == ["new.txt", "report.csv"]
    expired = generate_blob_sas(account["name"], cname, "report.csv", account_key=account["key"],
                                permission=BlobSasPermissions(read=True),
                                expiry=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1))
    with pytest.raises(ClientAuthenticationError):
        BlobClient(account["endpoint"], cname, "report.csv", credential=expired,
                   connection_verify=herald.ca).download_blob()


def test_wrong_key_is_refused(herald: Herald, account: dict) -> None:
    import base64
    wrong = base64.b64encode(os.urandom(64)).decode()
    conn = account["conn"].replace(account["key"], wrong)
    svc = BlobServiceClient.from_connection_string(conn, connection_verify=herald.ca)
    with pytest.raises(ClientAuthenticationError) as e:
        list(svc.list_containers())
    assert e.value.error_code == "AuthenticationFailed"


def test_eventhub_checkpoints_in_a_herald_container() -> None:
    """azure-eventhub with BlobCheckpointStore on Herald's own blobs: two consumers in one group
    split the partitions, checkpoint, and a restarted consumer resumes after the checkpoints."""
    import threading
    import time

    from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient
    from azure.eventhub.extensions.checkpointstoreblob import BlobCheckpointStore

    from test_eventhubs import hubs_server

    with hubs_server("checkpoints") as h:
        hub = h.hub(partitions=4)
        send = h.plain(h.policy(hub, "sender", ["Send"]))
        listen = h.plain(h.policy(hub, "app", ["Listen"]))
        name = f"ck{uuid.uuid4().hex[:10]}"
        assert h.server.mgmt("POST", "/api/v1/storage/accounts", json={"name": name}).status_code == 201
        conn = h.server.mgmt("POST", f"/api/v1/storage/accounts/{name}/listKeys").json()["connectionString"]
        BlobServiceClient.from_connection_string(conn, connection_verify=h.server.ca).create_container("checkpoints")

        def produce(n: int, tag: str) -> None:
            p = EventHubProducerClient.from_connection_string(send)
            try:
                for i in range(n):
                    batch = p.create_batch(partition_id=str(i % 4))
                    batch.add(EventData(f"{tag}-{i}"))
                    p.send_batch(batch)
            finally:
                p.close()

        class Consumer:
            def __init__(self) -> None:
                store = BlobCheckpointStore.from_connection_string(conn, "checkpoints",
                                                                    connection_verify=h.server.ca)
                self.client = EventHubConsumerClient.from_connection_string(
                    listen, consumer_group="$Default", checkpoint_store=store, load_balancing_interval=1,
                    partition_ownership_expiration_interval=4)
                self.seen: list[tuple[str, str]] = []
                self.lock = threading.Lock()

                def on_event(ctx, ev) -> None:
                    if ev is None:
                        return
                    with self.lock:
                        self.seen.append((ctx.partition_id, ev.body_as_str()))
                    ctx.update_checkpoint(ev)

                self.thread = threading.Thread(
                    target=lambda: self.client.receive(on_event, starting_position="-1"), daemon=True)
                self.thread.start()

            def bodies(self) -> set[str]:
                with self.lock:
                    return {b for _, b in self.seen}

            def partitions(self) -> set[str]:
                with self.lock:
                    return {p for p, _ in self.seen}

            def close(self) -> None:
                self.client.close()
                self.thread.join(timeout=15)

        produce(40, "first")
        a, b = Consumer(), Consumer()
        want = {f"first-{i}" for i in range(40)}
        deadline = time.time() + 60
        while time.time() < deadline and not (a.bodies() | b.bodies() >= want and a.partitions() and b.partitions()):
            produce(4, "more")
            want |= {f"more-{i}" for i in range(4)}
            time.sleep(1)
        try:
            assert a.bodies() | b.bodies() >= want, "every event reached one of the consumers"
            assert a.partitions() and b.partitions(), (a.partitions(), b.partitions())
        finally:
            a.close()
            b.close()
        listed = [x.name for x in BlobServiceClient.from_connection_string(conn, connection_verify=h.server.ca)
                  .get_container_client("checkpoints").list_blobs()]
        assert any("/checkpoint/" in n for n in listed), listed
        assert any("/ownership/" in n for n in listed), listed

        # A consumer started after the checkpoints reads only what came after them.
        produce(8, "after")
        c = Consumer()
        try:
            deadline = time.time() + 30
            while time.time() < deadline and not c.bodies() >= {f"after-{i}" for i in range(8)}:
                time.sleep(0.2)
            assert c.bodies() >= {f"after-{i}" for i in range(8)}
            assert not any(x.startswith("first-") for x in c.bodies()), "resumed after the checkpoints"
        finally:
            c.close()


def test_dead_letters_in_a_herald_container(tmp_path) -> None:
    """An Event Grid subscription whose deadLetterDestination names a Herald storage account writes
    its dead letters there, in Azure's layout, readable with the Storage SDK."""
    import json
    import time

    import requests

    from conftest import start_herald, stop_herald
    from test_deadletter_s3 import RejectingReceiver

    (tmp_path / "data").mkdir()
    server = start_herald(tmp_path / "data", tmp_path / "herald.log",
                          env={"HERALD_DELIVERY_ALLOWED_CIDRS": "127.0.0.0/8"})
    try:
        name = f"dl{uuid.uuid4().hex[:10]}"
        assert server.mgmt("POST", "/api/v1/storage/accounts", json={"name": name}).status_code == 201
        conn = server.mgmt("POST", f"/api/v1/storage/accounts/{name}/listKeys").json()["connectionString"]
        svc = BlobServiceClient.from_connection_string(conn, connection_verify=server.ca)
        svc.create_container("deadletters")
        receiver = RejectingReceiver()
        topic, sub = f"t-{uuid.uuid4().hex[:8]}", f"dl-sub-{uuid.uuid4().hex[:6]}"
        assert server.mgmt("POST", "/api/v1/topics", json={"name": topic}).status_code == 201
        key = server.mgmt("GET", f"/api/v1/topics/{topic}/keys").json()["key1"]
        body = {
            "destination": {"endpointType": "WebHook", "properties": {"endpointUrl": receiver.url}},
            "deadLetterDestination": {"endpointType": "StorageBlob", "properties": {
                "resourceId": f"/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/storageAccounts/{name}",
                "blobContainerName": "deadletters"}},
        }
        r = server.mgmt("PUT", f"/api/v1/topics/{topic}/eventSubscriptions/{sub}", json=body)
        assert r.status_code == 201, r.text
        event_id = str(uuid.uuid4())
        event = {"id": event_id, "eventType": "Compat.Blob", "subject": "blob/test",
                 "eventTime": "2026-01-01T00:00:00Z", "data": {"n": 1}, "dataVersion": "1.0"}
        r = requests.post(f"{server.base_url}/topics/{topic}/api/events?api-version=2018-01-01", json=[event],
                          headers={"aeg-sas-key": key}, verify=server.ca, timeout=30)
        assert r.status_code == 200, r.text
        c = svc.get_container_client("deadletters")
        deadline = time.monotonic() + 30
        names: list[str] = []
        while time.monotonic() < deadline and not names:
            names = [b.name for b in c.list_blobs(name_starts_with=f"{sub.upper()}/")]
            time.sleep(0.2)
        assert names, f"no dead-letter blob; log:\n{server.log_tail()}"
        parts = names[0].split("/")
        assert len(parts) == 6 and parts[5].endswith(".json"), names[0]
        dead = json.loads(c.download_blob(names[0]).readall())
        assert [d["id"] for d in dead] == [event_id]
        assert dead[0]["deadLetterReason"] == "UndeliverableDueToClientError"
    finally:
        stop_herald(server)
