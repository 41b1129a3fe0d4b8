"""Self-tests of the harness, independent of the daemon binary.

They prove that the tools the daemon tests rely on really work here: moto's
X-Ray backend, the Python and Node.js SDKs' UDP emitters, the fixtures and the
port helper.
"""

from __future__ import annotations

import json
import socket
import uuid

import pytest

import harness


def test_free_port_is_bindable(free_port):
    for kind, sock_type in (("tcp", socket.SOCK_STREAM), ("udp", socket.SOCK_DGRAM)):
        port = free_port(kind)
        assert 1024 <= port <= 65535
        with socket.socket(socket.AF_INET, sock_type) as s:
            s.bind(("127.0.0.1", port))


def test_udp_port_bound_reads_proc_net_udp(free_port):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert harness.udp_port_bound(port)
    assert not harness.udp_port_bound(port)


def test_moto_put_trace_segments_and_batch_get_traces(xray_client):
    doc = harness.segment_doc("harness-" + uuid.uuid4().hex[:8], annotations={"k": "v"})
    raw = json.dumps(doc)
    resp = xray_client.put_trace_segments(TraceSegmentDocuments=[raw])
    assert resp["UnprocessedTraceSegments"] == []
    trace = harness.wait_for_trace(xray_client, doc["trace_id"], timeout=5)
    assert [s["Id"] for s in trace["Segments"]] == [doc["id"]]
    # moto keeps the document as sent, so tests can compare bytes.
    assert trace["Segments"][0]["Document"] == raw


def test_moto_reports_unprocessed_segments(xray_client):
    resp = xray_client.put_trace_segments(TraceSegmentDocuments=['{"id": "abc"}'])
    assert len(resp["UnprocessedTraceSegments"]) == 1


@pytest.fixture
def udp_listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(5)
    yield s
    s.close()


def test_python_sdk_emits_datagrams(python_sdk, udp_listener):
    port = udp_listener.getsockname()[1]
    recorder, sent = python_sdk(f"127.0.0.1:{port}")
    seg = recorder.begin_segment("harness-py")
    seg.put_annotation("k", "v")
    recorder.begin_subsegment("child-op")
    recorder.end_subsegment()
    recorder.end_segment()

    data, _ = udp_listener.recvfrom(65536)
    header, body = harness.split_datagram(data)
    assert json.loads(header) == {"format": "json", "version": 1}
    doc = json.loads(body)
    assert (doc["trace_id"], doc["id"], doc["name"]) == (seg.trace_id, seg.id, "harness-py")
    assert doc["annotations"] == {"k": "v"}
    assert [s["name"] for s in doc["subsegments"]] == ["child-op"]
    assert sent == [data.decode()]


def test_python_sdk_streams_subsegments_separately(python_sdk, udp_listener):
    port = udp_listener.getsockname()[1]
    recorder, sent = python_sdk(f"127.0.0.1:{port}", streaming_threshold=0)
    recorder.begin_segment("harness-py-stream")
    for i in range(2):
        recorder.begin_subsegment(f"child-{i}")
        recorder.end_subsegment()
    recorder.end_segment()
    got = [udp_listener.recvfrom(65536)[0] for _ in range(3)]
    assert [d.decode() for d in got] == sent
    names = [json.loads(harness.split_datagram(d)[1])["name"] for d in got]
    assert names == ["child-0", "child-1", "harness-py-stream"]


def test_node_sdk_emits_a_datagram(node_sdk, udp_listener):
    port = udp_listener.getsockname()[1]
    info = node_sdk(f"127.0.0.1:{port}", "harness-node")
    data, _ = udp_listener.recvfrom(65536)
    header, body = harness.split_datagram(data)
    assert json.loads(header) == {"format": "json", "version": 1}
    doc = json.loads(body)
    assert (doc["trace_id"], doc["id"], doc["name"]) == (info["trace_id"], info["id"], "harness-node")
    assert doc["annotations"] == {"k": "v"}
    assert [s["name"] for s in doc["subsegments"]] == ["child-op"]


def test_fixture_datagrams_are_well_formed():
    files = sorted(harness.FIXTURES_DIR.glob("*.raw"))
    if not files:
        pytest.skip(f"no SDK datagram fixtures at {harness.FIXTURES_DIR}")
    for f in files:
        header, body = harness.split_datagram(f.read_bytes())
        assert json.loads(header) == {"format": "json", "version": 1}, f.name
        assert json.loads(body)["id"], f.name
