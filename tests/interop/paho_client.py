#!/usr/bin/env python3
"""A paho-mqtt 2.x client driven by tests/interop.rs.

  paho_client.py sub  --port P --version 311|5 --topic T --qos Q --count N [--linger S]
  paho_client.py pub  --port P --version 311|5 --topic T --qos Q [--retain] --payload P [--payload P ...]
  paho_client.py will --port P --version 311|5 --topic T --qos Q --payload P
  paho_client.py session --port P --version 5 --topic T --qos Q --session-expiry S [--subscribe] --count N

MQTT 5 extras: `pub --user-prop K=V --content-type C --response-topic R --correlation HEX
--format 0|1 --expiry S` sets PUBLISH properties; `sub --props` prints after each MSG line
  PROPS pfi=<n> ct=<content type> rt=<response topic> cd=<correlation hex> up=<k=v,...> mei=<0|1>
(mei says whether a Message Expiry Interval came). `session` connects with Clean Start 0 and
Session Expiry Interval S, prints SESSION-PRESENT 0|1, subscribes if asked, waits for N
messages (MSG lines as `sub`), and disconnects.

`sub` prints SUBSCRIBED once the SUBACK is in, then one line per message:
  MSG <topic> <qos> <retain 0|1> <payload as hex>
and exits 0 after N messages (plus up to --linger seconds to catch a duplicate), or 3 on
timeout.
`pub` publishes each payload in order at QoS Q, waits until each flow completes, and
disconnects. `will` connects with a will, prints CONNECTED, then waits to be killed.
Every run gives up after --timeout seconds, so a silent broker cannot hang the test.
"""

import argparse
import sys
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


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


def props_line(msg):
    p = msg.properties
    get = lambda name, default="": getattr(p, name, default) if p is not None else default
    user = ",".join(f"{k}={v}" for k, v in get("UserProperty", []))
    corr = get("CorrelationData", b"") or b""
    mei = int(p is not None and hasattr(p, "MessageExpiryInterval"))
    return (
        f"PROPS pfi={get('PayloadFormatIndicator', 0)} ct={get('ContentType')} "
        f"rt={get('ResponseTopic')} cd={corr.hex()} up={user} mei={mei}"
    )


def publish_properties(args):
    if args.version != "5":
        return None
    props = Properties(PacketTypes.PUBLISH)
    any_set = False
    for pair in args.user_props:
        key, _, value = pair.partition("=")
        props.UserProperty = (key, value)
        any_set = True
    if args.content_type:
        props.ContentType = args.content_type
        any_set = True
    if args.response_topic:
        props.ResponseTopic = args.response_topic
        any_set = True
    if args.correlation:
        props.CorrelationData = bytes.fromhex(args.correlation)
        any_set = True
    if args.format is not None:
        props.PayloadFormatIndicator = args.format
        any_set = True
    if args.expiry is not None:
        props.MessageExpiryInterval = args.expiry
        any_set = True
    return props if any_set else None


def count_events(count):
    """Events for a client that waits for `count` messages: `enough` once they came, `extra`
    once one more came (a duplicate)."""
    enough, extra = threading.Event(), threading.Event()
    if count == 0:
        enough.set()
    return enough, extra


def counted(seen, count, enough, extra):
    """Called after each message: sets `enough` and `extra` as `seen` reaches them."""
    if len(seen) >= count:
        enough.set()
    if len(seen) > count:
        extra.set()


def run_session(args):
    client = make_client(args, args.id or "paho-session")
    seen = []
    subscribed = threading.Event()
    connected = threading.Event()
    enough, extra = count_events(args.count)

    def on_connect(client, userdata, flags, reason_code, properties):
        out(f"SESSION-PRESENT {int(flags.session_present)}")
        connected.set()

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        out("SUBSCRIBED")
        subscribed.set()

    def on_message(client, userdata, msg):
        seen.append(msg)
        out(f"MSG {msg.topic} {msg.qos} {int(msg.retain)} {msg.payload.hex()}")
        counted(seen, args.count, enough, extra)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = args.session_expiry
    client.connect(
        "127.0.0.1", args.port, keepalive=30, clean_start=False, properties=props
    )
    client.loop_start()
    deadline = time.monotonic() + args.timeout
    if not connected.wait(args.timeout):
        out("CONNECT-TIMEOUT")
        return 3
    if args.subscribe:
        client.subscribe(args.topic, qos=args.qos)
        if not subscribed.wait(args.timeout):
            return 3
    enough.wait(max(0.0, deadline - time.monotonic()))
    if enough.is_set():
        extra.wait(args.linger)
    client.disconnect()
    client.loop_stop()
    return 0 if len(seen) >= args.count else 3


def run_sub(args):
    client = make_client(args, args.id or "paho-sub")
    seen = []
    failed = threading.Event()
    enough, extra = count_events(args.count)

    def on_connect(client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            out(f"CONNECT-FAILED {reason_code}")
            failed.set()
            enough.set()
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
        if args.props:
            out(props_line(msg))
        counted(seen, args.count, enough, extra)

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    connect(client, args)
    client.loop_start()
    code = 3
    if enough.wait(args.timeout) and not failed.is_set():
        extra.wait(args.linger)
        code = 0
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
        info = client.publish(
            args.topic,
            payload.encode(),
            qos=args.qos,
            retain=args.retain,
            properties=publish_properties(args),
        )
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
    lost = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.on_disconnect = lambda *a: lost.set()
    connect(client, args)
    client.loop_start()
    if not connected.wait(args.timeout):
        out("CONNECT-TIMEOUT")
        return 3
    out("CONNECTED")
    # Killed here by the test; or the broker dropped us, or the test never came back.
    if lost.wait(args.timeout):
        out("CONNECTION-LOST")
    return 3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["sub", "pub", "will", "session"])
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
    parser.add_argument("--props", action="store_true")
    parser.add_argument("--user-prop", dest="user_props", action="append", default=[])
    parser.add_argument("--content-type")
    parser.add_argument("--response-topic")
    parser.add_argument("--correlation")
    parser.add_argument("--format", type=int)
    parser.add_argument("--expiry", type=int)
    parser.add_argument("--session-expiry", type=int, default=0)
    parser.add_argument("--subscribe", action="store_true")
    args = parser.parse_args()
    modes = {"sub": run_sub, "pub": run_pub, "will": run_will, "session": run_session}
    return modes[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
