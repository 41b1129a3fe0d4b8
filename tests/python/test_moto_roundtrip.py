"""End to end: real X-Ray SDKs -> UDP -> the daemon -> PutTraceSegments -> moto.

The daemon runs in local mode (`-o`) with `--endpoint` pointing at a moto
server on loopback; the test reads the trace back with boto3's BatchGetTraces.
"""

from __future__ import annotations

import json
import re
import uuid

import harness

SENT_RE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[Info\] Successfully sent batch of (\d+) segments "
    r"\(\d+\.\d{3} seconds\)$",
    re.MULTILINE,
)


def start_uploading_daemon(daemon, moto_server):
    return daemon("-o", "-n", harness.TEST_REGION, "--endpoint", moto_server.url)


def received_udp(d) -> float:
    return harness.metric(d.metrics(), "xray_segments_received_total", transport="udp")


def body_of(datagram: str) -> str:
    return datagram.split("\n", 1)[1]


def test_python_sdk_segment_reaches_xray(daemon, moto_server, xray_client, python_sdk):
    d = start_uploading_daemon(daemon, moto_server)
    recorder, sent = python_sdk(d.daemon_address)
    name = "py-roundtrip-" + uuid.uuid4().hex[:8]

    segment = recorder.begin_segment(name)
    segment.put_annotation("k", "v")
    recorder.begin_subsegment("child-op")
    recorder.end_subsegment()
    recorder.end_segment()
    assert len(sent) == 1, sent

    trace = harness.wait_for_trace(xray_client, segment.trace_id, timeout=15)
    assert [s["Id"] for s in trace["Segments"]] == [segment.id]
    document = trace["Segments"][0]["Document"]
    doc = json.loads(document)
    assert doc["name"] == name
    assert doc["id"] == segment.id
    assert doc["trace_id"] == segment.trace_id
    assert doc["annotations"] == {"k": "v"}
    assert [s["name"] for s in doc["subsegments"]] == ["child-op"]
    # The daemon forwards the body as it was received, never re-serialised.
    assert document == body_of(sent[0])

    d.wait_for_log(SENT_RE.pattern, timeout=5)
    res = d.stop()
    assert res.returncode == 0, res.log
    assert not res.killed


def test_python_sdk_streamed_subsegments_reach_xray(daemon, moto_server, xray_client, python_sdk):
    d = start_uploading_daemon(daemon, moto_server)
    recorder, sent = python_sdk(d.daemon_address, streaming_threshold=0)
    name = "py-stream-" + uuid.uuid4().hex[:8]

    segment = recorder.begin_segment(name)
    for i in range(2):
        recorder.begin_subsegment(f"child-{i}")
        recorder.end_subsegment()
    recorder.end_segment()
    assert len(sent) == 3, sent

    trace = harness.wait_for_trace(xray_client, segment.trace_id, timeout=15, min_segments=3)
    documents = {s["Id"]: s["Document"] for s in trace["Segments"]}
    expected = {json.loads(body_of(dg))["id"]: body_of(dg) for dg in sent}
    assert documents == expected
    assert json.loads(documents[segment.id])["name"] == name


def test_node_sdk_segment_reaches_xray(daemon, moto_server, xray_client, node_sdk):
    d = start_uploading_daemon(daemon, moto_server)
    name = "node-roundtrip-" + uuid.uuid4().hex[:8]
    info = node_sdk(d.daemon_address, name)

    trace = harness.wait_for_trace(xray_client, info["trace_id"], timeout=15)
    assert [s["Id"] for s in trace["Segments"]] == [info["id"]]
    doc = json.loads(trace["Segments"][0]["Document"])
    assert doc["name"] == name
    assert doc["id"] == info["id"]
    assert doc["annotations"] == {"k": "v"}
    assert [s["name"] for s in doc["subsegments"]] == ["child-op"]


def test_many_segments_all_arrive(daemon, moto_server, xray_client):
    """More than one PutTraceSegments batch (the batch limit is 50)."""
    d = start_uploading_daemon(daemon, moto_server)
    docs = [harness.segment_doc(f"bulk-{i}") for i in range(120)]
    for doc in docs:
        d.send(harness.datagram(doc))

    bodies = {doc["trace_id"]: harness.split_datagram(harness.datagram(doc))[1].decode()
              for doc in docs}
    pending = {doc["trace_id"]: doc["id"] for doc in docs}
    documents = {}

    def all_arrived():
        ids = list(pending)
        for i in range(0, len(ids), 5):
            resp = xray_client.batch_get_traces(TraceIds=ids[i:i + 5])
            for trace in resp.get("Traces", []):
                if [s["Id"] for s in trace["Segments"]] == [pending.get(trace["Id"])]:
                    pending.pop(trace["Id"])
                    documents[trace["Id"]] = trace["Segments"][0]["Document"]
        return not pending

    harness.poll(all_arrived, timeout=20, interval=0.5,
                 what="all 120 segments in moto")
    # Compact JSON as sent, byte for byte (a re-serialising daemon would add spaces).
    assert documents == bodies
    res = d.stop()
    assert res.returncode == 0, res.log
    sent = sum(int(n) for n in SENT_RE.findall(res.log))
    assert sent == 120, f"log reports {sent} segments sent, expected 120:\n{res.log}"


def test_segments_buffered_at_sigterm_are_flushed(daemon, moto_server, xray_client):
    """SIGTERM right after sending: the daemon flushes before it exits 0."""
    d = start_uploading_daemon(daemon, moto_server)
    docs = [harness.segment_doc(f"flush-{i}") for i in range(5)]
    for doc in docs:
        d.send(harness.datagram(doc))
    # Wait until the daemon has read them (its own counter), then stop it at
    # once, well before the 1 s idle flush would have sent them.
    harness.poll(lambda: received_udp(d) >= len(docs), timeout=5, interval=0.02,
                 what="xray_segments_received_total{transport=\"udp\"} to reach 5")
    res = d.stop()
    assert res.returncode == 0, res.log
    for doc in docs:
        trace = harness.wait_for_trace(xray_client, doc["trace_id"], timeout=5)
        assert trace["Segments"][0]["Id"] == doc["id"]
