//! The spec's `linux.resources` written into the container's cgroup: each
//! controller's settings go to v1 or v2, wherever the host serves it.

use super::{devices, v1, v2, write, CgroupsError, ContainerCgroup, Place};
use oci_spec::runtime::LinuxResources;
use std::path::{Path, PathBuf};

impl ContainerCgroup {
    /// Writes `resources` into the container's cgroup (the `update` command).
    pub fn update(&self, resources: &LinuxResources) -> Result<(), CgroupsError> {
        self.apply(resources)
    }

    pub(super) fn apply(&self, r: &LinuxResources) -> Result<(), CgroupsError> {
        if let Some(m) = r.memory() {
            let wanted = m.limit().is_some()
                || m.reservation().is_some()
                || m.swap().is_some()
                || m.swappiness().is_some()
                || m.disable_oom_killer() == Some(true);
            self.dispatch(
                ("memory limits", "memory", "memory"),
                wanted,
                |place| match place {
                    Place::V1(d) => v1::memory(d, m),
                    Place::V2(d) => v2::memory(d, m),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(c) = r.cpu() {
            let wanted = c.shares().is_some()
                || c.quota().is_some()
                || c.period().is_some()
                || c.realtime_runtime().is_some()
                || c.realtime_period().is_some()
                || c.idle().is_some()
                || c.burst().is_some();
            self.dispatch(("cpu limits", "cpu", "cpu"), wanted, |place| match place {
                Place::V1(d) => v1::cpu(d, c),
                Place::V2(d) => v2::cpu(d, c),
                Place::Absent => Ok(()),
            })?;
            let non_empty = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
            let wanted = non_empty(c.cpus()) || non_empty(c.mems());
            self.dispatch(
                ("cpuset", "cpuset", "cpuset"),
                wanted,
                |place| match place {
                    Place::V1(d) | Place::V2(d) => cpuset(d, c),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(p) = r.pids() {
            let value = if p.limit() > 0 {
                p.limit().to_string()
            } else {
                "max".to_owned()
            };
            self.dispatch(
                ("the pids limit", "pids", "pids"),
                true,
                |place| match place {
                    Place::V1(d) | Place::V2(d) => write(&d.join("pids.max"), &value),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(b) = r.block_io() {
            self.dispatch(
                ("block IO limits", "blkio", "io"),
                v1::blkio_wanted(b),
                |place| match place {
                    Place::V1(d) => v1::blkio(d, b),
                    Place::V2(d) => v2::io(d, b),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(h) = r.hugepage_limits() {
            self.dispatch(
                ("hugepage limits", "hugetlb", "hugetlb"),
                !h.is_empty(),
                |place| match place {
                    Place::V1(d) => v1::hugetlb(d, h),
                    Place::V2(d) => v2::hugetlb(d, h),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(n) = r.network() {
            v1::network(self.v1.get("net_cls"), self.v1.get("net_prio"), n)?;
        }
        if let Some(rdma) = r.rdma() {
            self.dispatch(
                ("rdma limits", "rdma", "rdma"),
                !rdma.is_empty(),
                |place| match place {
                    Place::V1(d) | Place::V2(d) => rdma_limits(d, rdma),
                    Place::Absent => Ok(()),
                },
            )?;
        }
        if let Some(u) = r.unified().as_ref().filter(|u| !u.is_empty()) {
            let Some(dir) = &self.unified else {
                return Err(CgroupsError::Unsupported {
                    what: "linux.resources.unified",
                    controller: "cgroup2",
                });
            };
            v2::unified(dir, &self.v2_controllers, u)?;
        }
        if let Some(rules) = r.devices() {
            devices::apply(
                self.v1.get("devices").map(PathBuf::as_path),
                self.unified.as_deref(),
                rules,
            )?;
        }
        Ok(())
    }

    /// Runs `write` on where the controller (`names`: what, v1 name, v2 name)
    /// is served, if `wanted`; wanted but served nowhere is an error.
    fn dispatch(
        &self,
        names: (&'static str, &'static str, &'static str),
        wanted: bool,
        write: impl FnOnce(Place<'_>) -> Result<(), CgroupsError>,
    ) -> Result<(), CgroupsError> {
        if !wanted {
            return Ok(());
        }
        match self.place(names.1, names.2) {
            Place::Absent => Err(CgroupsError::Unsupported {
                what: names.0,
                controller: names.1,
            }),
            place => write(place),
        }
    }
}

/// cpuset.cpus and cpuset.mems; v1 and v2 share the names and syntax.
fn cpuset(dir: &Path, c: &oci_spec::runtime::LinuxCpu) -> Result<(), CgroupsError> {
    for (file, value) in [("cpuset.cpus", c.cpus()), ("cpuset.mems", c.mems())] {
        if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
            write(&dir.join(file), value)?;
        }
    }
    Ok(())
}

/// rdma.max, one line per device; v1 and v2 share the syntax.
fn rdma_limits(
    dir: &Path,
    limits: &std::collections::HashMap<String, oci_spec::runtime::LinuxRdma>,
) -> Result<(), CgroupsError> {
    for (device, limit) in limits {
        if device.is_empty() || device.contains(char::is_whitespace) {
            return Err(CgroupsError::Invalid {
                what: "rdma device name",
                reason: format!("{device:?} is empty or holds white space"),
            });
        }
        let value = |v: Option<u32>| v.map_or("max".to_owned(), |v| v.to_string());
        let line = format!(
            "{device} hca_handle={} hca_object={}",
            value(limit.hca_handles()),
            value(limit.hca_objects())
        );
        write(&dir.join("rdma.max"), &line)?;
    }
    Ok(())
}
