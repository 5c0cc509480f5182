//! Progress of an import on a terminal: entries and bytes on one line, redrawn at
//! most ten times a second.

use std::io::Write;
use std::time::{Duration, Instant};

use super::sink::Stats;

const INTERVAL: Duration = Duration::from_millis(100);

/// A one-line progress display on stderr (or nothing, when disabled).
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    last: Option<Instant>,
    shown: bool,
}

impl Progress {
    /// `enabled` is usually "stderr is a terminal".
    pub fn new(enabled: bool) -> Progress {
        Progress {
            enabled,
            last: None,
            shown: false,
        }
    }

    /// Redraws the line if the last redraw is old enough.
    pub fn tick(&mut self, stats: &Stats) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < INTERVAL) {
            return;
        }
        self.last = Some(now);
        self.shown = true;
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\r\x1b[K{} entries, {}",
            stats.entries,
            human_bytes(stats.bytes)
        );
        let _ = err.flush();
    }

    /// Clears the line, so the summary that follows starts clean.
    pub fn finish(&mut self) {
        if self.shown {
            let _ = write!(std::io::stderr(), "\r\x1b[K");
            self.shown = false;
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// `1536` gives `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_table() {
        for (n, want) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (5 * 1024 * 1024, "5.0 MiB"),
            (3 << 30, "3.0 GiB"),
        ] {
            assert_eq!(human_bytes(n), want);
        }
    }
}
