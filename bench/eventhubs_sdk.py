"""Send and receive rates of the official azure-eventhub SDK against `herald serve`.

    target/compat-venv/bin/python bench/eventhubs_sdk.py [--herald target/release/herald] [--seconds 5] [--runs 3]

Starts Herald on a temp data dir (plaintext AMQP, the emulator mode the SDK
supports), then per run: one EventHubProducerClient sends full batches of
100-byte events for --seconds; one EventHubConsumerClient reads the backlog
from "-1" with receive_batch. Prints events/s with the median, and the CPU
seconds Herald and this Python process spent, which says which side is the
bottleneck (the one near 1.0 CPU-second per wall second).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import requests
from azure.eventhub import EventData, EventHubConsumerClient, EventHubProducerClient


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--herald", default="target/release/herald")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="herald-sdk-bench-"))
    port, amqp = free_port(), free_port()
    token = "hrd_bench_" + secrets.token_hex(16)
    proc = subprocess.Popen(
        [args.herald, "serve", "--data-dir", str(root / "data"), "--listen", f"127.0.0.1:{port}",
         "--amqp-listen", "off", "--amqp-plain-listen", f"127.0.0.1:{amqp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ, HERALD_ADMIN_TOKEN=token))
    try:
        ca = root / "data" / "tls" / "ca.pem"
        base = f"https://localhost:{port}/api/v1/hubs/namespaces/default"
        deadline = time.time() + 30
        while True:
            try:
                if ca.exists() and requests.get(f"https://localhost:{port}/healthz", verify=str(ca), timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise SystemExit("herald did not start")
            time.sleep(0.1)
        h = {"Authorization": f"Bearer {token}"}
        sends, reads, herald_cpu, py_cpu = [], [], [], []
        for run in range(args.runs):
            hub = f"sdk-bench-{run}"
            r = requests.post(f"{base}/eventhubs", json={"name": hub, "partitionCount": 1}, headers=h, verify=str(ca))
            assert r.status_code == 201, r.text
            keys = requests.post(f"{base}/authorizationRules/RootManageSharedAccessKey/listKeys", headers=h,
                                 verify=str(ca)).json()
            cs = (keys["primaryConnectionString"].replace("sb://default.servicebus.localhost/", f"sb://127.0.0.1:{amqp}")
                  + f";EntityPath={hub};UseDevelopmentEmulator=true")

            producer = EventHubProducerClient.from_connection_string(cs)
            body = b"x" * 100
            sent = 0
            c0, p0, t0 = cpu_seconds(proc.pid), time.process_time(), time.time()
            with producer:
                while time.time() - t0 < args.seconds:
                    batch = producer.create_batch()
                    try:
                        while True:
                            batch.add(EventData(body))
                    except ValueError:  # the batch is full (1 MB)
                        pass
                    producer.send_batch(batch)
                    sent += len(batch)
            wall = time.time() - t0
            sends.append(sent / wall)
            herald_cpu.append((cpu_seconds(proc.pid) - c0) / wall)
            py_cpu.append((time.process_time() - p0) / wall)
            print(f"run {run}: send {sent / wall:,.0f} events/s ({sent} in {wall:.1f} s); "
                  f"CPU per wall second: herald {herald_cpu[-1]:.2f}, python {py_cpu[-1]:.2f}")

            consumer = EventHubConsumerClient.from_connection_string(cs, consumer_group="$Default")
            got = 0
            done = threading.Event()
            first = [0.0]

            def on_batch(ctx, events):
                nonlocal got
                if not first[0]:
                    first[0] = time.time()
                got += len(events)
                if got >= sent:
                    done.set()

            c0, p0, t0 = cpu_seconds(proc.pid), time.process_time(), time.time()
            th = threading.Thread(target=lambda: consumer.receive_batch(
                on_batch, max_batch_size=1000, starting_position="-1", partition_id="0", prefetch=3000), daemon=True)
            th.start()
            done.wait(timeout=300)
            wall = time.time() - t0
            consumer.close()
            th.join(timeout=10)
            reads.append(got / wall)
            print(f"run {run}: receive {got / wall:,.0f} events/s ({got} in {wall:.1f} s); "
                  f"CPU per wall second: herald {(cpu_seconds(proc.pid) - c0) / wall:.2f}, "
                  f"python {(time.process_time() - p0) / wall:.2f}")
        print(f"azure-eventhub send    median {statistics.median(sends):,.0f} events/s  runs {[round(x) for x in sends]}")
        print(f"azure-eventhub receive median {statistics.median(reads):,.0f} events/s  runs {[round(x) for x in reads]}")
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
