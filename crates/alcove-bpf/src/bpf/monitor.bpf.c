// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* alcove's per-sandbox monitor: events, accounting and budgets, all keyed by
 * the sandbox's cgroup2 id and filtered in the kernel, so that processes
 * outside sandboxes pay one hash lookup where a program is attached at all.
 *
 * Always attached while alcove monitors anything: exec, exit and OOM (each
 * fires once per process, not per syscall). Attached only while some sandbox
 * asks for them: raw_syscalls/sys_enter (syscall counts and budgets), the
 * cpu-clock perf_event program (CPU budgets, which catch spinners that make
 * no syscalls), and sys_exit (EPERMs: what seccomp refused, which never
 * reaches sys_enter). Context switches, page faults and bytes read and
 * written come from the exiting task's own counters. All are BTF-typed raw tracepoints
 * (tp_btf): they need no tracefs, and cost less than perf-event tracepoints. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "intf.h"

#define SIGKILL 9

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* CPU already charged to a sandbox's budget, per task (thread), in the
 * task's own storage: it goes with the task, and no sandbox's tasks can
 * crowd another's out of a shared table. A budget is charged the task's own
 * run time (which the scheduler keeps without the time a hypervisor stole
 * from the CPU, as the cgroup's figure does), not one sampling tick per
 * sample: ticks follow the wall clock, steal included, and spent budgets
 * twice as fast on a VM whose host took half its CPU. */
struct alcove_task_charge {
	__u64 charged_ns; /* its sum_exec_runtime when last charged */
	__u64 armed_ns;	  /* the arming it was charged under: a pool slot's
			   * cgroup (and id) serves one run after another */
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct alcove_task_charge);
} task_charges SEC(".maps");

/* The sampling period: what a sample charges when the task's storage cannot
 * be had (out of memory, or taken on this CPU by a program it interrupted). */
#define TICK_NS 1000000ull

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ALCOVE_MAX_SANDBOXES);
	__type(key, __u64);
	__type(value, struct alcove_sandbox);
} sandboxes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, ALCOVE_MAX_SANDBOXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct alcove_stats);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, ALCOVE_MAX_SYSCALL_KEYS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alcove_syscall_key);
	__type(value, __u64);
} syscall_counts SEC(".maps");

/* Syscalls that returned EPERM, by number: what seccomp (or a rule) refused. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, ALCOVE_MAX_SYSCALL_KEYS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alcove_syscall_key);
	__type(value, __u64);
} eperm_counts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Events the ring buffer had no room for: never lost silently. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} dropped SEC(".maps");

/* Whether routine events (exec, exit, learned files and peers) wake the
 * reader at once: only while someone watches the stream live (set from user
 * space; index 0). Otherwise they wait in the ring for the reader's next
 * turn, and a run costs no wake-up of its thread; kills, denials and OOMs
 * always wake it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} live SEC(".maps");

static __always_inline void submit(struct alcove_event *e)
{
	/* A kill, denial or OOM wakes the reader even behind routine events
	 * that did not (the default wakes it only when it has read all). */
	__u64 flags = BPF_RB_FORCE_WAKEUP;
	if (e->kind == ALCOVE_EV_EXEC || e->kind == ALCOVE_EV_EXIT ||
	    e->kind == ALCOVE_EV_FILE || e->kind == ALCOVE_EV_PEER) {
		__u32 zero = 0;
		__u32 *on = bpf_map_lookup_elem(&live, &zero);
		flags = on && *on ? 0 : BPF_RB_NO_WAKEUP;
	}
	bpf_ringbuf_submit(e, flags);
}

static __always_inline struct alcove_event *reserve(__u64 cg, __u32 kind)
{
	struct alcove_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&dropped, &zero);
		if (n)
			*n += 1;
		return NULL;
	}
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	e->cgroup_id = cg;
	e->ts_ns = bpf_ktime_get_ns();
	e->kind = kind;
	e->pid = BPF_CORE_READ(task, tgid);
	e->ppid = BPF_CORE_READ(task, real_parent, tgid);
	e->value = 0;
	e->detail = 0;
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->filename[0] = 0;
	e->args[0] = 0;
	return e;
}

/* Reports a budget spent by `task` (NULL: the current task), once per
 * sandbox; user space then kills the sandbox's every process. */
static __always_inline void report_kill(__u64 cg, struct alcove_sandbox *sb, struct task_struct *task,
					__u32 reason, __u64 detail)
{
	if (__sync_val_compare_and_swap(&sb->killed, 0, reason) != 0)
		return; /* reported once */
	struct alcove_event *e = reserve(cg, ALCOVE_EV_BUDGET_KILL);
	if (!e) {
		/* The ring is full (a neighbour's exec loop can fill it): not
		 * reported, so the next charge past the budget tries again. */
		__sync_val_compare_and_swap(&sb->killed, reason, 0);
		return;
	}
	if (task) {
		e->pid = BPF_CORE_READ(task, tgid);
		e->ppid = BPF_CORE_READ(task, real_parent, tgid);
		bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), &task->comm);
	}
	e->value = reason;
	e->detail = detail;
	submit(e);
}

/* Kills the current task at once (it is the one spending the budget) and
 * reports the kill. */
static __always_inline void kill_current(__u64 cg, struct alcove_sandbox *sb, __u32 reason, __u64 detail)
{
	bpf_send_signal(SIGKILL);
	report_kill(cg, sb, NULL, reason, detail);
}

/* Task `task`'s run time since it was last charged, recorded as charged
 * now. The first charge of a task started since the sandbox was armed is
 * its whole run time; of one that was there before (a process adopted
 * running; the task that exec'd the program has its mark from the exec),
 * what it ran since, which is at most the time since. The scheduler brings
 * a running task's figure up to date at each of its ticks and switches, so
 * a sample can lag by one scheduler tick; the final remainder is charged
 * when the task is freed. */
static __always_inline __u64 charge_task(struct alcove_sandbox *sb, struct task_struct *task, bool freed)
{
	__u64 runtime = BPF_CORE_READ(task, se.sum_exec_runtime);
	__u64 armed = sb->armed_ns;
	struct alcove_task_charge *c = bpf_task_storage_get(&task_charges, task, 0, 0);
	if (c) {
		__u64 last = c->charged_ns;
		bool earlier_run = c->armed_ns != armed;
		c->charged_ns = runtime;
		c->armed_ns = armed;
		/* A task of an earlier run in the same cgroup (freed late) is
		 * not this run's. */
		if (runtime <= last || earlier_run || !armed)
			return 0;
		return runtime - last;
	}
	/* A freed task's storage is not made: it would go at once. */
	if (!freed) {
		c = bpf_task_storage_get(&task_charges, task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (!c)
			return TICK_NS;
		c->charged_ns = runtime;
		c->armed_ns = armed;
	}
	/* Seen armed before the time it was armed at (weakly ordered CPUs):
	 * from now on. */
	if (!armed)
		return 0;
	if (BPF_CORE_READ(task, start_time) >= armed)
		return runtime;
	__u64 since = bpf_ktime_get_ns() - armed;
	return runtime < since ? runtime : since;
}

/* Charges the sandbox what `task` ran since it was last charged; past the
 * budget, reports the kill, and kills the task at once when it is the
 * current one (a freed task is not). */
static __always_inline void charge_cpu(__u64 cg, struct alcove_sandbox *sb, struct task_struct *task, bool current)
{
	__u64 ran = charge_task(sb, task, !current);
	if (!ran)
		return;
	__u64 used = __sync_fetch_and_add(&sb->cpu_ns, ran) + ran;
	if (used <= sb->cpu_budget_ns)
		return;
	if (current)
		kill_current(cg, sb, ALCOVE_KILL_CPU, sb->cpu_budget_ns);
	else
		report_kill(cg, sb, task, ALCOVE_KILL_CPU, sb->cpu_budget_ns);
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u64 cg = bpf_get_current_cgroup_id();
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	if (!sb)
		return 0;
	/* Counting starts with the program: alcove's own setup before its exec
	 * is not the program's doing. */
	if (!sb->armed && sb->cpu_budget_ns) {
		sb->armed_ns = bpf_ktime_get_ns();
		struct alcove_task_charge *c =
			bpf_task_storage_get(&task_charges, p, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (c) {
			c->charged_ns = BPF_CORE_READ(p, se.sum_exec_runtime);
			c->armed_ns = sb->armed_ns;
		}
	}
	sb->armed = 1;
	struct alcove_stats *st = bpf_map_lookup_elem(&stats, &cg);
	if (st)
		st->execs += 1;
	struct alcove_event *e = reserve(cg, ALCOVE_EV_EXEC);
	if (!e)
		return 0;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	unsigned long start = BPF_CORE_READ(p, mm, arg_start);
	unsigned long end = BPF_CORE_READ(p, mm, arg_end);
	unsigned long len = end - start;
	if (len > sizeof(e->args))
		len = sizeof(e->args);
	bpf_probe_read_user(e->args, sizeof(e->args), (void *)start);
	e->detail = len;
	submit(e);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit, struct task_struct *p)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&sandboxes, &cg))
		return 0;
	struct alcove_stats *st = bpf_map_lookup_elem(&stats, &cg);
	/* Bytes read and written through syscalls (files, pipes, sockets), from
	 * each task's own counters as it exits, threads included: the thread
	 * group's shared counters also hold what reaped children did, which their
	 * own exits count already. */
	if (st) {
		st->bytes_read += BPF_CORE_READ(p, ioac.rchar);
		st->bytes_written += BPF_CORE_READ(p, ioac.wchar);
	}
	if (BPF_CORE_READ(p, pid) != BPF_CORE_READ(p, tgid))
		return 0; /* a thread, not a process */
	/* Context switches and page faults, added as each process exits: the
	 * kernel already counts them per task (and per thread group for threads
	 * that died; children's go to separate fields), so nothing has to run
	 * on every switch or fault. */
	if (st) {
		st->ctx_switches += BPF_CORE_READ(p, nvcsw) + BPF_CORE_READ(p, nivcsw) +
				    BPF_CORE_READ(p, signal, nvcsw) + BPF_CORE_READ(p, signal, nivcsw);
		st->page_faults += BPF_CORE_READ(p, min_flt) + BPF_CORE_READ(p, maj_flt) +
				   BPF_CORE_READ(p, signal, min_flt) + BPF_CORE_READ(p, signal, maj_flt);
	}
	struct alcove_event *e = reserve(cg, ALCOVE_EV_EXIT);
	if (!e)
		return 0;
	e->value = BPF_CORE_READ(p, exit_code);
	submit(e);
	return 0;
}

SEC("tp_btf/mark_victim")
int BPF_PROG(on_oom, struct task_struct *victim)
{
	__u64 cg = bpf_get_current_cgroup_id();
	if (!bpf_map_lookup_elem(&sandboxes, &cg))
		return 0;
	struct alcove_event *e = reserve(cg, ALCOVE_EV_OOM);
	if (!e)
		return 0;
	e->detail = BPF_CORE_READ(victim, tgid);
	submit(e);
	return 0;
}

/* Learn mode: report the path (and flags) of open-family calls. */
static __always_inline void learn_open(__u64 cg, struct pt_regs *regs, long id)
{
	const char *path;
	long flags;
#if defined(__TARGET_ARCH_x86)
	if (id == 2) {			/* open(path, flags) */
		path = (const char *)BPF_CORE_READ(regs, di);
		flags = BPF_CORE_READ(regs, si);
	} else if (id == 257) {		/* openat(dirfd, path, flags) */
		path = (const char *)BPF_CORE_READ(regs, si);
		flags = BPF_CORE_READ(regs, dx);
	} else {
		return;
	}
#elif defined(__TARGET_ARCH_arm64)
	if (id != 56)			/* openat */
		return;
	path = (const char *)BPF_CORE_READ(regs, regs[1]);
	flags = BPF_CORE_READ(regs, regs[2]);
#else
	return;
#endif
	struct alcove_event *e = reserve(cg, ALCOVE_EV_FILE);
	if (!e)
		return;
	bpf_probe_read_user_str(e->filename, sizeof(e->filename), path);
	e->value = flags;
	submit(e);
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_sys_enter, struct pt_regs *regs, long id)
{
	__u64 cg = bpf_get_current_cgroup_id();
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	if (!sb || !sb->armed)
		return 0;
	/* The total is the sum of the per-syscall counts (user space adds them
	 * up): one map update per syscall, not two. */
	if (sb->flags & ALCOVE_TRACE_SYSCALLS) {
		struct alcove_syscall_key key = { .cgroup_id = cg, .nr = (__u32)id };
		__u64 *n = bpf_map_lookup_elem(&syscall_counts, &key);
		if (n) {
			*n += 1;
		} else {
			__u64 one = 1;
			bpf_map_update_elem(&syscall_counts, &key, &one, BPF_NOEXIST);
		}
	}
	if (sb->flags & ALCOVE_LEARN)
		learn_open(cg, regs, id);
	if (sb->syscall_budget) {
		__u64 used = __sync_fetch_and_add(&sb->syscalls, 1) + 1;
		if (used > sb->syscall_budget)
			kill_current(cg, sb, ALCOVE_KILL_SYSCALLS, sb->syscall_budget);
	}
	return 0;
}

SEC("perf_event")
int on_tick(struct bpf_perf_event_data *ctx)
{
	__u64 cg = bpf_get_current_cgroup_id();
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	if (!sb || !sb->armed)
		return 0; /* alcove's own setup before the exec is not the program's */
	if (sb->cpu_budget_ns)
		charge_cpu(cg, sb, bpf_get_current_task_btf(), true);
	return 0;
}

/* A task's last run time, charged once it is final: after its exit the
 * task still runs (it tears down its memory, wakes its parent, switches
 * away), and a short-lived one may never have been sampled. The freed task
 * is not the current one; its cgroup is still its own until it is put. */
SEC("tp_btf/sched_process_free")
int BPF_PROG(on_task_free, struct task_struct *p)
{
	__u64 cg = BPF_CORE_READ(p, cgroups, dfl_cgrp, kn, id);
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	if (sb && sb->armed && sb->cpu_budget_ns)
		charge_cpu(cg, sb, p, false);
	return 0;
}

static __always_inline void report_denial(__u64 cg, __s32 what, __u64 detail, const void *addr, __u32 addr_len, __u32 family)
{
	/* A sandbox that tries a refused thing in a loop must not flood the
	 * ring: the first few are reported, the rest only refused. */
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	if (sb && __sync_fetch_and_add(&sb->reports, 1) >= ALCOVE_DENIALS_REPORTED)
		return;
	struct alcove_event *e = reserve(cg, ALCOVE_EV_DENIED);
	if (!e)
		return;
	e->value = what;
	e->detail = detail;
	if (addr_len)
		bpf_probe_read_kernel(e->filename, addr_len & 31, addr);
	e->args[0] = family;
	submit(e);
}

/* Syscalls refused with EPERM, from raw_syscalls/sys_exit: seccomp skips a
 * refused call before sys_enter, but its exit still passes here. Counted by
 * number for traced sandboxes; reported as a denial when a sandbox with a
 * syscall policy made a call outside it (which its seccomp allow-list refused). */
SEC("tp_btf/sys_exit")
int BPF_PROG(on_sys_exit, struct pt_regs *regs, long ret)
{
	if (ret != -1 /* -EPERM */)
		return 0;
	__u64 cg = bpf_get_current_cgroup_id();
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	if (!sb || !sb->armed)
		return 0;
#if defined(__TARGET_ARCH_x86)
	long nr = BPF_CORE_READ(regs, orig_ax);
#elif defined(__TARGET_ARCH_arm64)
	long nr = BPF_CORE_READ(regs, syscallno);
#else
	long nr = -1;
#endif
	if (sb->flags & ALCOVE_TRACE_SYSCALLS) {
		struct alcove_syscall_key key = { .cgroup_id = cg, .nr = (__u32)nr };
		__u64 *n = bpf_map_lookup_elem(&eperm_counts, &key);
		if (n) {
			*n += 1;
		} else {
			__u64 one = 1;
			bpf_map_update_elem(&eperm_counts, &key, &one, BPF_NOEXIST);
		}
	}
	if (!(sb->flags & ALCOVE_SYSCALL_POLICY) || nr < 0)
		return 0;
	__u32 bit = (__u32)nr;
	if (bit < ALCOVE_SYSCALL_BITS &&
	    (sb->allowed_syscalls[(bit / 64) & (ALCOVE_SYSCALL_BITS / 64 - 1)] >> (bit % 64)) & 1)
		return 0; /* allowed, refused for another reason */
	__sync_fetch_and_add(&sb->denied, 1);
	report_denial(cg, ALCOVE_DENY_SYSCALL, (__u64)nr, 0, 0, 0);
	return 0;
}

/* ---- Rules: devices and network, refused with a real EPERM. ---- */

#define BPF_DEVCG_ACC_MKNOD 1
#define BPF_DEVCG_DEV_BLOCK 1
#define BPF_DEVCG_DEV_CHAR 2
#define AF_INET 2
#define AF_INET6 10

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ALCOVE_MAX_SANDBOXES * 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alcove_dev_key);
	__type(value, __u8);
} allowed_devices SEC(".maps");

/* Sandboxes whose network is restricted (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ALCOVE_MAX_SANDBOXES);
	__type(key, __u64);
	__type(value, __u8);
} net_restricted SEC(".maps");

/* A restricted sandbox's network rules, longest prefix first: the value is
 * ALCOVE_NET_ALLOW or ALCOVE_NET_DENY (a host address inside an allowed range). */
#define ALCOVE_NET_ALLOW 1
#define ALCOVE_NET_DENY 2

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	/* Allocated as used (no prealloc): room for many outbound sandboxes'
	 * rules and learned addresses. */
	__uint(max_entries, ALCOVE_MAX_SANDBOXES * 128);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alcove_net4_key);
	__type(value, __u8);
} allowed_net4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, ALCOVE_MAX_SANDBOXES * 16);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct alcove_net6_key);
	__type(value, __u8);
} allowed_net6 SEC(".maps");

SEC("cgroup/dev")
int device_policy(struct bpf_cgroup_dev_ctx *ctx)
{
	/* Read the context once, at constant offsets (the verifier refuses
	 * reads through a moved context pointer). */
	__u32 access = ctx->access_type;
	__u32 major = ctx->major;
	__u32 minor = ctx->minor;
	__u64 cg = bpf_get_current_cgroup_id();
	struct alcove_dev_key key = { .cgroup_id = cg, .major = major, .minor = minor };
	if ((access & 0xFFFF) == BPF_DEVCG_DEV_CHAR && !((access >> 16) & BPF_DEVCG_ACC_MKNOD)) {
		if (bpf_map_lookup_elem(&allowed_devices, &key))
			return 1;
		key.minor = ALCOVE_ANY_MINOR;
		if (bpf_map_lookup_elem(&allowed_devices, &key))
			return 1;
	}
	report_denial(cg, ALCOVE_DENY_DEVICE, ((__u64)major << 32) | minor, 0, 0, 0);
	return 0;
}

static __always_inline int learning(__u64 cg)
{
	struct alcove_sandbox *sb = bpf_map_lookup_elem(&sandboxes, &cg);
	return sb && (sb->flags & ALCOVE_LEARN);
}

static __always_inline void report_peer(__u64 cg, __s32 what, __u64 port, const void *addr, __u32 addr_len, __u32 family)
{
	struct alcove_event *e = reserve(cg, ALCOVE_EV_PEER);
	if (!e)
		return;
	e->value = what;
	e->detail = port;
	bpf_probe_read_kernel(e->filename, addr_len & 31, addr);
	e->args[0] = family;
	submit(e);
}

static __always_inline int allow_v4(__u64 cg, __u32 ip4, __u32 port, __s32 what)
{
	if (!bpf_map_lookup_elem(&net_restricted, &cg)) {
		if (learning(cg))
			report_peer(cg, what, bpf_ntohs(port), &ip4, 4, AF_INET);
		return 1;
	}
	__u8 *b = (__u8 *)&ip4;
	if (b[0] == 127)
		return 1; /* loopback is always allowed */
	struct alcove_net4_key key = { .prefixlen = 64 + 32, .cgroup_id = cg };
	__builtin_memcpy(key.addr, &ip4, 4);
	__u8 *rule = bpf_map_lookup_elem(&allowed_net4, &key);
	if (rule && *rule == ALCOVE_NET_ALLOW)
		return 1; /* the longest matching rule decides: a deny inside an allow wins */
	report_denial(cg, what, bpf_ntohs(port), &ip4, 4, AF_INET);
	return 0;
}

static __always_inline int allow_v6(__u64 cg, struct bpf_sock_addr *ctx, __s32 what)
{
	struct alcove_net6_key key = { .prefixlen = 64 + 128, .cgroup_id = cg };
	__u32 a0 = ctx->user_ip6[0], a1 = ctx->user_ip6[1], a2 = ctx->user_ip6[2], a3 = ctx->user_ip6[3];
	__u32 port = ctx->user_port;
	/* An IPv4-mapped address (a dual-stack socket) is an IPv4 peer: the
	 * IPv4 rules decide, as they do for its sendmsg. */
	if (!a0 && !a1 && a2 == bpf_htonl(0xffff))
		return allow_v4(cg, a3, port, what);
	__builtin_memcpy(&key.addr[0], &a0, 4);
	__builtin_memcpy(&key.addr[4], &a1, 4);
	__builtin_memcpy(&key.addr[8], &a2, 4);
	__builtin_memcpy(&key.addr[12], &a3, 4);
	if (!bpf_map_lookup_elem(&net_restricted, &cg)) {
		if (learning(cg))
			report_peer(cg, what, bpf_ntohs(port), key.addr, 16, AF_INET6);
		return 1;
	}
	/* ::1, and IPv4-mapped 127.0.0.0/8 */
	if (!a0 && !a1 && !a2 && a3 == bpf_htonl(1))
		return 1;
	if (!a0 && !a1 && a2 == bpf_htonl(0xffff) && key.addr[12] == 127)
		return 1;
	__u8 *rule = bpf_map_lookup_elem(&allowed_net6, &key);
	if (rule && *rule == ALCOVE_NET_ALLOW)
		return 1;
	report_denial(cg, what, bpf_ntohs(port), key.addr, 16, AF_INET6);
	return 0;
}

SEC("cgroup/connect4")
int connect4(struct bpf_sock_addr *ctx)
{
	return allow_v4(bpf_get_current_cgroup_id(), ctx->user_ip4, ctx->user_port, ALCOVE_DENY_CONNECT);
}

SEC("cgroup/connect6")
int connect6(struct bpf_sock_addr *ctx)
{
	return allow_v6(bpf_get_current_cgroup_id(), ctx, ALCOVE_DENY_CONNECT);
}

SEC("cgroup/sendmsg4")
int sendmsg4(struct bpf_sock_addr *ctx)
{
	return allow_v4(bpf_get_current_cgroup_id(), ctx->user_ip4, ctx->user_port, ALCOVE_DENY_CONNECT);
}

SEC("cgroup/sendmsg6")
int sendmsg6(struct bpf_sock_addr *ctx)
{
	return allow_v6(bpf_get_current_cgroup_id(), ctx, ALCOVE_DENY_CONNECT);
}

SEC("cgroup/bind4")
int bind4(struct bpf_sock_addr *ctx)
{
	return allow_v4(bpf_get_current_cgroup_id(), ctx->user_ip4, ctx->user_port, ALCOVE_DENY_BIND);
}

SEC("cgroup/bind6")
int bind6(struct bpf_sock_addr *ctx)
{
	return allow_v6(bpf_get_current_cgroup_id(), ctx, ALCOVE_DENY_BIND);
}
