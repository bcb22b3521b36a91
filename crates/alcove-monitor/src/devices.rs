//! The devices a sandbox may open under a device rule: its basic /dev and
//! the host nodes it was given.

use crate::{DeviceId, MonitorError};
use std::path::{Path, PathBuf};

/// What every sandbox's /dev holds (null, zero, full, random, urandom, tty,
/// ptmx and the pts of its own devpts).
pub const BASIC: [DeviceId; 8] = [
    dev(1, Some(3)),
    dev(1, Some(5)),
    dev(1, Some(7)),
    dev(1, Some(8)),
    dev(1, Some(9)),
    dev(5, Some(0)),
    dev(5, Some(2)),
    dev(136, None),
];

const fn dev(major: u32, minor: Option<u32>) -> DeviceId {
    DeviceId { major, minor }
}

/// The basic /dev plus each of `nodes`, which must be character devices.
pub fn basic_and(nodes: &[PathBuf]) -> Result<Vec<DeviceId>, MonitorError> {
    let mut devices = BASIC.to_vec();
    for node in nodes {
        devices.push(char_device(node)?);
    }
    Ok(devices)
}

/// The device number of the character device at `node`.
pub fn char_device(node: &Path) -> Result<DeviceId, MonitorError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let meta = std::fs::metadata(node).map_err(|_| MonitorError::NotCharDevice(node.into()))?;
    if !meta.file_type().is_char_device() {
        return Err(MonitorError::NotCharDevice(node.into()));
    }
    Ok(dev(
        libc::major(meta.rdev()),
        Some(libc::minor(meta.rdev())),
    ))
}

/// Parses `--devices`: names (null, zero, full, random, urandom, tty, ptmx,
/// pts) and `MAJOR:MINOR` numbers, comma-separated.
pub fn parse_list(text: &str) -> Result<Vec<DeviceId>, String> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|name| {
            Ok(match name {
                "null" => dev(1, Some(3)),
                "zero" => dev(1, Some(5)),
                "full" => dev(1, Some(7)),
                "random" => dev(1, Some(8)),
                "urandom" => dev(1, Some(9)),
                "tty" => dev(5, Some(0)),
                "ptmx" => dev(5, Some(2)),
                "pts" => dev(136, None),
                other => {
                    let bad = || {
                        format!(
                            "{other:?} is not a device: use null, zero, full, random, urandom, \
                             tty, ptmx, pts or MAJOR:MINOR"
                        )
                    };
                    let (major, minor) = other.split_once(':').ok_or_else(bad)?;
                    dev(
                        major.parse().map_err(|_| bad())?,
                        Some(minor.parse().map_err(|_| bad())?),
                    )
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_bad_items_are_named() {
        assert_eq!(
            parse_list("null,pts,10:200").unwrap(),
            vec![dev(1, Some(3)), dev(136, None), dev(10, Some(200))]
        );
        assert_eq!(parse_list("").unwrap(), vec![]);
        assert!(parse_list("1:x")
            .unwrap_err()
            .starts_with("\"1:x\" is not a device"));
        let e = char_device(Path::new("/etc/hostname")).unwrap_err();
        assert_eq!(e.to_string(), "/etc/hostname is not a character device");
    }
}
