//! The daemon's own X-Ray telemetry: `PutTelemetryRecords` every minute (being written).
