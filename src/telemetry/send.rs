//! Delivering records: `PutTelemetryRecords` through whatever sink is current (its X-Ray
//! client carries the uploads' credentials, region, endpoint and timeouts), or nowhere when
//! segments go to the local sink.

use std::future::Future;
use std::sync::Arc;

use aws_sdk_xray::types::{BackendConnectionErrors, TelemetryRecord as SdkRecord};
use aws_smithy_types::DateTime;
use tokio::sync::watch;

use super::identity::TelemetryIdentity;
use super::record::TelemetryRecord;
use crate::upload::xray::failure_of;
use crate::upload::{SendFailure, Sink};

/// What became of a chunk of records that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// X-Ray accepted them.
    Sent,
    /// There is no X-Ray to send them to (local sink); they are let go.
    Discarded,
}

/// One `PutTelemetryRecords` call; a trait so the reporter loop can be tested without X-Ray.
pub trait Deliver {
    /// Sends at most ten records in one call.
    fn deliver(
        &self,
        records: &[TelemetryRecord],
    ) -> impl Future<Output = Result<Delivered, SendFailure>> + Send;
}

/// Delivers through the current sink (a reload swaps it), with the identity on every call.
#[derive(Debug, Clone)]
pub struct SinkDelivery {
    sink: watch::Receiver<Arc<Sink>>,
    identity: TelemetryIdentity,
}

impl SinkDelivery {
    /// Delivery through `sink` on behalf of `identity`.
    pub fn new(sink: watch::Receiver<Arc<Sink>>, identity: TelemetryIdentity) -> Self {
        SinkDelivery { sink, identity }
    }
}

impl Deliver for SinkDelivery {
    fn deliver(
        &self,
        records: &[TelemetryRecord],
    ) -> impl Future<Output = Result<Delivered, SendFailure>> + Send {
        let sink = Arc::clone(&*self.sink.borrow());
        let records: Vec<SdkRecord> = records.iter().map(sdk_record).collect();
        let identity = self.identity.clone();
        async move {
            let Sink::Xray(xray) = &*sink else {
                return Ok(Delivered::Discarded);
            };
            // Empty strings are sent as they are, like the Go daemon, rather than left out.
            xray.client()
                .put_telemetry_records()
                .set_telemetry_records(Some(records))
                .ec2_instance_id(identity.ec2_instance_id)
                .hostname(identity.hostname)
                .resource_arn(identity.resource_arn)
                .send()
                .await
                .map(|_| Delivered::Sent)
                .map_err(|error| failure_of(&error))
        }
    }
}

/// The API shape, every count present (zeros included) and clamped to its int32 field.
pub fn sdk_record(record: &TelemetryRecord) -> SdkRecord {
    let count = |n: u64| i32::try_from(n).unwrap_or(i32::MAX);
    let errors = &record.backend_errors;
    SdkRecord::builder()
        .timestamp(DateTime::from(record.timestamp))
        .segments_received_count(count(record.segments_received))
        .segments_sent_count(count(record.segments_sent))
        .segments_spillover_count(count(record.segments_spillover))
        .segments_rejected_count(count(record.segments_rejected))
        .backend_connection_errors(
            BackendConnectionErrors::builder()
                .timeout_count(count(errors.timeout))
                .connection_refused_count(count(errors.connection_refused))
                .http_code4_xx_count(count(errors.http_4xx))
                .http_code5_xx_count(count(errors.http_5xx))
                .unknown_host_count(count(errors.unknown_host))
                .other_count(count(errors.other))
                .build(),
        )
        .build()
        .expect("the only required field, Timestamp, is set")
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::telemetry::record::ErrorCounts;
    use crate::upload::local::LocalSink;

    #[test]
    fn every_count_is_present_and_clamped() {
        let record = TelemetryRecord {
            timestamp: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            segments_received: 5,
            segments_sent: 0,
            segments_spillover: u64::MAX,
            segments_rejected: 1,
            backend_errors: ErrorCounts {
                http_4xx: 3,
                ..ErrorCounts::default()
            },
        };
        let sdk = sdk_record(&record);
        assert_eq!(sdk.timestamp().secs(), 1_700_000_000);
        assert_eq!(sdk.segments_received_count(), Some(5));
        assert_eq!(sdk.segments_sent_count(), Some(0));
        assert_eq!(sdk.segments_spillover_count(), Some(i32::MAX));
        assert_eq!(sdk.segments_rejected_count(), Some(1));
        let errors = sdk.backend_connection_errors().unwrap();
        assert_eq!(errors.http_code4_xx_count(), Some(3));
        for absent in [
            errors.timeout_count(),
            errors.connection_refused_count(),
            errors.http_code5_xx_count(),
            errors.unknown_host_count(),
            errors.other_count(),
        ] {
            assert_eq!(absent, Some(0));
        }
    }

    #[tokio::test]
    async fn the_local_sink_discards_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segments.jsonl");
        let sink = Sink::Local(LocalSink::open(path.to_str().unwrap()).unwrap());
        let (_tx, rx) = watch::channel(Arc::new(sink));
        let delivery = SinkDelivery::new(rx, TelemetryIdentity::default());
        let record = TelemetryRecord {
            timestamp: UNIX_EPOCH,
            segments_received: 1,
            segments_sent: 1,
            segments_spillover: 0,
            segments_rejected: 0,
            backend_errors: ErrorCounts::default(),
        };
        assert_eq!(delivery.deliver(&[record]).await, Ok(Delivered::Discarded));
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }
}
