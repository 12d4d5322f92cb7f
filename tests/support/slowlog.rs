//! SLOWLOG: how long single commands held a server.

use std::time::Duration;

use super::resp::{self, RespValue};
use super::scaled;

/// One SLOWLOG entry: a command and how long it ran on the server (its execution only, not
/// the I/O around it, i.e. how long it kept every other client of that server waiting).
#[derive(Clone, Debug)]
pub struct SlowCommand {
    pub port: u16,
    pub micros: u64,
    /// How many arguments the command had, its name included.
    pub args: usize,
    /// The command and its first arguments, as the server logged them.
    pub command: String,
}

/// From now on, each server in `ports` logs every command that runs `threshold_us` or longer,
/// keeping the last `max_len`: sets `slowlog-log-slower-than` and `slowlog-max-len`, then
/// empties the log.
pub fn slowlog_start(ports: &[u16], threshold_us: u64, max_len: u64) {
    for &port in ports {
        for args in [
            vec![
                "CONFIG".to_owned(),
                "SET".to_owned(),
                "slowlog-log-slower-than".to_owned(),
                threshold_us.to_string(),
            ],
            vec![
                "CONFIG".to_owned(),
                "SET".to_owned(),
                "slowlog-max-len".to_owned(),
                max_len.to_string(),
            ],
            vec!["SLOWLOG".to_owned(), "RESET".to_owned()],
        ] {
            let reply = resp::cmd(port, &args).unwrap_or_else(|e| panic!("{e}"));
            assert!(reply.is_ok(), "{args:?} on {port} answered {reply:?}");
        }
    }
}

/// The commands the servers in `ports` logged since [`slowlog_start`], leaving out the
/// harness's own CONFIG and SLOWLOG calls.
pub fn slowlog_entries(ports: &[u16]) -> Vec<SlowCommand> {
    let mut entries = Vec::new();
    for &port in ports {
        let len = resp::cmd(port, &["SLOWLOG", "LEN"])
            .ok()
            .and_then(|r| r.as_int())
            .unwrap_or_else(|| panic!("SLOWLOG LEN on {port} failed"));
        let reply = resp::cmd_timeout(
            port,
            &["SLOWLOG", "GET", &len.max(1).to_string()],
            scaled(Duration::from_secs(30)),
        )
        .unwrap_or_else(|e| panic!("SLOWLOG GET on {port}: {e}"));
        for entry in reply.as_array().unwrap_or(&[]) {
            // id, timestamp, microseconds, [command, args...], client address, client name
            let fields = entry.as_array().unwrap_or(&[]);
            let (Some(micros), Some(args)) = (
                fields.get(2).and_then(RespValue::as_int),
                fields.get(3).and_then(RespValue::as_array),
            ) else {
                panic!("unexpected SLOWLOG entry on {port}: {entry:?}");
            };
            // The log keeps 32 arguments at most, the last one then saying
            // "... (N more arguments)".
            let more = args.last().and_then(RespValue::as_text).and_then(|t| {
                t.strip_prefix("... (")?
                    .strip_suffix(" more arguments)")?
                    .parse::<usize>()
                    .ok()
            });
            let count = match more {
                Some(more) => args.len() - 1 + more,
                None => args.len(),
            };
            let command: Vec<String> = args.iter().take(4).filter_map(|a| a.as_text()).collect();
            let name = command.first().map(|c| c.to_ascii_uppercase());
            if matches!(name.as_deref(), Some("CONFIG" | "SLOWLOG")) {
                continue;
            }
            entries.push(SlowCommand {
                port,
                micros: u64::try_from(micros).unwrap_or(0),
                args: count,
                command: command.join(" "),
            });
        }
    }
    entries
}
