//! Micro-benchmarks of the per-segment and per-batch hot paths (issue 7):
//! header parsing, request body building, SigV4 signing of a batch, and batching.
//!
//! `cargo bench --bench hot_paths` (add `-- --quick` for a fast pass; filters work as usual,
//! e.g. `cargo bench --bench hot_paths -- sigv4`).

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use xray_daemon::batch::Batcher;
use xray_daemon::segment::{header_is_valid, split_datagram};
use xray_daemon::upload::body::put_trace_segments_body;

const CANONICAL: &[u8] = br#"{"format":"json","version":1}"#;
const SPACED: &[u8] = br#"{ "format" : "json", "version" : 1 }"#;

/// A compact segment document of exactly `size` bytes, shaped like an SDK's.
fn document(size: usize, seq: usize) -> Vec<u8> {
    let mut d = format!(
        "{{\"trace_id\":\"1-65f0a1b2-{seq:024x}\",\"id\":\"{:016x}\",\"name\":\"svc\",\
         \"start_time\":1700000000.123,\"end_time\":1700000000.456,\
         \"http\":{{\"request\":{{\"method\":\"GET\",\"url\":\"http://svc/api\"}},\"response\":{{\"status\":200}}}},\
         \"annotations\":{{\"k\":\"v\"}},\"metadata\":{{\"pad\":\"",
        seq as u64 * 0x9e37_79b9 + 1
    )
    .into_bytes();
    let tail = b"\"}}";
    let pad = size.saturating_sub(d.len() + tail.len());
    d.extend((0..pad).map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789 -_."[i % 40]));
    d.extend_from_slice(tail);
    d
}

fn datagram(header: &[u8], doc: &[u8]) -> Vec<u8> {
    [header, b"\n", doc].concat()
}

fn header_parse(c: &mut Criterion) {
    let doc = document(1000, 1);
    let mut group = c.benchmark_group("header");
    for (name, header) in [("canonical", CANONICAL), ("spaced", SPACED)] {
        group.bench_with_input(BenchmarkId::new("header_is_valid", name), header, |b, h| {
            b.iter(|| header_is_valid(black_box(h)))
        });
        let dgram = datagram(header, &doc);
        group.throughput(Throughput::Bytes(dgram.len() as u64));
        group.bench_with_input(
            BenchmarkId::new("split_datagram_1000B", name),
            &dgram,
            |b, d| b.iter(|| split_datagram(black_box(d)).map(<[u8]>::len)),
        );
    }
    group.finish();
}

fn body_building(c: &mut Criterion) {
    let docs: Vec<Vec<u8>> = (0..50).map(|i| document(1000, i)).collect();
    let mut group = c.benchmark_group("body");
    group.throughput(Throughput::Bytes(docs.iter().map(|d| d.len() as u64).sum()));
    group.bench_function("put_trace_segments_50x1000B", |b| {
        b.iter(|| put_trace_segments_body(black_box(&docs).iter().map(Vec::as_slice)))
    });
    group.finish();
}

fn signing(c: &mut Criterion) {
    let docs: Vec<Vec<u8>> = (0..50).map(|i| document(1000, i)).collect();
    let body = put_trace_segments_body(docs.iter().map(Vec::as_slice));
    let credentials = Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "bench",
    );
    let identity = credentials.clone().into();
    let length = body.len().to_string();
    let headers = [
        ("host", "xray.us-east-1.amazonaws.com"),
        ("content-type", "application/x-amz-json-1.1"),
        ("content-length", length.as_str()),
        ("x-amzn-xray-timestamp", "1700000000.123456789"),
    ];
    let sign_with = |body: SignableBody<'_>| {
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("xray")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .unwrap()
            .into();
        let request =
            SignableRequest::new("POST", "/TraceSegments", headers.iter().copied(), body).unwrap();
        sign(request, &params).unwrap()
    };
    let mut group = c.benchmark_group("sigv4");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function(format!("sign_put_trace_segments_{}B", body.len()), |b| {
        b.iter(|| sign_with(SignableBody::Bytes(black_box(&body))))
    });
    // The same request with the payload hash left out: the difference is SHA-256 of the body.
    group.bench_function("sign_headers_only_unsigned_payload", |b| {
        b.iter(|| sign_with(SignableBody::UnsignedPayload))
    });
    // What the daemon does: the same request signed with the key kept between calls.
    let signer = xray_daemon::aws::sign::Signer::default();
    let mut request = http::Request::builder()
        .method("POST")
        .uri("https://xray.us-east-1.amazonaws.com/TraceSegments");
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request.body(bytes::Bytes::from(body.clone())).unwrap();
    group.bench_function(
        format!("sign_put_trace_segments_{}B_kept_key", body.len()),
        |b| {
            b.iter(|| {
                let mut request = request.clone();
                signer
                    .sign(&mut request, &credentials, "us-east-1", SystemTime::now())
                    .unwrap();
                request
            })
        },
    );
    group.finish();
}

fn batching(c: &mut Criterion) {
    let docs: Vec<Box<[u8]>> = (0..50)
        .map(|i| document(1000, i).into_boxed_slice())
        .collect();
    let now = tokio::time::Instant::now();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(50));
    group.bench_function("batcher_50_pushes", |b| {
        let mut batcher = Batcher::new(50, Duration::from_secs(1));
        b.iter(|| {
            let mut out = None;
            for i in 0..50 {
                out = batcher.push(black_box(i), now);
            }
            out.map(|batch| batch.len())
        })
    });
    // With owned documents moved in, as the daemon does (cloning them is part of the cost).
    group.bench_function("batcher_50_pushes_owned_docs", |b| {
        let mut batcher = Batcher::new(50, Duration::from_secs(1));
        b.iter_batched(
            || docs.clone(),
            |docs| {
                let mut out = None;
                for doc in docs {
                    out = batcher.push(doc, now);
                }
                out.map(|batch| batch.len())
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = hot_paths;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = header_parse, body_building, signing, batching
}
criterion_main!(hot_paths);
