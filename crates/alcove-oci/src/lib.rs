//! alcove-oci owns alcove's OCI runtime: the bundle's `config.json` (OCI
//! runtime spec 1.x, through `oci-spec`) turned into a running container with
//! runc's lifecycle and command line, so that podman (through conmon),
//! containerd's runc shim and Kubernetes can run containers on alcove.
//!
//! Data flows one way: the command line (`bin/alcove-oci.rs`) calls
//! [`container`], which reads [`config`], keeps [`state`] under the root
//! directory, places the container in [`cgroups`], and starts the container's
//! init through [`init`] (namespaces, [`rootfs`], [`caps`], [`seccomp`],
//! [`console`], [`hooks`]). It must not hold policy of its own beyond the
//! spec's: what runs and with what limits is the caller's config.

pub mod caps;
pub mod cgroups;
pub mod config;
pub mod console;
pub mod container;
pub mod exec;
pub mod features;
pub mod hooks;
pub mod init;
pub mod rootfs;
pub mod seccomp;
pub mod state;
mod sync;
