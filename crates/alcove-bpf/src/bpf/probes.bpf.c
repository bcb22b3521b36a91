// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* Tiny programs whose only job is to show whether this kernel loads each
 * program type; `alcove doctor` tries them one at a time. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("lsm/file_open")
int BPF_PROG(probe_lsm, struct file *file)
{
	return 0;
}

SEC("fentry/do_unlinkat")
int BPF_PROG(probe_fentry)
{
	return 0;
}

SEC("kprobe/do_unlinkat")
int probe_kprobe(void *ctx)
{
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(probe_tp_btf)
{
	return 0;
}

SEC("perf_event")
int probe_perf_event(void *ctx)
{
	return 0;
}

SEC("cgroup/dev")
int probe_cgroup_dev(void *ctx)
{
	return 1;
}

SEC("cgroup/connect4")
int probe_sock_addr(void *ctx)
{
	return 1;
}
