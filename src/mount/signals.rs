//! Watching the signals of a thread that waits for an image (`/proc/<pid>/status`).

/// True when thread `pid` has a signal pending that it neither blocks nor ignores
/// (`/proc/<pid>/status`: SigPnd for the thread, ShdPnd for the process). A gone
/// process counts as interrupted: nobody waits for the answer.
pub fn signal_pending(pid: u32) -> bool {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return true;
    };
    pending_in_status(&text)
}

/// The test of [`signal_pending`] on the text of a `/proc/<pid>/status` file.
pub fn pending_in_status(text: &str) -> bool {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let pending = field("SigPnd:") | field("ShdPnd:");
    pending & !field("SigBlk:") & !field("SigIgn:") != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_signals_count_unless_blocked_or_ignored() {
        let status = |pnd: &str, shd: &str, blk: &str, ign: &str| {
            format!(
                "Name:\tcp\nSigQ:\t0/1\nSigPnd:\t{pnd}\nShdPnd:\t{shd}\nSigBlk:\t{blk}\nSigIgn:\t{ign}\nSigCgt:\t0\n"
            )
        };
        let z = "0000000000000000";
        let sigint = "0000000000000002";
        assert!(!pending_in_status(&status(z, z, z, z)));
        assert!(pending_in_status(&status(z, sigint, z, z)), "shared SIGINT");
        assert!(pending_in_status(&status(sigint, z, z, z)), "thread SIGINT");
        assert!(!pending_in_status(&status(z, sigint, sigint, z)), "blocked");
        assert!(!pending_in_status(&status(z, sigint, z, sigint)), "ignored");
        assert!(pending_in_status(&status(z, "0000000000000102", sigint, z)));
    }

    #[test]
    fn a_vanished_process_counts_as_interrupted() {
        assert!(signal_pending(u32::MAX - 1));
        assert!(!signal_pending(std::process::id()));
    }
}
