#!/usr/bin/env python3
"""Summarises scripts/compare.sh results (JSON lines) as a Markdown table of medians, with
ratios against mosquitto, rumqttd and the generator's --sink ceiling, then checks the targets
of issue 6."""
import json
import sys

from tables import fmt
from tables import med as median

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
brokers = [b for b in ["ringcast", "mosquitto", "rumqttd"] if any(r["broker"] == b for r in rows)]
scenarios = list(dict.fromkeys(r["scenario"] for r in rows))


def failed(r):
    """A run that errored before delivering anything says nothing about throughput."""
    return r["result"].get("errors") and not r["result"].get("deliveries") and not r["result"].get("connections")


def runs(broker, scenario):
    return [r for r in rows
            if r["broker"] == broker and r["scenario"] == scenario and r["result"] and not failed(r)]


def med(broker, scenario, get):
    return median(get(r) for r in runs(broker, scenario))


def ratio(a, b):
    return f"{a / b:.1f}×" if a and b else "–"


deliv = lambda r: r["result"]["deliveries_per_s"]
p99 = lambda r: r["result"]["latency_us"]["p99"]
mem = lambda r: r["hwm_kib"] / 1024 if r["hwm_kib"] else None
lost = lambda r: r["result"]["lost"]

head = ["scenario"] + [f"{b} deliv/s" for b in brokers] + ["sink", "rc % sink"]
head += [f"rc / {b}" for b in brokers[1:]]
head += ["p99 µs " + " / ".join(brokers), "peak MiB " + " / ".join(brokers), "lost " + " / ".join(brokers)]
print("| " + " | ".join(head) + " |")
print("|" + " --- |" * len(head))
checks = []
for s in scenarios:
    if s.startswith("conns"):
        continue
    d = {b: med(b, s, deliv) for b in brokers}
    # The sink ran the same scenario at the same QoS (none for wildcard and open loop).
    sink = med("sink", s, deliv)
    cells = [s] + [fmt(d[b]) for b in brokers]
    cells += [fmt(sink), f"{d['ringcast'] / sink * 100:.0f}%" if sink and d["ringcast"] else "–"]
    cells += [ratio(d["ringcast"], d[b]) for b in brokers[1:]]
    cells += [" / ".join(fmt(med(b, s, p99)) for b in brokers)]
    cells += [" / ".join(f"{med(b, s, mem):.1f}" if med(b, s, mem) else "–" for b in brokers)]
    cells += [" / ".join(fmt(med(b, s, lost)) for b in brokers)]
    print("| " + " | ".join(cells) + " |")
    rc, mq, rq = d.get("ringcast"), d.get("mosquitto"), d.get("rumqttd")
    share = 0.6 if s.endswith("-q1") else 0.7 if s.startswith("fanout") else None
    if share and sink and rc:
        checks.append((f"{s}: ringcast ≥ {share:.0%} of sink", rc >= share * sink, f"{rc / sink * 100:.0f}%"))
    if s.startswith("fanout"):
        if rq and rc:
            checks.append((f"{s}: ringcast ≥ 1.5× rumqttd", rc >= 1.5 * rq, ratio(rc, rq)))
    if s.startswith("fanin") and sink and rc:
        checks.append((f"{s}: ringcast ≥ 50% of sink", rc >= 0.5 * sink, f"{rc / sink * 100:.0f}%"))
    want = {"pairs-100": 6, "fanin-100": 5, "wildcard-10k": 20}.get(s)
    if want and rq and rc:
        checks.append((f"{s}: ringcast ≥ {want}× rumqttd", rc >= want * rq, ratio(rc, rq)))
    if s == "open-fanout-100":
        a, b = med("ringcast", s, p99), med("mosquitto", s, p99)
        if a and b:
            checks.append((f"{s}: ringcast p99 ≤ mosquitto p99", a <= b, f"{a:.0f} vs {b:.0f} µs"))
    ma, mb = med("ringcast", s, mem), med("mosquitto", s, mem)
    if ma and mb:
        checks.append((f"{s}: ringcast peak memory < 2× mosquitto", ma < 2 * mb, f"{ma:.1f} vs {mb:.1f} MiB"))

conns = [s for s in scenarios if s.startswith("conns")]
if conns:
    print()
    print("| scenario | " + " | ".join(f"{b} conn/s" for b in brokers) + " | bytes/conn " + " / ".join(brokers) + " | peak MiB " + " / ".join(brokers) + " |")
    print("| --- |" + " --- |" * (len(brokers) + 2))
    for s in conns:
        rate = [fmt(med(b, s, lambda r: r["result"]["connect_per_s"])) for b in brokers]
        per = [fmt(med(b, s, lambda r: r["result"]["rss_per_connection_bytes"])) for b in brokers]
        peak = [f"{med(b, s, mem):.1f}" if med(b, s, mem) else "–" for b in brokers]
        print(f"| {s} | " + " | ".join(rate) + " | " + " / ".join(per) + " | " + " / ".join(peak) + " |")
        ma, mb = med("ringcast", s, mem), med("mosquitto", s, mem)
        if ma and mb:
            checks.append((f"{s}: ringcast peak memory < 2× mosquitto", ma < 2 * mb, f"{ma:.1f} vs {mb:.1f} MiB"))

print()
n = len({(r["broker"], r["scenario"]) for r in rows})
print(f"Medians of {len(rows)} runs ({n} broker × scenario cells). Targets:")
print()
for what, ok, value in checks:
    print(f"- {'PASS' if ok else 'FAIL'} {what} ({value})")
