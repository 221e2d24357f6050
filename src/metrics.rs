//! Prometheus metrics, served at `/metrics` by the web listener.
//!
//! The code emits with the `metrics` macros under the names below; [`install`]
//! puts one Prometheus recorder in place per process (later calls, as in tests
//! that start several gateways, reuse it) and [`render`] writes the text format.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod process;

/// Accepted mail connections, by `protocol`.
pub const CONNECTIONS: &str = "postern_connections_total";
/// Logged-in sessions being relayed now, by `protocol`.
pub const SESSIONS_ACTIVE: &str = "postern_sessions_active";
/// Mail login attempts, by `protocol` and `result` (`ok`, `refused`, `unavailable`).
pub const LOGINS: &str = "postern_logins_total";
/// Time the upstream took to accept or refuse a login, by `protocol`.
pub const UPSTREAM_LOGIN_SECONDS: &str = "postern_upstream_login_seconds";
/// Live sessions ended by postern, by `reason` (`idle`, `admin`, `shutdown`, or the
/// policy reason).
pub const SESSIONS_DROPPED: &str = "postern_sessions_dropped_total";
/// Seconds of login penalty delay applied.
pub const PENALTY_SECONDS: &str = "postern_login_penalty_seconds_total";
/// Seconds between the last applied event's `at` and when this node applied it.
pub const EVENT_LAG_SECONDS: &str = "postern_event_lag_seconds";
/// Mail logins answered from the login cache (`result` = `hit`) or read from
/// the store (`miss`).
pub const LOGIN_CACHE: &str = "postern_login_cache_total";
/// Id of the last event-log row this node has applied (a change made elsewhere
/// is in force on this node, for new logins and live sessions, once this
/// reaches its id).
pub const EVENT_LOG_POSITION: &str = "postern_event_log_position";

/// Connections closed because a limit was reached, by `protocol` and `limit`
/// (`total`, `per_ip`, `per_user_ip`).
pub const CONNECTIONS_REJECTED: &str = "postern_connections_rejected_total";
/// Live-session re-checks the store could not answer (each session is kept
/// and asked again within a second).
pub const RECHECK_FAILURES: &str = "postern_recheck_failures_total";

/// 1, labelled with this binary's `version`.
pub const BUILD_INFO: &str = "postern_build_info";
/// Web UI and JSON API sign-in steps, by `result`: `ok` (signed in),
/// `second_step` / `must_enroll` (password right, a code or enrollment comes
/// next), `refused`, `code_refused`, `locked`, `unavailable` (upstream or store).
pub const WEB_LOGINS: &str = "postern_web_logins_total";

/// Security notices by `kind` and `result`: `sent`, `retried` (the relay
/// failed; tried again later), `failed` (given up), `rate-limited` (not queued:
/// too many for the user this hour).
pub const NOTICES: &str = "postern_notices_total";

/// The `result` labels of [`NOTICES`].
pub const NOTICE_RESULTS: [&str; 4] = ["sent", "retried", "failed", "rate-limited"];

const UPSTREAM_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often histogram samples are folded into their buckets when nobody
/// scrapes `/metrics`.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the process-wide recorder, once; returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(UPSTREAM_LOGIN_SECONDS.to_owned()),
                    UPSTREAM_BUCKETS,
                )
                .expect("the upstream buckets are a fixed, non-empty list");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics stays empty");
            }
            describe();
            present_at_zero();
            // Histogram samples are kept until upkeep folds them into buckets;
            // without it a node nobody scrapes would grow by every login.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_INTERVAL);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(err) = spawned {
                tracing::warn!(error = %err, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(CONNECTIONS, "Accepted mail connections");
    describe_gauge!(SESSIONS_ACTIVE, "Logged-in sessions being relayed");
    describe_counter!(LOGINS, "Mail login attempts by result");
    describe_histogram!(
        UPSTREAM_LOGIN_SECONDS,
        Unit::Seconds,
        "Upstream login latency"
    );
    describe_counter!(SESSIONS_DROPPED, "Live sessions ended by postern");
    describe_counter!(
        PENALTY_SECONDS,
        Unit::Seconds,
        "Login penalty delay applied"
    );
    describe_counter!(LOGIN_CACHE, "Mail logins answered from memory or the store");
    describe_gauge!(
        EVENT_LOG_POSITION,
        "Id of the last event-log row this node applied"
    );
    describe_gauge!(
        EVENT_LAG_SECONDS,
        Unit::Seconds,
        "Delay between an event and this node applying it"
    );
    describe_counter!(
        CONNECTIONS_REJECTED,
        "Connections closed because a limit was reached"
    );
    describe_counter!(
        RECHECK_FAILURES,
        "Live-session re-checks the store could not answer"
    );
    describe_gauge!(BUILD_INFO, "Always 1; the version label names the binary");
    describe_counter!(WEB_LOGINS, "Web UI and API sign-in steps by result");
    describe_counter!(NOTICES, "Security notices by kind and result");
    process::describe();
}

/// Every series of a known label set, at 0 (a gauge at its value), so graphs and
/// alerts see it before the first event.
fn present_at_zero() {
    use crate::net::limiter::Limit;
    use crate::policy::{Protocol, Refusal};
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for protocol in Protocol::ALL.map(Protocol::as_str) {
        metrics::counter!(CONNECTIONS, "protocol" => protocol).increment(0);
        metrics::gauge!(SESSIONS_ACTIVE, "protocol" => protocol).increment(0.0);
        // Registered, not recorded: every bucket is exported at 0.
        let _ = metrics::histogram!(UPSTREAM_LOGIN_SECONDS, "protocol" => protocol);
        for result in ["ok", "refused", "unavailable", "limited"] {
            metrics::counter!(LOGINS, "protocol" => protocol, "result" => result).increment(0);
        }
        for limit in [Limit::Total, Limit::PerClient, Limit::PerUserClient].map(Limit::as_str) {
            metrics::counter!(CONNECTIONS_REJECTED, "protocol" => protocol, "limit" => limit)
                .increment(0);
        }
    }
    let refusals = [
        Refusal::UserDisabled,
        Refusal::AppPasswordRequired,
        Refusal::EnrollmentRequired,
        Refusal::OutOfScope,
        Refusal::Expired,
        Refusal::OutsideNetworks,
        Refusal::Revoked,
    ];
    for reason in ["idle", "admin", "shutdown"]
        .into_iter()
        .chain(refusals.map(Refusal::as_str))
    {
        metrics::counter!(SESSIONS_DROPPED, "reason" => reason).increment(0);
    }
    for result in ["hit", "miss"] {
        metrics::counter!(LOGIN_CACHE, "result" => result).increment(0);
    }
    for result in [
        "ok",
        "second_step",
        "must_enroll",
        "refused",
        "code_refused",
        "locked",
        "unavailable",
    ] {
        metrics::counter!(WEB_LOGINS, "result" => result).increment(0);
    }
    for kind in crate::notices::NoticeKind::ALL.map(crate::notices::NoticeKind::as_str) {
        for result in NOTICE_RESULTS {
            metrics::counter!(NOTICES, "kind" => kind, "result" => result).increment(0);
        }
    }
    metrics::counter!(PENALTY_SECONDS).increment(0);
    metrics::counter!(RECHECK_FAILURES).increment(0);
    metrics::gauge!(EVENT_LAG_SECONDS).increment(0.0);
    metrics::gauge!(EVENT_LOG_POSITION).increment(0.0);
    process::update();
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    let handle = install();
    process::update();
    handle.run_upkeep();
    handle.render()
}
