//! What this kernel supports of BPF, found by trying: each probe program is
//! loaded on its own, and a failure is reported with the kernel's answer.

use crate::probes_skel::ProbesSkelBuilder;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use std::mem::MaybeUninit;

/// One kernel feature and whether it works here.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub available: bool,
    /// The kernel's answer when it is not, or a note.
    pub detail: String,
}

/// The BPF program types alcove uses or could use, each tried on this kernel.
pub fn probe() -> Vec<Feature> {
    libbpf_rs::set_print(None); // failed loads are the expected answer here
    let mut features = vec![Feature {
        name: "BTF (/sys/kernel/btf/vmlinux, for CO-RE)",
        available: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        detail: String::new(),
    }];
    // SAFETY: probing a map type creates and closes a map, with no options.
    let ringbuf = unsafe {
        libbpf_rs::libbpf_sys::libbpf_probe_bpf_map_type(
            libbpf_rs::libbpf_sys::BPF_MAP_TYPE_RINGBUF,
            std::ptr::null(),
        )
    };
    features.push(Feature {
        name: "ring buffer maps",
        available: ringbuf == 1,
        detail: if ringbuf == 1 {
            String::new()
        } else {
            format!("probe returned {ringbuf}")
        },
    });
    let programs: [(&'static str, usize); 7] = [
        ("BTF raw tracepoints (tp_btf)", 3),
        ("perf_event programs (cpu-clock sampling)", 4),
        ("cgroup device programs", 5),
        ("cgroup sock_addr programs", 6),
        ("BPF LSM programs (lsm/)", 0),
        ("fentry/fexit programs", 1),
        ("kprobes", 2),
    ];
    for (name, index) in programs {
        let result = try_load(index);
        features.push(Feature {
            name,
            available: result.is_ok(),
            detail: result.err().unwrap_or_default(),
        });
    }
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm").unwrap_or_default();
    features.push(Feature {
        name: "BPF LSM enabled at boot (lsm= includes bpf)",
        available: lsms.split(',').any(|l| l.trim() == "bpf"),
        detail: format!("active LSMs: {}", lsms.trim()),
    });
    features
}

/// Loads only the probe program at `index` (in the order of probes.bpf.c).
fn try_load(index: usize) -> Result<(), String> {
    let storage = Box::leak(Box::new(MaybeUninit::uninit()));
    let mut open = ProbesSkelBuilder::default()
        .open(storage)
        .map_err(|e| e.to_string())?;
    let progs = &mut open.progs;
    let all = [
        &mut progs.probe_lsm,
        &mut progs.probe_fentry,
        &mut progs.probe_kprobe,
        &mut progs.probe_tp_btf,
        &mut progs.probe_perf_event,
        &mut progs.probe_cgroup_dev,
        &mut progs.probe_sock_addr,
    ];
    for (i, prog) in all.into_iter().enumerate() {
        prog.set_autoload(i == index);
    }
    let skel = open.load().map_err(|e| e.to_string())?;
    if index == 2 {
        // A kprobe loads anywhere; attaching is what function tracing refuses.
        drop(
            skel.progs
                .probe_kprobe
                .attach()
                .map_err(|e| e.to_string())?,
        );
    }
    Ok(())
}
