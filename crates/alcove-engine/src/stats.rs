//! The last hour of each function's invocations, minute by minute, for the
//! console's charts: how many ended, how many failed, and their duration
//! percentiles. Kept in memory by the daemon that ran them (a restart starts
//! it empty; the store keeps every record for longer questions) and bounded:
//! at most [`MAX_FUNCTIONS`] functions, each at most [`BUCKETS`] minutes of
//! fixed-size histograms, whatever the rate.

use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Seconds a bucket spans.
pub const BUCKET_S: u64 = 60;
/// Buckets kept: one hour.
pub const BUCKETS: usize = 60;
/// Functions tracked at once; past it the one invoked longest ago is dropped.
pub const MAX_FUNCTIONS: usize = 1024;

/// Histogram bins: each a quarter of an octave wide (a percentile is known
/// to within ~9%), from [`FIRST_EDGE_MS`] up: 0.05 ms to 3.7 hours (28
/// octaves, far past the default 15-minute limit); anything longer shares
/// the last bin, whose percentiles are then kept within what was seen.
const BINS: usize = 112;
const FIRST_EDGE_MS: f64 = 0.05;
const BINS_PER_OCTAVE: f64 = 4.0;

/// One minute of one function.
#[derive(Clone)]
struct Minute {
    /// Its start, in minutes since the epoch.
    index: u64,
    invocations: u32,
    errors: u32,
    bins: [u32; BINS],
    min_ms: f64,
    max_ms: f64,
}

impl Minute {
    fn new(index: u64) -> Minute {
        Minute {
            index,
            invocations: 0,
            errors: 0,
            bins: [0; BINS],
            min_ms: f64::INFINITY,
            max_ms: 0.0,
        }
    }

    /// The duration below which `q` of the timed invocations ended: the
    /// middle of the bin it falls in, kept within what was seen.
    fn percentile(&self, q: f64) -> Option<f64> {
        let timed: u64 = self.bins.iter().map(|&n| u64::from(n)).sum();
        if timed == 0 {
            return None;
        }
        let rank = ((q * timed as f64).ceil() as u64).clamp(1, timed);
        let mut seen = 0;
        for (bin, &n) in self.bins.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                let low = edge(bin);
                let middle = (low * edge(bin + 1)).sqrt();
                return Some(middle.clamp(self.min_ms, self.max_ms));
            }
        }
        Some(self.max_ms)
    }
}

/// The lower edge of `bin`, in milliseconds (bin 0 also holds anything shorter).
fn edge(bin: usize) -> f64 {
    FIRST_EDGE_MS * 2f64.powf(bin as f64 / BINS_PER_OCTAVE)
}

fn bin_of(ms: f64) -> usize {
    if ms.is_nan() || ms <= FIRST_EDGE_MS {
        return 0;
    }
    let bin = ((ms / FIRST_EDGE_MS).log2() * BINS_PER_OCTAVE).floor();
    (bin as usize).min(BINS - 1)
}

struct FunctionMinutes {
    minutes: VecDeque<Minute>,
    /// The minute it was last invoked in (which function to drop first).
    last: u64,
}

/// Every tracked function's last hour.
#[derive(Default)]
pub struct InvocationStats {
    functions: Mutex<HashMap<String, FunctionMinutes>>,
}

/// One minute as the API gives it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsBucket {
    /// Unix seconds at its start.
    pub start: u64,
    pub invocations: u32,
    /// Those that did not succeed (anything but exit 0).
    pub errors: u32,
    pub p50_ms: Option<f64>,
    pub p90_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// A function's last hour, oldest minute first, every minute present.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionStats {
    pub function: String,
    pub bucket_s: u64,
    pub buckets: Vec<StatsBucket>,
}

impl InvocationStats {
    /// Counts one ended invocation of `function` at `now` (unix seconds).
    pub fn record(&self, function: &str, succeeded: bool, wall_ms: Option<f64>, now: f64) {
        let index = minute_of(now);
        let mut functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        if !functions.contains_key(function) && functions.len() >= MAX_FUNCTIONS {
            let oldest = functions
                .iter()
                .min_by_key(|(_, f)| f.last)
                .map(|(name, _)| name.clone());
            if let Some(name) = oldest {
                functions.remove(&name);
            }
        }
        let entry = functions
            .entry(function.to_owned())
            .or_insert_with(|| FunctionMinutes {
                minutes: VecDeque::with_capacity(4),
                last: index,
            });
        entry.last = entry.last.max(index);
        let minutes = &mut entry.minutes;
        // A clock stepped back lands in the newest minute rather than reordering.
        let index = minutes.back().map_or(index, |m| index.max(m.index));
        if minutes.back().is_none_or(|m| m.index != index) {
            minutes.push_back(Minute::new(index));
        }
        while minutes
            .front()
            .is_some_and(|m| m.index + BUCKETS as u64 <= index)
        {
            minutes.pop_front();
        }
        let Some(minute) = minutes.back_mut() else {
            return;
        };
        minute.invocations = minute.invocations.saturating_add(1);
        if !succeeded {
            minute.errors = minute.errors.saturating_add(1);
        }
        if let Some(ms) = wall_ms.filter(|ms| ms.is_finite() && *ms >= 0.0) {
            let bin = &mut minute.bins[bin_of(ms)];
            *bin = bin.saturating_add(1);
            minute.min_ms = minute.min_ms.min(ms);
            minute.max_ms = minute.max_ms.max(ms);
        }
    }

    /// `function`'s last hour up to `now`, every minute given (zeros where
    /// nothing ended).
    pub fn of(&self, function: &str, now: f64) -> FunctionStats {
        let newest = minute_of(now);
        let first = newest.saturating_sub(BUCKETS as u64 - 1);
        let functions = self.functions.lock().unwrap_or_else(|e| e.into_inner());
        let minutes = functions.get(function).map(|f| &f.minutes);
        let buckets = (first..=newest)
            .map(|index| {
                let minute = minutes.and_then(|m| m.iter().find(|m| m.index == index));
                StatsBucket {
                    start: index * BUCKET_S,
                    invocations: minute.map_or(0, |m| m.invocations),
                    errors: minute.map_or(0, |m| m.errors),
                    p50_ms: minute.and_then(|m| m.percentile(0.50)),
                    p90_ms: minute.and_then(|m| m.percentile(0.90)),
                    p99_ms: minute.and_then(|m| m.percentile(0.99)),
                }
            })
            .collect();
        FunctionStats {
            function: function.to_owned(),
            bucket_s: BUCKET_S,
            buckets,
        }
    }

    /// Forgets a removed function.
    pub fn forget(&self, function: &str) {
        self.functions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(function);
    }
}

fn minute_of(unix_s: f64) -> u64 {
    if unix_s.is_finite() && unix_s > 0.0 {
        unix_s as u64 / BUCKET_S
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: f64 = 1_800_000_000.0; // a minute boundary

    #[test]
    fn counts_and_percentiles_land_in_their_minute() {
        let stats = InvocationStats::default();
        for i in 1..=100 {
            stats.record("f", i % 10 != 0, Some(i as f64), T0 + 5.0);
        }
        stats.record("f", true, Some(3.0), T0 + 65.0);
        let view = stats.of("f", T0 + 70.0);
        assert_eq!(view.buckets.len(), BUCKETS);
        let last = &view.buckets[BUCKETS - 1];
        let before = &view.buckets[BUCKETS - 2];
        assert_eq!(before.start, T0 as u64);
        assert_eq!((before.invocations, before.errors), (100, 10));
        let p50 = before.p50_ms.unwrap();
        let p99 = before.p99_ms.unwrap();
        assert!((45.0..=55.0).contains(&p50), "p50 {p50}");
        assert!((90.0..=100.0).contains(&p99), "p99 {p99}");
        assert_eq!((last.invocations, last.errors), (1, 0));
        assert_eq!(last.p50_ms, Some(3.0)); // clamped to what was seen
        assert!(view.buckets[..BUCKETS - 2]
            .iter()
            .all(|b| b.invocations == 0 && b.p50_ms.is_none()));
    }

    #[test]
    fn an_hour_later_the_old_minutes_are_gone() {
        let stats = InvocationStats::default();
        stats.record("f", false, Some(1.0), T0);
        stats.record("f", true, Some(1.0), T0 + 3600.0);
        let view = stats.of("f", T0 + 3600.0);
        assert_eq!(view.buckets.iter().map(|b| b.invocations).sum::<u32>(), 1);
        assert_eq!(view.buckets.iter().map(|b| b.errors).sum::<u32>(), 0);
        let functions = stats.functions.lock().unwrap();
        assert_eq!(functions["f"].minutes.len(), 1);
    }

    #[test]
    fn functions_are_bounded_and_bad_numbers_are_harmless() {
        let stats = InvocationStats::default();
        for i in 0..MAX_FUNCTIONS + 10 {
            stats.record(&format!("f{i}"), true, Some(f64::NAN), T0 + i as f64 * 60.0);
        }
        stats.record("x", true, Some(f64::INFINITY), f64::NAN);
        stats.record("x", true, Some(-1.0), -5.0);
        stats.record("x", true, Some(1e300), T0);
        let functions = stats.functions.lock().unwrap();
        assert_eq!(functions.len(), MAX_FUNCTIONS);
        assert!(
            !functions.contains_key("f0"),
            "the one invoked longest ago goes"
        );
        drop(functions);
        // The two at nonsense times went into minute 0, gone an age before T0.
        let huge = stats.of("x", T0);
        assert_eq!(huge.buckets[BUCKETS - 1].invocations, 1);
        assert_eq!(huge.buckets[BUCKETS - 1].p99_ms, Some(1e300));
    }
}
