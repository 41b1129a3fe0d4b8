// Sends one segment (with a subsegment and an annotation) to the X-Ray daemon
// with the real Node.js SDK (aws-xray-sdk-core), then prints
// {"trace_id": ..., "id": ..., "name": ...} as one JSON line on stdout.
//
// The daemon address comes from AWS_XRAY_DAEMON_ADDRESS (the SDK reads it).
// Usage: AWS_XRAY_DAEMON_ADDRESS=127.0.0.1:PORT node send-segment.js [NAME]
'use strict';

if (!process.env.AWS_XRAY_DAEMON_ADDRESS) {
  console.error('AWS_XRAY_DAEMON_ADDRESS must be set');
  process.exit(2);
}

const AWSXRay = require('aws-xray-sdk-core');

AWSXRay.setContextMissingStrategy('LOG_ERROR');
AWSXRay.middleware.disableCentralizedSampling();
AWSXRay.enableManualMode();
// Keep stdout for the result line only.
AWSXRay.setLogger({ error: (...a) => console.error(...a), warn: (...a) => console.error(...a),
  info: () => {}, debug: () => {} });

const name = process.argv[2] || 'node-sdk-test';
const segment = new AWSXRay.Segment(name);
segment.addAnnotation('k', 'v');
const sub = segment.addNewSubsegment('child-op');
setTimeout(() => {
  sub.close();
  segment.close(); // emits the whole segment as one UDP datagram
  process.stdout.write(JSON.stringify({ trace_id: segment.trace_id, id: segment.id, name }) + '\n');
  // The SDK's UDP socket is unref'd: give the send a moment to leave.
  setTimeout(() => process.exit(0), 300);
}, 10);
