//! The events the programs send through the ring buffer, decoded.

use crate::intf::{ARGS_LEN, COMM_LEN, FILENAME_LEN};
use serde::Serialize;

/// Why a budget kill happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KillReason {
    /// More syscalls than the budget.
    Syscalls,
    /// More CPU time than the budget.
    CpuTime,
}

impl KillReason {
    /// The reason in words, with the budget it passed (`limit`: a count of
    /// syscalls, or nanoseconds of CPU).
    pub fn describe(self, limit: u64) -> String {
        match self {
            KillReason::Syscalls => format!("syscall budget of {limit} exceeded"),
            KillReason::CpuTime => format!(
                "CPU budget of {:?} exceeded",
                std::time::Duration::from_nanos(limit)
            ),
        }
    }
}

/// What a rule denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Denial {
    Device,
    Connect,
    Bind,
    /// A syscall outside the sandbox's syscall policy (refused by seccomp).
    Syscall,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventKind {
    /// A process exec'd `filename` with `args` (the head of its argv).
    Exec { filename: String, args: String },
    /// A process exited with `code`, or was killed by `signal`.
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    /// A rule refused something (`detail`: the device or address).
    Denied { what: Denial, detail: String },
    /// A budget was exceeded and the process killed.
    BudgetKill { reason: KillReason, limit: u64 },
    /// The OOM killer chose process `victim`.
    Oom { victim: u32 },
    /// Learn mode: a path was opened (`write`: for writing or creating).
    File { path: String, write: bool },
    /// Learn mode: a connect, send or bind to `address`.
    Peer { what: Denial, address: String },
}

/// One event from one sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub cgroup_id: u64,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    /// Decodes a ring-buffer record; `None` for a malformed one.
    pub(crate) fn decode(data: &[u8]) -> Option<Event> {
        let u64_at = |i: usize| Some(u64::from_ne_bytes(data.get(i..i + 8)?.try_into().ok()?));
        let u32_at = |i: usize| Some(u32::from_ne_bytes(data.get(i..i + 4)?.try_into().ok()?));
        let text = |i: usize, len: usize| -> Option<String> {
            let raw = data.get(i..i + len)?;
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            Some(String::from_utf8_lossy(&raw[..end]).into_owned())
        };
        let (cgroup_id, ts_ns, kind, pid, ppid) = (
            u64_at(0)?,
            u64_at(8)?,
            u32_at(16)?,
            u32_at(20)?,
            u32_at(24)?,
        );
        let value = u32_at(28)? as i32;
        let detail = u64_at(32)?;
        let comm = text(40, COMM_LEN)?;
        let filename_at = 40 + COMM_LEN;
        let args_at = filename_at + FILENAME_LEN;
        let kind = match kind {
            1 => {
                let raw = data.get(args_at..args_at + ARGS_LEN)?;
                let len = (detail as usize).min(ARGS_LEN);
                let args: Vec<&[u8]> = raw[..len]
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .collect();
                let args = args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a))
                    .collect::<Vec<_>>()
                    .join(" ");
                EventKind::Exec {
                    filename: text(filename_at, FILENAME_LEN)?,
                    args,
                }
            }
            2 if value & 0x7f == 0 => EventKind::Exit {
                code: Some((value >> 8) & 0xff),
                signal: None,
            },
            2 => EventKind::Exit {
                code: None,
                signal: Some(value & 0x7f),
            },
            3 => {
                let what = match value {
                    1 => Denial::Device,
                    2 => Denial::Connect,
                    4 => Denial::Syscall,
                    _ => Denial::Bind,
                };
                let detail = match what {
                    Denial::Device => format!("{}:{}", detail >> 32, detail & 0xffff_ffff),
                    Denial::Syscall => detail.to_string(),
                    _ => address(data, filename_at, args_at, detail)?,
                };
                EventKind::Denied { what, detail }
            }
            4 => {
                let reason = match value {
                    1 => KillReason::Syscalls,
                    _ => KillReason::CpuTime,
                };
                EventKind::BudgetKill {
                    reason,
                    limit: detail,
                }
            }
            5 => EventKind::Oom {
                victim: detail as u32,
            },
            6 => EventKind::File {
                path: text(filename_at, FILENAME_LEN)?,
                write: value & (libc::O_WRONLY | libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC) != 0,
            },
            7 => EventKind::Peer {
                what: if value == 3 {
                    Denial::Bind
                } else {
                    Denial::Connect
                },
                address: address(data, filename_at, args_at, detail)?,
            },
            _ => return None,
        };
        Some(Event {
            cgroup_id,
            ts_ns,
            pid,
            ppid,
            comm,
            kind,
        })
    }
}

/// Formats the address stored at `at` (family byte at `family_at`) with its port.
fn address(data: &[u8], at: usize, family_at: usize, port: u64) -> Option<String> {
    let port = port as u16;
    let raw = data.get(at..at + 16)?;
    Some(match data.get(family_at)? {
        2 => format!(
            "{}:{port}",
            std::net::Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])
        ),
        _ => format!(
            "[{}]:{port}",
            std::net::Ipv6Addr::from(<[u8; 16]>::try_from(raw).ok()?)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: u32, value: i32, detail: u64, filename: &[u8], args: &[u8]) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&42u64.to_ne_bytes());
        r.extend_from_slice(&7u64.to_ne_bytes());
        r.extend_from_slice(&kind.to_ne_bytes());
        r.extend_from_slice(&10u32.to_ne_bytes());
        r.extend_from_slice(&1u32.to_ne_bytes());
        r.extend_from_slice(&value.to_ne_bytes());
        r.extend_from_slice(&detail.to_ne_bytes());
        let mut fixed = |s: &[u8], len: usize| {
            let mut f = s.to_vec();
            f.resize(len, 0);
            r.extend_from_slice(&f);
        };
        fixed(b"sh", COMM_LEN);
        fixed(filename, FILENAME_LEN);
        fixed(args, ARGS_LEN);
        r
    }

    #[test]
    fn exec_events_carry_the_filename_and_argv_head() {
        let args = b"sh\0-c\0echo hi\0";
        let e = Event::decode(&record(1, 0, args.len() as u64, b"/usr/bin/sh", args)).unwrap();
        assert_eq!(
            (e.cgroup_id, e.pid, e.ppid, e.comm.as_str()),
            (42, 10, 1, "sh")
        );
        assert_eq!(
            e.kind,
            EventKind::Exec {
                filename: "/usr/bin/sh".into(),
                args: "sh -c echo hi".into()
            }
        );
    }

    #[test]
    fn kills_and_denials_decode() {
        let e = Event::decode(&record(4, 2, 5_000_000, b"", b"")).unwrap();
        assert_eq!(
            e.kind,
            EventKind::BudgetKill {
                reason: KillReason::CpuTime,
                limit: 5_000_000
            }
        );
        let e = Event::decode(&record(3, 1, (1 << 32) | 7, b"", b"")).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Denied {
                what: Denial::Device,
                detail: "1:7".into()
            }
        );
        let e = Event::decode(&record(3, 4, 101, b"", b"")).unwrap();
        assert_eq!(
            e.kind,
            EventKind::Denied {
                what: Denial::Syscall,
                detail: "101".into()
            }
        );
        assert!(Event::decode(&[0u8; 8]).is_none());
    }
}
