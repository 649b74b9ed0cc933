//! Processor time of the processes a run involves, from `/proc` (Linux): the server, the
//! PostgreSQL server's processes, and the load generator itself.

use std::path::Path;

/// Clock ticks per second of the times in `/proc/PID/stat` (`USER_HZ`, 100 on Linux whatever
/// the kernel's own tick rate).
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds (user + system) used so far by each party of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// The server process, if its id was given.
    pub server: f64,
    /// Every process named `postgres` on this machine (the PostgreSQL server and its backends).
    pub postgres: f64,
    /// This process.
    pub bench: f64,
}

impl Sample {
    /// Reads the current totals.
    pub fn now(server_pid: Option<u32>) -> Self {
        Self {
            server: server_pid.and_then(|pid| process_seconds(&format!("/proc/{pid}/stat"))).unwrap_or(0.0),
            postgres: postgres_seconds(),
            bench: process_seconds("/proc/self/stat").unwrap_or(0.0),
        }
    }

    /// What was used since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            server: self.server - earlier.server,
            postgres: self.postgres - earlier.postgres,
            bench: self.bench - earlier.bench,
        }
    }
}

/// user + system seconds of one process, from its `stat` file.
fn process_seconds(stat: &str) -> Option<f64> {
    parse_stat(&std::fs::read_to_string(stat).ok()?).map(|(_, seconds)| seconds)
}

/// The command name and user + system seconds in a `/proc/PID/stat` line.
fn parse_stat(line: &str) -> Option<(&str, f64)> {
    // The command name is in parentheses and may itself hold spaces and parentheses; the
    // fields after the last `)` are positional: state is field 3, utime 14 and stime 15.
    let open = line.find('(')?;
    let close = line.rfind(')')?;
    let name = line.get(open + 1..close)?;
    let rest: Vec<&str> = line.get(close + 1..)?.split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((name, (utime + stime) / TICKS_PER_SECOND))
}

fn postgres_seconds() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else { return 0.0 };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| std::fs::read_to_string(Path::new(&entry.path()).join("stat")).ok())
        .filter_map(|line| parse_stat(&line).filter(|(name, _)| *name == "postgres").map(|(_, seconds)| seconds))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_the_name_and_the_cpu_seconds() {
        let line =
            "4242 (postgres) S 1 4242 4242 0 -1 4194560 3400 0 0 0 250 130 0 0 20 0 1 0 99 1 1 18446744073709551615";
        assert_eq!(parse_stat(line), Some(("postgres", 3.8)));
        let odd = "7 (a (b) c) R 1 7 7 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 1 1 0";
        assert_eq!(parse_stat(odd), Some(("a (b) c", 0.03)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
