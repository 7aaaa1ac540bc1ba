#!/usr/bin/env python3
"""A paho-mqtt 2.x client driven by tests/interop.rs.

  paho_client.py sub  --port P --version 311|5 --topic T --qos Q --count N [--linger S]
  paho_client.py pub  --port P --version 311|5 --topic T --qos Q [--retain] --payload P [--payload P ...]
  paho_client.py will --port P --version 311|5 --topic T --qos Q --payload P

`sub` prints SUBSCRIBED once the SUBACK is in, then one line per message:
  MSG <topic> <qos> <retain 0|1> <payload as hex>
and exits 0 after N messages (plus --linger seconds to catch duplicates), or 3 on timeout.
`pub` publishes each payload in order at QoS Q, waits until each flow completes, and
disconnects. `will` connects with a will, prints CONNECTED, then waits to be killed.
Every run gives up after --timeout seconds, so a silent broker cannot hang the test.
"""

import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt


def out(line):
    print(line, flush=True)


def make_client(args, client_id):
    protocol = mqtt.MQTTv5 if args.version == "5" else mqtt.MQTTv311
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol
    )


def connect(client, args):
    if args.version == "5":
        client.connect("127.0.0.1", args.port, keepalive=30, clean_start=True)
    else:
        client.connect("127.0.0.1", args.port, keepalive=30)


def run_sub(args):
    client = make_client(args, args.id or "paho-sub")
    seen = []
    done = threading.Event()
    extra_deadline = [None]

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            out(f"CONNECT-FAILED {reason_code}")
            done.set()
            return
        client.subscribe(args.topic, qos=args.qos)

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        codes = [int(getattr(c, "value", c)) for c in reason_codes]
        out("SUBSCRIBED " + " ".join(str(c) for c in codes))

    def on_message(client, userdata, msg):
        seen.append(msg)
        out(
            f"MSG {msg.topic} {msg.qos} {int(msg.retain)} {msg.payload.hex()}"
        )
        if len(seen) == args.count:
            extra_deadline[0] = time.monotonic() + args.linger

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    connect(client, args)
    client.loop_start()
    deadline = time.monotonic() + args.timeout
    code = 3
    while time.monotonic() < deadline and not done.is_set():
        if extra_deadline[0] is not None and time.monotonic() >= extra_deadline[0]:
            code = 0
            break
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    return code


def run_pub(args):
    client = make_client(args, args.id or "paho-pub")
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    connect(client, args)
    client.loop_start()
    if not connected.wait(args.timeout):
        out("CONNECT-TIMEOUT")
        return 3
    for payload in args.payloads:
        info = client.publish(args.topic, payload.encode(), qos=args.qos, retain=args.retain)
        info.wait_for_publish(timeout=args.timeout)
        if not info.is_published():
            out(f"PUBLISH-TIMEOUT {payload}")
            return 3
        out(f"PUBLISHED {payload}")
    client.disconnect()
    client.loop_stop()
    return 0


def run_will(args):
    client = make_client(args, args.id or "paho-will")
    client.will_set(args.topic, args.payloads[0].encode(), qos=args.qos, retain=args.retain)
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    connect(client, args)
    client.loop_start()
    if not connected.wait(args.timeout):
        out("CONNECT-TIMEOUT")
        return 3
    out("CONNECTED")
    time.sleep(args.timeout)
    return 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sub", "pub", "will"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", choices=["311", "5"], default="311")
    parser.add_argument("--id")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--retain", action="store_true")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--linger", type=float, default=0.2)
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--payload", dest="payloads", action="append", default=[])
    args = parser.parse_args()
    return {"sub": run_sub, "pub": run_pub, "will": run_will}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
