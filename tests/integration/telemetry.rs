//! `PutTelemetryRecords` end to end: the reporter against a real `XraySink` pointed at the
//! fake X-Ray (signed requests, real SDK errors), and the identity against a fake IMDS.
//! Each test's reporter has its own hostname, so records from other reporters (an in-process
//! daemon's own) are told apart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use prometheus::Registry;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use xray_daemon::aws::AwsSettings;
use xray_daemon::budget::MemoryBudget;
use xray_daemon::metrics::{Metrics, Transport};
use xray_daemon::telemetry::{self, BackendErrors, TelemetryIdentity};
use xray_daemon::upload::retry::Failure;
use xray_daemon::upload::xray::XraySink;
use xray_daemon::upload::Sink;

use crate::{args_for, datagram, eventually, send_paced, FakeXray, Reply, Running};

const TICK: Duration = Duration::from_millis(200);
const ARN: &str = "arn:aws:ec2:us-east-1:123456789012:instance/i-0telemetry";

fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Sync {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn identity(hostname: &str) -> TelemetryIdentity {
    TelemetryIdentity {
        ec2_instance_id: format!("i-{hostname}"),
        hostname: hostname.to_owned(),
        resource_arn: ARN.to_owned(),
    }
}

async fn xray_sink(endpoint: &str) -> Sink {
    crate::set_test_credentials();
    let settings = AwsSettings {
        region: crate::fake_xray::REGION.to_owned(),
        ..AwsSettings::default()
    };
    let aws = xray_daemon::aws::setup(&settings, &env(&[]))
        .await
        .expect("no proxy, no error");
    let target = Arc::new(aws.xray_target(endpoint).expect("a valid endpoint"));
    Sink::Xray(XraySink::new(target, &aws.sdk_config, None).expect("a valid endpoint"))
}

fn own_metrics(received: u64) -> Metrics {
    let metrics = Metrics::new(Registry::new(), MemoryBudget::new(1 << 20)).unwrap();
    metrics.ingest(Transport::Udp).received.inc_by(received);
    metrics
}

/// A reporter task and its stop token.
struct Reporter {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reporter {
    fn start(
        identity: TelemetryIdentity,
        metrics: &Metrics,
        errors: &Arc<BackendErrors>,
        sink: watch::Receiver<Arc<Sink>>,
        interval: Duration,
    ) -> Reporter {
        let stop = CancellationToken::new();
        let task = tokio::spawn(telemetry::run(
            identity,
            metrics.clone(),
            Arc::clone(errors),
            sink,
            interval,
            stop.clone(),
        ));
        Reporter { stop, task }
    }

    /// Stops the reporter; it must finish within its final-send bound.
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("the reporter stops promptly")
            .unwrap();
    }
}

/// The accepted call bodies from the reporter with `hostname`.
fn bodies(fake: &FakeXray, hostname: &str) -> Vec<Value> {
    fake.telemetry()
        .into_iter()
        .filter(|body| body["Hostname"] == hostname)
        .collect()
}

/// Every record delivered for `hostname`, in order.
fn records(fake: &FakeXray, hostname: &str) -> Vec<Value> {
    bodies(fake, hostname)
        .iter()
        .flat_map(|body| {
            body["TelemetryRecords"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect()
}

fn sum(records: &[Value], field: &str) -> u64 {
    records.iter().map(|r| r[field].as_u64().unwrap_or(0)).sum()
}

fn errors_sum(records: &[Value], field: &str) -> u64 {
    records
        .iter()
        .map(|r| r["BackendConnectionErrors"][field].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn records_carry_counts_and_identity_once_segments_arrive() {
    let fake = FakeXray::start().await;
    let daemon = Running::start(args_for(&fake)).await;
    let hostname = "telemetry-counts";
    let identity = telemetry::resolve_identity(
        true,
        Some(ARN),
        &env(&[("AWS_INSTANCE_ID", "i-0counts"), ("AWS_HOSTNAME", hostname)]),
    )
    .await;
    let errors = Arc::new(BackendErrors::default());
    let (_sink_tx, sink) = watch::channel(Arc::new(xray_sink(&fake.endpoint()).await));
    let reporter = Reporter::start(identity, &daemon.metrics, &errors, sink, TICK);

    tokio::time::sleep(TICK * 4).await;
    assert!(
        bodies(&fake, hostname).is_empty(),
        "no record before the first segment"
    );

    let datagrams: Vec<Vec<u8>> = (0..5)
        .map(|i| datagram(&format!("{i:016x}"), 200))
        .collect();
    send_paced(daemon.udp, &datagrams, 100).await;
    let counted = eventually(Duration::from_secs(10), || {
        let records = records(&fake, hostname);
        sum(&records, "SegmentsReceivedCount") == 5 && sum(&records, "SegmentsSentCount") == 5
    })
    .await;
    let records = records(&fake, hostname);
    assert!(
        counted,
        "records never added up to 5 received, 5 sent: {records:#?}"
    );
    reporter.stop().await;

    let bodies = bodies(&fake, hostname);
    for body in &bodies {
        assert_eq!(body["EC2InstanceId"], "i-0counts");
        assert_eq!(body["ResourceARN"], ARN);
        let count = body["TelemetryRecords"].as_array().unwrap().len();
        assert!((1..=10).contains(&count), "{body}");
    }
    for record in &records {
        assert!(record["Timestamp"].is_number(), "{record}");
        for field in [
            "SegmentsReceivedCount",
            "SegmentsSentCount",
            "SegmentsSpilloverCount",
            "SegmentsRejectedCount",
        ] {
            assert!(record[field].is_u64(), "{field} missing in {record}");
        }
        for field in [
            "TimeoutCount",
            "ConnectionRefusedCount",
            "HTTPCode4XXCount",
            "HTTPCode5XXCount",
            "UnknownHostCount",
            "OtherCount",
        ] {
            assert_eq!(
                record["BackendConnectionErrors"][field], 0,
                "{field} in {record}"
            );
        }
    }
    let delivered = self::records(&fake, hostname).len() as u64;
    assert_eq!(daemon.metrics.telemetry_records_sent.get(), delivered);
    assert_eq!(fake.bad_signatures(), 0);
    daemon.shutdown().await;
}

#[tokio::test]
async fn failed_calls_are_counted_in_the_next_record_and_their_records_resent() {
    let fake = FakeXray::start().await;
    fake.script_telemetry([
        Reply::Fail(500, "InternalFailure"),
        Reply::Fail(400, "ThrottledException"),
    ]);
    let hostname = "telemetry-failures";
    let metrics = own_metrics(1);
    let errors = Arc::new(BackendErrors::default());
    // A failed upload, as the uploader reports it, lands in the first record.
    errors.record(&Failure::Timeout);
    let (_sink_tx, sink) = watch::channel(Arc::new(xray_sink(&fake.endpoint()).await));
    let reporter = Reporter::start(identity(hostname), &metrics, &errors, sink, TICK);

    let arrived = eventually(Duration::from_secs(10), || {
        !bodies(&fake, hostname).is_empty()
    })
    .await;
    reporter.stop().await;
    assert!(arrived, "no telemetry call succeeded");
    let first = &bodies(&fake, hostname)[0]["TelemetryRecords"];
    let first = first.as_array().unwrap();
    assert_eq!(
        first.len(),
        3,
        "two re-queued records and the new one: {first:#?}"
    );
    let errors_of = |i: usize, field: &str| first[i]["BackendConnectionErrors"][field].clone();
    assert_eq!(errors_of(0, "TimeoutCount"), 1);
    assert_eq!(errors_of(1, "HTTPCode5XXCount"), 1);
    assert_eq!(errors_of(2, "HTTPCode4XXCount"), 1);
    assert_eq!(first[0]["SegmentsReceivedCount"], 1);
    assert_eq!(first[1]["SegmentsReceivedCount"], 0);
}

#[tokio::test]
async fn refused_connections_are_counted_and_a_swapped_sink_is_used() {
    let fake = FakeXray::start().await;
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let hostname = "telemetry-refused";
    let metrics = own_metrics(1);
    let errors = Arc::new(BackendErrors::default());
    let refusing = xray_sink(&format!("http://{closed}")).await;
    let (sink_tx, sink) = watch::channel(Arc::new(refusing));
    let reporter = Reporter::start(identity(hostname), &metrics, &errors, sink, TICK);

    tokio::time::sleep(TICK * 3).await;
    // A reload swaps the sink; the held records and the refusals go to the new one.
    sink_tx.send_replace(Arc::new(xray_sink(&fake.endpoint()).await));
    let arrived = eventually(Duration::from_secs(10), || {
        !bodies(&fake, hostname).is_empty()
    })
    .await;
    reporter.stop().await;
    assert!(arrived, "nothing arrived after the sink swap");
    let delivered = records(&fake, hostname);
    // At least one refused call (normally two): its record, re-queued, plus the next one.
    assert!(delivered.len() >= 2, "{delivered:#?}");
    let refused = errors_sum(&delivered, "ConnectionRefusedCount");
    assert!(refused >= 1, "refusals not counted: {delivered:#?}");
    for other in [
        "TimeoutCount",
        "UnknownHostCount",
        "OtherCount",
        "HTTPCode4XXCount",
        "HTTPCode5XXCount",
    ] {
        assert_eq!(errors_sum(&delivered, other), 0, "{other}: {delivered:#?}");
    }
    assert_eq!(metrics.telemetry_records_sent.get(), delivered.len() as u64);
}

#[tokio::test]
async fn the_final_record_is_sent_on_stop() {
    let fake = FakeXray::start().await;
    let hostname = "telemetry-final";
    let metrics = own_metrics(3);
    metrics.segments_sent.inc_by(2);
    let errors = Arc::new(BackendErrors::default());
    let (_sink_tx, sink) = watch::channel(Arc::new(xray_sink(&fake.endpoint()).await));
    let reporter = Reporter::start(
        identity(hostname),
        &metrics,
        &errors,
        sink,
        telemetry::INTERVAL,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bodies(&fake, hostname).is_empty());
    reporter.stop().await;

    let bodies = bodies(&fake, hostname);
    assert_eq!(bodies.len(), 1, "{bodies:#?}");
    let records = bodies[0]["TelemetryRecords"].as_array().unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["SegmentsReceivedCount"], 3);
    assert_eq!(records[0]["SegmentsSentCount"], 2);
    assert_eq!(bodies[0]["Hostname"], hostname);
    assert_eq!(bodies[0]["EC2InstanceId"], format!("i-{hostname}"));
}

/// A fake IMDSv2: a token from `PUT /latest/api/token`, required on every metadata `GET`.
struct FakeImds {
    endpoint: String,
    gets: Arc<AtomicUsize>,
}

impl FakeImds {
    async fn start() -> FakeImds {
        const TOKEN: &str = "fake-imds-token";
        let gets = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&gets);
        let metadata = move |value: &'static str| {
            let gets = Arc::clone(&counted);
            move |headers: HeaderMap| async move {
                gets.fetch_add(1, Ordering::SeqCst);
                match headers.get("x-aws-ec2-metadata-token") {
                    Some(token) if token == TOKEN => (StatusCode::OK, value),
                    _ => (StatusCode::UNAUTHORIZED, ""),
                }
            }
        };
        let app = axum::Router::new()
            .route(
                "/latest/api/token",
                axum::routing::put(|headers: HeaderMap| async move {
                    if headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
                        (StatusCode::OK, TOKEN)
                    } else {
                        (StatusCode::BAD_REQUEST, "")
                    }
                }),
            )
            .route(
                "/latest/meta-data/instance-id",
                axum::routing::get(metadata("i-0fromimds")),
            )
            .route(
                "/latest/meta-data/hostname",
                axum::routing::get(metadata("ip-10-0-0-7.ec2.internal")),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeImds {
            endpoint: format!("http://{addr}"),
            gets,
        }
    }

    fn gets(&self) -> usize {
        self.gets.load(Ordering::SeqCst)
    }
}

fn imds_env(endpoint: &str, extra: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + Sync {
    let mut pairs = vec![("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint)];
    pairs.extend_from_slice(extra);
    env(&pairs)
}

#[tokio::test]
async fn the_identity_comes_from_instance_metadata_unless_overridden() {
    let imds = FakeImds::start().await;
    let from_imds =
        telemetry::resolve_identity(false, Some(ARN), &imds_env(&imds.endpoint, &[])).await;
    assert_eq!(
        from_imds,
        TelemetryIdentity {
            ec2_instance_id: "i-0fromimds".into(),
            hostname: "ip-10-0-0-7.ec2.internal".into(),
            resource_arn: ARN.into(),
        }
    );
    assert_eq!(imds.gets(), 2);

    let overridden = telemetry::resolve_identity(
        false,
        None,
        &imds_env(&imds.endpoint, &[("AWS_HOSTNAME", "from-env")]),
    )
    .await;
    assert_eq!(overridden.hostname, "from-env");
    assert_eq!(overridden.ec2_instance_id, "i-0fromimds");
    assert_eq!(overridden.resource_arn, "");
    assert_eq!(imds.gets(), 3, "only the instance id was asked for");

    let local = telemetry::resolve_identity(true, None, &imds_env(&imds.endpoint, &[])).await;
    assert_eq!(local, TelemetryIdentity::default());
    let disabled = telemetry::resolve_identity(
        false,
        None,
        &imds_env(&imds.endpoint, &[("AWS_EC2_METADATA_DISABLED", "true")]),
    )
    .await;
    assert_eq!(disabled, TelemetryIdentity::default());
    assert_eq!(
        imds.gets(),
        3,
        "neither local mode nor a disabled IMDS asks instance metadata"
    );
}

#[tokio::test]
async fn unreachable_instance_metadata_leaves_the_identity_empty_quickly() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let started = std::time::Instant::now();
    let identity = telemetry::resolve_identity(
        false,
        Some(ARN),
        &imds_env(&format!("http://{closed}"), &[]),
    )
    .await;
    assert_eq!(identity.ec2_instance_id, "");
    assert_eq!(identity.hostname, "");
    assert_eq!(identity.resource_arn, ARN);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
