//! A deterministic `env` for the stub host: predictable ids, a clock that
//! stands still where you set it, and every `env.log` line kept.

use crate::runtime::HostEnv;
use low_contract::Level;
use serde::{Deserialize, Serialize};
use std::sync::{Mutex, MutexGuard};

/// How [`StubEnv`] makes ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Ids {
    /// `<prefix>1`, `<prefix>2`, … (the default is `id-1`, `id-2`, …, like
    /// [`low_contract::testing::TestEnv`]).
    Sequential { prefix: String },
    /// UUID-shaped ids from a seeded generator: the same seed gives the same ids.
    Seeded { seed: u64 },
}

impl Default for Ids {
    fn default() -> Self {
        Ids::Sequential { prefix: "id-".into() }
    }
}

/// The clock [`StubEnv`] starts at: 2023-11-14T22:13:20Z, as in `TestEnv`.
pub const DEFAULT_NOW_MS: u64 = 1_700_000_000_000;

/// One `env.log` call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// The function that logged (its `meta` name).
    pub function: String,
    pub level: Level,
    pub message: String,
}

#[derive(Debug)]
struct State {
    ids: Ids,
    /// Ids handed out so far.
    issued: u64,
    /// The generator state for [`Ids::Seeded`].
    rng: u64,
    now_ms: u64,
    logs: Vec<LogLine>,
}

impl State {
    fn new(ids: Ids, now_ms: u64) -> Self {
        let rng = match &ids {
            Ids::Seeded { seed } => *seed,
            Ids::Sequential { .. } => 0,
        };
        Self { ids, issued: 0, rng, now_ms, logs: vec![] }
    }
}

/// The stub's [`HostEnv`]. Shared by every call of one [`Stub`](super::Stub);
/// [`StubEnv::reset`] starts it over.
#[derive(Debug)]
pub struct StubEnv {
    state: Mutex<State>,
}

impl Default for StubEnv {
    fn default() -> Self {
        Self::new(Ids::default(), DEFAULT_NOW_MS)
    }
}

impl StubEnv {
    pub fn new(ids: Ids, now_ms: u64) -> Self {
        Self { state: Mutex::new(State::new(ids, now_ms)) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain data, consistent after any panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts over: ids from the first again, the log emptied.
    pub fn reset(&self, ids: Ids, now_ms: u64) {
        *self.lock() = State::new(ids, now_ms);
    }

    /// Sets the clock; it stays there until set again.
    pub fn set_now_ms(&self, now_ms: u64) {
        self.lock().now_ms = now_ms;
    }

    /// Moves the clock forward.
    pub fn advance_ms(&self, ms: u64) {
        let mut state = self.lock();
        state.now_ms = state.now_ms.saturating_add(ms);
    }

    /// Changes how the next ids are made (the count of ids issued is kept).
    pub fn set_ids(&self, ids: Ids) {
        let mut state = self.lock();
        if let Ids::Seeded { seed } = &ids {
            state.rng = *seed;
        }
        state.ids = ids;
    }

    /// Every `env.log` call so far, in order.
    pub fn logs(&self) -> Vec<LogLine> {
        self.lock().logs.clone()
    }

    /// Empties the log, returning what it held.
    pub fn take_logs(&self) -> Vec<LogLine> {
        std::mem::take(&mut self.lock().logs)
    }

    /// How many ids have been handed out.
    pub fn ids_issued(&self) -> u64 {
        self.lock().issued
    }
}

/// splitmix64: small, fast, and the same everywhere.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl HostEnv for StubEnv {
    fn new_id(&self) -> String {
        let mut state = self.lock();
        state.issued += 1;
        match state.ids.clone() {
            Ids::Sequential { prefix } => format!("{prefix}{}", state.issued),
            Ids::Seeded { .. } => {
                let (hi, lo) = (next_random(&mut state.rng), next_random(&mut state.rng));
                // Shaped like a version-4 UUID so it passes for one.
                let hi = (hi & !0xF000) | 0x4000;
                let lo = (lo & !(0b11 << 62)) | (0b10 << 62);
                format!(
                    "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                    hi >> 32,
                    (hi >> 16) & 0xFFFF,
                    hi & 0xFFFF,
                    lo >> 48,
                    lo & 0xFFFF_FFFF_FFFF
                )
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.lock().now_ms
    }

    fn log(&self, function: &str, level: Level, message: &str) {
        tracing::debug!(target: "guest", function, ?level, "{message}");
        self.lock().logs.push(LogLine { function: function.into(), level, message: message.into() });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_count_from_one_and_start_over_on_reset() {
        let env = StubEnv::default();
        assert_eq!((env.new_id(), env.new_id()), ("id-1".into(), "id-2".into()));
        env.reset(Ids::Sequential { prefix: "cust-".into() }, 5);
        assert_eq!(env.new_id(), "cust-1");
        assert_eq!(env.now_ms(), 5);
    }

    #[test]
    fn seeded_ids_repeat_for_a_seed_and_differ_between_seeds() {
        let ids = |seed| {
            let env = StubEnv::new(Ids::Seeded { seed }, 0);
            (env.new_id(), env.new_id())
        };
        assert_eq!(ids(7), ids(7));
        assert_ne!(ids(7), ids(8));
        let (a, b) = ids(7);
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn the_clock_stands_still_until_moved_and_logs_are_kept() {
        let env = StubEnv::default();
        assert_eq!(env.now_ms(), DEFAULT_NOW_MS);
        assert_eq!(env.now_ms(), DEFAULT_NOW_MS);
        env.advance_ms(10);
        assert_eq!(env.now_ms(), DEFAULT_NOW_MS + 10);
        env.log("f", Level::Warn, "careful");
        assert_eq!(
            env.take_logs(),
            vec![LogLine { function: "f".into(), level: Level::Warn, message: "careful".into() }]
        );
        assert!(env.logs().is_empty());
    }
}
