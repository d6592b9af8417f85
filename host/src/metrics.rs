//! Prometheus metrics, served on `GET /metrics`. Every name starts with
//! `lowshell_`. The helpers below are the only way the rest of the shell
//! records them, so the names and labels live in one place (and in
//! `docs/operations.md`).
//!
//! The recorder is process-wide: it is installed once, by the first shell
//! started in the process, and shared by any later ones (tests start many).

use crate::maps::Map;
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::cell::RefCell;
use std::sync::OnceLock;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// How often histogram samples are folded into their buckets. The exporter
/// holds every sample recorded until then (a scrape folds them too), so a
/// shell nobody scrapes would otherwise grow by every command's samples.
pub const UPKEEP: Duration = Duration::from_secs(1);

/// Buckets, in seconds, for command latency and guest call durations.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the Prometheus recorder if no recorder is installed yet.
/// Returns whether `/metrics` can render.
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .map_err(|e| e.to_string())
                .and_then(|b| b.install_recorder().map_err(|e| e.to_string()));
            match handle {
                Ok(handle) => {
                    describe();
                    spawn_upkeep(handle.clone());
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!("metrics are disabled: {e}");
                    None
                }
            }
        })
        .is_some()
}

/// Folds histogram samples into buckets every [`UPKEEP`], for the life of
/// the process (the recorder is process-wide too). A thread of its own, not a
/// task: the recorder outlives any one runtime (tests start many).
fn spawn_upkeep(handle: PrometheusHandle) {
    let started = std::thread::Builder::new().name("lowshell-metrics".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP);
            handle.run_upkeep();
        }
    });
    if let Err(e) = started {
        tracing::warn!("histogram samples are folded only when /metrics is scraped: {e}");
    }
}

/// The metrics in the Prometheus text format; `None` when no recorder is installed.
pub fn render() -> Option<String> {
    HANDLE.get().and_then(Option::as_ref).map(|h| {
        h.run_upkeep();
        h.render()
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("lowshell_requests_total", "GraphQL HTTP requests, by outcome");
    describe_counter!(
        "lowshell_graphql_fast_total",
        "Command mutations run by the shell's fast path: answered by it, or handed to the schema to format"
    );
    describe_histogram!(
        "lowshell_command_duration_seconds",
        Unit::Seconds,
        "Time from a command's submission to its response, by command and outcome"
    );
    describe_histogram!(
        "lowshell_guest_call_duration_seconds",
        Unit::Seconds,
        "Duration of one guest export call, by function and phase"
    );
    describe_counter!("lowshell_instances_created_total", "Guest instances created, by function");
    describe_gauge!("lowshell_consumer_lag", "Deliveries waiting for a consumer (function)");
    describe_counter!("lowshell_swaps_total", "Function swaps, by function and outcome (ok, failed)");
    describe_counter!("lowshell_events_total", "Events and commands appended, by topic");
    describe_counter!("lowshell_steps_total", "Steps committed by this shell's consumers, by function");
    describe_counter!(
        "lowshell_chained_total",
        "Commits that carried a consumer's steps on their events, applied or declined"
    );
    describe_counter!(
        "lowshell_shadow_total",
        "Live steps a shadow candidate was run on, by function and outcome (same, different, failed, skipped)"
    );
    describe_gauge!("lowshell_pending_requests", "Requests waiting for their commands' responses");
    describe_gauge!("lowshell_parked_events", "Events parked (set aside after failing), by function");
    describe_gauge!(
        "lowshell_consumer_stopped",
        "1 while a function's consumer is stopped at an event that keeps failing"
    );
}

/// Handles of one labelled series, by its label values, kept by each
/// thread. A `counter!` with a label builds its key (an allocated `String`),
/// hashes it and looks it up in the registry on every call — several times
/// a command; a handle found here is an `Arc` clone. Filled only once the
/// recorder is installed: a handle made before would record nowhere.
type Handles<H> = RefCell<Map<String, Vec<(&'static str, H)>>>;

thread_local! {
    static REQUESTS: Handles<Counter> = RefCell::default();
    static FAST: Handles<Counter> = RefCell::default();
    static COMMANDS: Handles<Histogram> = RefCell::default();
    static LAG: Handles<Gauge> = RefCell::default();
    static STEPS: Handles<Counter> = RefCell::default();
    static CHAINED: Handles<Counter> = RefCell::default();
    static EVENTS: Handles<Counter> = RefCell::default();
    static PENDING: Handles<Gauge> = RefCell::default();
}

/// The handle of the series labelled `label` and `other` in `handles`,
/// registered by `register` the first time this thread asks for it.
fn handle<H: Clone + 'static>(
    handles: &'static LocalKey<Handles<H>>,
    label: &str,
    other: &'static str,
    register: impl FnOnce() -> H,
) -> H {
    if !HANDLE.get().is_some_and(Option::is_some) {
        return register();
    }
    handles.with(|handles| {
        let found = handles
            .borrow()
            .get(label)
            .and_then(|series| series.iter().find(|(o, _)| *o == other).map(|(_, h)| h.clone()));
        found.unwrap_or_else(|| {
            let h = register();
            handles.borrow_mut().entry(label.to_owned()).or_default().push((other, h.clone()));
            h
        })
    })
}

/// How a GraphQL HTTP request ended: `ok`, `graphql_error` (answered with
/// errors), `bad_request` (4xx), `unauthorized` (401), `timeout`.
pub fn request(outcome: &'static str) {
    handle(&REQUESTS, "", outcome, || counter!("lowshell_requests_total", "outcome" => outcome)).increment(1);
}

/// A command mutation the fast path ran: `answered` by it, or `handed_over`
/// to the schema to format (a rejection, an error, a missing field).
pub fn fast(outcome: &'static str) {
    handle(&FAST, "", outcome, || counter!("lowshell_graphql_fast_total", "outcome" => outcome)).increment(1);
}

/// A command answered (`ok`), refused (`rejected`), failed or timed out.
pub fn command(command: &str, outcome: &'static str, took: Duration) {
    handle(&COMMANDS, command, outcome, || {
        histogram!("lowshell_command_duration_seconds", "command" => command.to_owned(), "outcome" => outcome)
    })
    .record(took.as_secs_f64());
}

/// The `function` label: a component being loaded has no name until its
/// `meta` answers.
fn function_label(function: &str) -> String {
    if function.is_empty() { "(loading)".to_owned() } else { function.to_owned() }
}

/// The guest phases timed, in the order of [`GuestMetrics`]' handles.
const PHASES: [&str; 7] =
    ["instantiate", "meta", "lookup", "operate", "write", "operate-and-write", "resolve"];

/// One function's guest-call histograms and instance counter, registered
/// once: a `histogram!` with labels builds, hashes and looks up its key on
/// every call, which cost more than the rest of the bookkeeping of a call.
pub struct GuestMetrics {
    calls: [metrics::Histogram; PHASES.len()],
    instances: metrics::Counter,
}

impl GuestMetrics {
    /// The handles of `function` (`""` while it is loading).
    pub fn new(function: &str) -> Self {
        let label = function_label(function);
        Self {
            calls: PHASES.map(|phase| {
                histogram!("lowshell_guest_call_duration_seconds", "function" => label.clone(), "phase" => phase)
            }),
            instances: counter!("lowshell_instances_created_total", "function" => label.clone()),
        }
    }

    /// Times one export call; recorded when the timer is dropped, so every
    /// exit of the phase is counted.
    pub fn timer(&self, phase: &'static str) -> GuestTimer {
        let slot = PHASES.iter().position(|p| *p == phase);
        let histogram = match slot {
            Some(i) => self.calls[i].clone(),
            None => metrics::Histogram::noop(),
        };
        GuestTimer { histogram, started: Instant::now() }
    }

    /// A fresh guest instance was created.
    pub fn instance_created(&self) {
        self.instances.increment(1);
    }
}

/// Records a guest call's duration when dropped (see [`GuestMetrics::timer`]).
pub struct GuestTimer {
    histogram: metrics::Histogram,
    started: Instant,
}

impl Drop for GuestTimer {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed().as_secs_f64());
    }
}

/// How far `function` is behind the log (deliveries or positions not yet processed).
pub fn consumer_lag(function: &str, lag: u64) {
    handle(&LAG, function, "", || gauge!("lowshell_consumer_lag", "function" => function.to_owned()))
        .set(lag as f64);
}

/// A swap of `function` was attempted; `ok` false when it was refused or failed.
pub fn swap(function: &str, ok: bool) {
    let outcome = if ok { "ok" } else { "failed" };
    counter!("lowshell_swaps_total", "function" => function.to_owned(), "outcome" => outcome).increment(1);
}

/// The `function` label of a refused deploy of a function the shell does
/// not run: names from requests make no series of their own.
pub const NEW_FUNCTION: &str = "(new)";

/// A deploy of `function` was refused; `known` when the shell runs it.
pub fn swap_refused(function: &str, known: bool) {
    swap(if known { function } else { NEW_FUNCTION }, false);
}

/// `n` steps of `function` were committed by this shell.
pub fn steps(function: &str, n: u64) {
    handle(&STEPS, function, "", || counter!("lowshell_steps_total", "function" => function.to_owned()))
        .increment(n);
}

/// A commit carried `consumer`'s steps on its events (chained): `applied`
/// with it, or `declined` (the consumer had not processed everything before
/// them, or an older transaction was still open; it processes them itself).
pub fn chained(consumer: &str, applied: bool) {
    let outcome = if applied { "applied" } else { "declined" };
    handle(
        &CHAINED,
        consumer,
        outcome,
        || counter!("lowshell_chained_total", "consumer" => consumer.to_owned(), "outcome" => outcome),
    )
    .increment(1);
}

/// A shadow candidate of `function` compared with a live step: `same`,
/// `different`, `failed`; or `skipped` (its queue was full).
pub fn shadow(function: &str, outcome: &'static str) {
    counter!("lowshell_shadow_total", "function" => function.to_owned(), "outcome" => outcome).increment(1);
}

/// An event (or command) was appended to `topic`.
pub fn event_appended(topic: &str) {
    handle(&EVENTS, topic, "", || counter!("lowshell_events_total", "topic" => topic.to_owned()))
        .increment(1);
}

/// How many requests wait for their commands' responses now.
pub fn pending_requests(waiting: usize) {
    handle(&PENDING, "", "", || gauge!("lowshell_pending_requests")).set(waiting as f64);
}

/// How many events `function`'s consumer has parked (all shells on the store).
pub fn parked_events(function: &str, parked: u64) {
    gauge!("lowshell_parked_events", "function" => function.to_owned()).set(parked as f64);
}

/// Whether `function`'s consumer is stopped at an event that keeps failing.
pub fn consumer_stopped(function: &str, stopped: bool) {
    gauge!("lowshell_consumer_stopped", "function" => function.to_owned()).set(if stopped {
        1.0
    } else {
        0.0
    });
}

#[cfg(test)]
mod tests {
    /// Handles kept per thread still count into one series: every call
    /// from every thread is in what `/metrics` renders.
    #[test]
    fn a_labelled_series_counts_every_call_from_every_thread() {
        assert!(super::install());
        let name = "metrics-test-function";
        super::steps(name, 2);
        std::thread::spawn(move || {
            super::steps(name, 3);
            super::steps(name, 1);
            super::chained(name, false);
        })
        .join()
        .expect("the other thread");
        super::steps(name, 4);
        super::chained(name, true);
        super::chained(name, true);
        let text = super::render().expect("a recorder");
        for series in [
            format!("lowshell_steps_total{{function=\"{name}\"}} 10"),
            format!("lowshell_chained_total{{consumer=\"{name}\",outcome=\"applied\"}} 2"),
            format!("lowshell_chained_total{{consumer=\"{name}\",outcome=\"declined\"}} 1"),
        ] {
            assert!(text.lines().any(|line| line == series), "no `{series}` in:\n{text}");
        }
    }
}
