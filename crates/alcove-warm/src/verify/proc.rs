//! Reading /proc for the verifier: bounded reads and small pure parsers of
//! its text (status, mountinfo, fdinfo, namespace links, descriptor links).

use super::{VerifyError, CAP_SETS, MAX_MOUNTINFO, MAX_PROC_FILE};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// `/proc/PID`, and reading its files with bounds.
pub(super) struct Proc {
    pub(super) dir: PathBuf,
}

impl Proc {
    pub(super) fn new(pid: libc::pid_t) -> Self {
        Proc {
            dir: PathBuf::from(format!("/proc/{pid}")),
        }
    }

    pub(super) fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.dir.join(rel)
    }

    pub(super) fn read(&self, rel: &str, limit: usize) -> Result<String, VerifyError> {
        read_bounded(&self.path(rel), limit)
    }

    pub(super) fn status(&self) -> Result<Status, VerifyError> {
        parse_status(&self.read("status", MAX_PROC_FILE)?).map_err(|detail| {
            VerifyError::Malformed {
                path: self.path("status"),
                detail,
            }
        })
    }

    pub(super) fn mountinfo(&self) -> Result<Vec<Mount>, VerifyError> {
        parse_mountinfo(&self.read("mountinfo", MAX_MOUNTINFO)?).map_err(|detail| {
            VerifyError::Malformed {
                path: self.path("mountinfo"),
                detail,
            }
        })
    }

    /// The inode of the namespace `kind` (`user`, `net`, ...).
    pub(super) fn namespace(&self, kind: &str) -> Result<u64, VerifyError> {
        let path = self.path(format!("ns/{kind}"));
        let target = fs::read_link(&path).map_err(|source| VerifyError::Read {
            path: path.clone(),
            source,
        })?;
        let text = target.to_string_lossy();
        parse_ns_link(&text, kind).ok_or_else(|| VerifyError::Malformed {
            path,
            detail: format!("the link reads {text:?}"),
        })
    }

    /// A field a file must have, or that file is malformed.
    pub(super) fn require<T>(
        &self,
        value: Option<T>,
        file: &str,
        field: &str,
    ) -> Result<T, VerifyError> {
        value.ok_or_else(|| VerifyError::Malformed {
            path: self.path(file),
            detail: format!("it has no {field} line"),
        })
    }
}

/// Reads at most `limit` bytes of `path`; a longer file is an error, not cut short.
pub(super) fn read_bounded(path: &Path, limit: usize) -> Result<String, VerifyError> {
    let bytes = read_up_to(path, limit + 1).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if bytes.len() > limit {
        return Err(VerifyError::TooLong {
            path: path.to_path_buf(),
            limit,
        });
    }
    Ok(into_string(bytes))
}

/// Reads the first `limit` bytes of `path` (or all of a shorter file).
pub(super) fn read_prefix(path: &Path, limit: usize) -> io::Result<String> {
    read_up_to(path, limit).map(into_string)
}

pub(super) fn read_up_to(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(limit.min(4096));
    File::open(path)?
        .take(limit as u64)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

pub(super) fn into_string(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A superblock, as mountinfo's `major:minor` and `stat`'s `st_dev` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Dev {
    pub(super) major: u32,
    pub(super) minor: u32,
}

impl Dev {
    pub(super) fn from_st_dev(dev: u64) -> Self {
        Dev {
            major: libc::major(dev),
            minor: libc::minor(dev),
        }
    }
}

impl fmt::Display for Dev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of /proc/PID/mountinfo, the fields alcove uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Mount {
    /// Field 1: the mount's id (what fdinfo's `mnt_id:` names).
    pub(super) id: u32,
    /// Field 3: the superblock.
    pub(super) dev: Dev,
    /// Field 5, unescaped.
    pub(super) mount_point: PathBuf,
    /// Field 6, the per-mount options, include `rw`.
    pub(super) writable: bool,
    /// The file system type (the first field after the ` - ` separator) is devpts.
    pub(super) devpts: bool,
}

/// Parses /proc/PID/mountinfo (proc(5)): `ID PARENT MAJ:MIN ROOT MOUNT_POINT
/// OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER_OPTIONS`, one mount a line.
pub(super) fn parse_mountinfo(text: &str) -> Result<Vec<Mount>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(n, line)| {
            parse_mountinfo_line(line).ok_or_else(|| format!("line {} reads {line:?}", n + 1))
        })
        .collect()
}

pub(super) fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let _parent: u32 = fields.next()?.parse().ok()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let dev = Dev {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
    };
    let _root = fields.next()?;
    let mount_point = fields.next()?;
    let mount_point = if mount_point.contains('\\') {
        PathBuf::from(std::ffi::OsString::from_vec(unescape(mount_point)))
    } else {
        PathBuf::from(mount_point)
    };
    let options = fields.next()?;
    // Optional fields (`shared:N`, `master:N`, ...), then the separator.
    while fields.next()? != "-" {}
    let devpts = fields.next()? == "devpts";
    Some(Mount {
        id,
        dev,
        mount_point,
        writable: options.split(',').any(|o| o == "rw"),
        devpts,
    })
}

/// Undoes mountinfo's escapes: a backslash and three octal digits is one
/// byte (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
pub(super) fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|d| {
            bytes[i] == b'\\' && d[0] <= b'3' && d.iter().all(|b| (b'0'..=b'7').contains(b))
        });
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// The lines of /proc/PID/status alcove reads; `None` where the line is absent.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Status {
    pub(super) state: Option<char>,
    pub(super) threads: Option<u32>,
    /// In the order of [`CAP_SETS`].
    pub(super) caps: [Option<u64>; 5],
    pub(super) no_new_privs: Option<u32>,
    pub(super) seccomp: Option<u32>,
    pub(super) seccomp_filters: Option<u32>,
    pub(super) ppid: Option<i32>,
    /// The last field of `NSpid:`: its pid in its own pid namespace.
    pub(super) innermost_pid: Option<i32>,
}

/// Parses /proc/PID/status. A line alcove reads whose value is not a number
/// is an error; a missing line is `None`.
pub(super) fn parse_status(text: &str) -> Result<Status, String> {
    let mut status = Status::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let number = || {
            value
                .parse()
                .map_err(|_| format!("{key} is {value:?}, not a number"))
        };
        match key {
            "State" => status.state = value.chars().next(),
            "Threads" => status.threads = Some(number()?),
            "NoNewPrivs" => status.no_new_privs = Some(number()?),
            "Seccomp" => status.seccomp = Some(number()?),
            "Seccomp_filters" => status.seccomp_filters = Some(number()?),
            "PPid" => {
                status.ppid = Some(
                    value
                        .parse()
                        .map_err(|_| format!("PPid is {value:?}, not a number"))?,
                )
            }
            "NSpid" => {
                let last = value.split_whitespace().last().unwrap_or(value);
                status.innermost_pid = Some(
                    last.parse()
                        .map_err(|_| format!("NSpid is {value:?}, not pids"))?,
                );
            }
            _ => {
                if let Some(i) = CAP_SETS.iter().position(|set| *set == key) {
                    let caps = u64::from_str_radix(value, 16)
                        .map_err(|_| format!("{key} is {value:?}, not a hexadecimal mask"))?;
                    status.caps[i] = Some(caps);
                }
            }
        }
    }
    Ok(status)
}

/// The state letter of /proc/PID/stat (the field after the command's `)`).
pub(super) fn stat_state(text: &str) -> Option<char> {
    text.rsplit_once(')')?.1.trim_start().chars().next()
}

/// The pids listed in /proc/PID/task/TID/children, space-separated; empty when none.
pub(super) fn parse_children(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The inode in a namespace link: `net:[4026531840]` for kind `net`.
pub(super) fn parse_ns_link(link: &str, kind: &str) -> Option<u64> {
    link.strip_prefix(kind)?
        .strip_prefix(":[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// The lines of /proc/PID/fdinfo/N alcove reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FdInfo {
    /// `flags:`, octal: the open flags (O_ACCMODE is the access mode).
    pub(super) flags: u32,
    /// `mnt_id:`: the mount the file was opened through.
    pub(super) mnt_id: u32,
}

/// Parses /proc/PID/fdinfo/N; both `flags:` and `mnt_id:` must be there.
pub(super) fn parse_fdinfo(text: &str) -> Result<FdInfo, String> {
    let (mut flags, mut mnt_id) = (None, None);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "flags" => {
                let parsed = u32::from_str_radix(value, 8)
                    .map_err(|_| format!("flags is {value:?}, not an octal number"))?;
                flags = Some(parsed);
            }
            "mnt_id" => {
                let parsed = value
                    .parse()
                    .map_err(|_| format!("mnt_id is {value:?}, not a number"))?;
                mnt_id = Some(parsed);
            }
            _ => {}
        }
    }
    Ok(FdInfo {
        flags: flags.ok_or("it has no flags line")?,
        mnt_id: mnt_id.ok_or("it has no mnt_id line")?,
    })
}

/// What a /proc/PID/fd/N link says the descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LinkKind {
    /// `socket:[INODE]`
    Socket,
    /// `pipe:[INODE]`
    Pipe,
    /// `anon_inode:[eventfd]`, `anon_inode:[eventpoll]`, `anon_inode:inotify`, ...
    AnonInode,
    /// `/memfd:NAME (deleted)`
    Memfd,
    /// Any other absolute path: a file, directory, device or named pipe.
    Path,
    /// Anything else (`net:[...]`, `pidfd:[...]`, ...).
    Other,
}

pub(super) fn classify_link(link: &[u8]) -> LinkKind {
    if link.starts_with(b"socket:[") {
        LinkKind::Socket
    } else if link.starts_with(b"pipe:[") {
        LinkKind::Pipe
    } else if link.starts_with(b"anon_inode:") {
        LinkKind::AnonInode
    } else if link.starts_with(b"/memfd:") {
        LinkKind::Memfd
    } else if link.starts_with(b"/") {
        LinkKind::Path
    } else {
        LinkKind::Other
    }
}

/// The first line where the copy's cgroup text differs from the template's,
/// for the refusal's message.
pub(super) fn first_difference(template: &str, copy: &str) -> String {
    let mut template_lines = template.lines();
    let mut copy_lines = copy.lines();
    loop {
        match (template_lines.next(), copy_lines.next()) {
            (Some(t), Some(c)) if t == c => continue,
            (Some(t), Some(c)) => return format!("the template's {t:?}, the copy's {c:?}"),
            (Some(t), None) => return format!("the template's {t:?}, nothing in the copy's"),
            (None, Some(c)) => return format!("the copy's {c:?}, nothing in the template's"),
            (None, None) => return "they differ only in whitespace".to_string(),
        }
    }
}
