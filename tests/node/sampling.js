// Centralized sampling through the X-Ray daemon with the real Node.js SDK
// (aws-xray-sdk-core): the SDK's pollers send unsigned POST /GetSamplingRules (at
// start) and POST /SamplingTargets (about 10 s later, once a rule has statistics) to the
// daemon's TCP address, which signs and forwards them to X-Ray.
//
// Usage: AWS_XRAY_DAEMON_ADDRESS='tcp:127.0.0.1:T udp:127.0.0.1:U' \
//          node sampling.js [DECISIONS] [TARGETS_WAIT_SECONDS]
// Waits (at most 10 s) until the rules are in the SDK's rule cache, makes DECISIONS
// (default 20) sampling decisions, then, if TARGETS_WAIT_SECONDS > 0, waits up to that
// long for the first successful SamplingTargets answer. Prints one JSON line on stdout:
//   {"rules": [names in the cache], "decisions": [false | "rule name", ...],
//    "targets": {RuleName: {rate, quota, TTL, interval}} | null, "errors": [...]}
// Exits 0 when the rules arrived (and targets, when waited for), else 1.
'use strict';

if (!process.env.AWS_XRAY_DAEMON_ADDRESS) {
  console.error('AWS_XRAY_DAEMON_ADDRESS must be set');
  process.exit(2);
}

const AWSXRay = require('aws-xray-sdk-core');
const ruleCache = require('aws-xray-sdk-core/dist/lib/middleware/sampling/rule_cache');
const connector = require('aws-xray-sdk-core/dist/lib/middleware/sampling/service_connector');

const errors = [];
AWSXRay.setContextMissingStrategy('LOG_ERROR');
AWSXRay.setLogger({
  error: (...a) => { errors.push(a.map(String).join(' ')); console.error(...a); },
  warn: (...a) => { errors.push(a.map(String).join(' ')); console.error(...a); },
  info: (...a) => console.error(...a),
  debug: () => {},
});

const decisionsWanted = parseInt(process.argv[2] || '20', 10);
const targetsWait = parseFloat(process.argv[3] || '0');

let targets = null;
const originalFetchTargets = connector.fetchTargets;
connector.fetchTargets = function (rules, callback) {
  return originalFetchTargets.call(this, rules, (err, mapping, freshness) => {
    if (!err) targets = mapping;
    callback(err, mapping, freshness);
  });
};

const sampler = AWSXRay.middleware.sampler; // the DefaultSampler: centralized sampling
const request = { host: 'example.com', httpMethod: 'GET', urlPath: '/sampled', serviceName: 'node-sampling-test' };

function finish(ok) {
  const out = {
    rules: ruleCache.getRules().map((r) => r.getName()),
    decisions,
    targets,
    errors,
  };
  process.stdout.write(JSON.stringify(out) + '\n');
  process.exit(ok ? 0 : 1);
}

const decisions = [];
const started = Date.now();
sampler.shouldSample(Object.assign({}, request)); // starts the pollers (this decision is not kept)

const waitRules = setInterval(() => {
  if (ruleCache.getRules().length > 0) {
    clearInterval(waitRules);
    for (let i = 0; i < decisionsWanted; i++) {
      const d = sampler.shouldSample(Object.assign({}, request));
      decisions.push(d === false || d === undefined ? false : (typeof d === 'string' ? d : true));
    }
    if (targetsWait <= 0) return finish(true);
    const deadline = Date.now() + targetsWait * 1000;
    const waitTargets = setInterval(() => {
      if (targets !== null) { clearInterval(waitTargets); finish(true); }
      else if (Date.now() > deadline) { clearInterval(waitTargets); errors.push('no SamplingTargets answer in time'); finish(false); }
    }, 100);
  } else if (Date.now() - started > 10000) {
    clearInterval(waitRules);
    errors.push('no sampling rules in the cache after 10 s');
    finish(false);
  }
}, 50);
