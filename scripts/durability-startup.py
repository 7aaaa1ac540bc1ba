#!/usr/bin/env python3
"""Start-up time of ringcast with many retained messages and persistent sessions.

Fills a fresh data directory through a running broker (RETAINED retained QoS 0 messages on
`ret/<i/1000>/<i%1000>` from one pipelined connection, then SESSIONS persistent 3.1.1 sessions,
each subscribed to `dev/<i>/cmd` at QoS 1), then times three starts:

1. after SIGKILL (no shutdown work: the whole log is replayed),
2. after SIGTERM (the shutdown compacts the log into a snapshot; its time is shown too),
3. after SIGKILL again (snapshot plus a short log).

"ready" is from exec to the "ringcast listening" line, printed only once every shard has
replayed; "replay" is the broker's own "started from ... in N ms". Loopback only; every wait
is bounded.

    scripts/durability-startup.py --broker target/release/ringcast --dir /tmp/startup
"""
import argparse
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

LIMIT_S = 120


def varint(n):
    out = bytearray()
    while True:
        byte = n % 128
        n //= 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def s(text):
    data = text.encode()
    return struct.pack(">H", len(data)) + data


def packet(kind, body):
    return bytes([kind]) + varint(len(body)) + body


def connect(client_id, clean):
    flags = 0x02 if clean else 0x00
    return packet(0x10, s("MQTT") + bytes([4, flags]) + struct.pack(">H", 600) + s(client_id))


def publish(topic, payload, retain=False, qos=0, pkid=1):
    head = 0x30 | (qos << 1) | (1 if retain else 0)
    body = s(topic) + (struct.pack(">H", pkid) if qos else b"") + payload
    return packet(head, body)


def subscribe(pkid, topic_filter, qos):
    return packet(0x82, struct.pack(">H", pkid) + s(topic_filter) + bytes([qos]))


DISCONNECT = b"\xe0\x00"


def read_until_closed(sock):
    sock.settimeout(LIMIT_S)
    while sock.recv(65536):
        pass


def start(broker, data_dir, port):
    began = time.monotonic()
    proc = subprocess.Popen(
        [broker, "--listen", f"127.0.0.1:{port}", "--shards", "2", "--data-dir", data_dir,
         "--log-level", "info"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in os.environ.items() if k != "RUST_LOG"})
    replay_ms = None
    deadline = began + LIMIT_S
    for line in proc.stdout:
        m = re.search(r"started from .* in (\d+) ms", line)
        if m:
            replay_ms = int(m.group(1))
        if "ringcast listening" in line:
            return proc, time.monotonic() - began, replay_ms
        if time.monotonic() > deadline:
            break
    proc.kill()
    sys.exit(f"the broker did not start: {line.strip() if 'line' in dir() else ''}")


def stop(proc, sig):
    began = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=LIMIT_S)
    return time.monotonic() - began


def fill(port, retained, sessions):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(connect("filler", True))
    chunk = bytearray()
    for i in range(retained):
        chunk += publish(f"ret/{i // 1000}/{i % 1000}", b"retained-payload", retain=True)
        if len(chunk) > 1 << 20:
            sock.sendall(chunk)
            chunk.clear()
    # A QoS 1 publish behind them: its PUBACK says every one before it was handled.
    chunk += publish("fill/done", b"x", qos=1, pkid=7) + DISCONNECT
    sock.sendall(chunk)
    read_until_closed(sock)
    batch = 1000
    for first in range(0, sessions, batch):
        socks = []
        for i in range(first, min(first + batch, sessions)):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(connect(f"device-{i}", False) + subscribe(1, f"dev/{i}/cmd", 1) + DISCONNECT)
            socks.append(c)
        for c in socks:
            read_until_closed(c)
            c.close()


def main():
    args = argparse.ArgumentParser()
    args.add_argument("--broker", required=True)
    args.add_argument("--dir", required=True)
    args.add_argument("--retained", type=int, default=1_000_000)
    args.add_argument("--sessions", type=int, default=100_000)
    args.add_argument("--port", type=int, default=18895)
    a = args.parse_args()
    shutil.rmtree(a.dir, ignore_errors=True)
    data = os.path.join(a.dir, "data")
    proc, _, _ = start(a.broker, data, a.port)
    began = time.monotonic()
    fill(a.port, a.retained, a.sessions)
    filled = time.monotonic() - began
    size = lambda: sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))
    stop(proc, signal.SIGKILL)
    rows = [f"filled {a.retained:,} retained + {a.sessions:,} sessions in {filled:.1f} s; "
            f"data {size() / 2**20:.0f} MiB"]
    proc, ready, replay = start(a.broker, data, a.port)
    rows.append(f"| after SIGKILL, whole log | {ready:.2f} s | {replay} ms | |")
    shutdown = stop(proc, signal.SIGTERM)
    proc, ready, replay = start(a.broker, data, a.port)
    rows.append(f"| after SIGTERM (snapshot) | {ready:.2f} s | {replay} ms | shutdown {shutdown:.2f} s, "
                f"data {size() / 2**20:.0f} MiB |")
    stop(proc, signal.SIGKILL)
    proc, ready, replay = start(a.broker, data, a.port)
    rows.append(f"| after SIGKILL, snapshot + log | {ready:.2f} s | {replay} ms | |")
    stop(proc, signal.SIGTERM)
    print(rows[0])
    print()
    print("| start | ready (exec → listening) | replay (broker's log) | notes |")
    print("| --- | --- | --- | --- |")
    print("\n".join(rows[1:]))
    shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
