//! In-memory limits on guessing: wrong second-step codes (per session and per
//! user) and wrong system-administrator passwords. After [`MAX_FAILURES`] wrong
//! attempts a key is locked for [`LOCK`]. Per node, not shared: a restart or
//! another node starts afresh, which still caps guessing at a few codes a minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 5;
pub const LOCK: Duration = Duration::from_secs(15 * 60);

struct Entry {
    failures: u32,
    since: Instant,
    locked_until: Option<Instant>,
}

#[derive(Default)]
pub struct Attempts {
    map: Mutex<HashMap<String, Entry>>,
}

impl Attempts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether any of the keys is locked now.
    pub fn locked(&self, keys: &[&str]) -> bool {
        let now = Instant::now();
        let map = self.lock();
        keys.iter().any(|key| {
            map.get(*key)
                .and_then(|e| e.locked_until)
                .is_some_and(|until| until > now)
        })
    }

    /// Counts a wrong attempt against every key.
    pub fn fail(&self, keys: &[&str]) {
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() > 10_000 {
            map.retain(|_, e| now.duration_since(e.since) < LOCK);
        }
        for key in keys {
            let entry = map.entry((*key).to_owned()).or_insert(Entry {
                failures: 0,
                since: now,
                locked_until: None,
            });
            if now.duration_since(entry.since) > LOCK {
                *entry = Entry {
                    failures: 0,
                    since: now,
                    locked_until: None,
                };
            }
            entry.failures += 1;
            if entry.failures >= MAX_FAILURES {
                entry.locked_until = Some(now + LOCK);
            }
        }
    }

    /// A right answer clears the counters.
    pub fn succeed(&self, keys: &[&str]) {
        let mut map = self.lock();
        for key in keys {
            map.remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_wrong_codes_lock_the_user_everywhere() {
        let attempts = Attempts::default();
        for _ in 0..MAX_FAILURES {
            assert!(!attempts.locked(&["s:1", "u:a"]));
            attempts.fail(&["s:1", "u:a"]);
        }
        // A new session of the same user is locked too.
        assert!(attempts.locked(&["s:2", "u:a"]));
        assert!(!attempts.locked(&["s:2", "u:b"]));
    }
}
