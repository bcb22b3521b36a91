/* Shared between the BPF programs and alcove-bpf's Rust side (which mirrors
 * these layouts in src/intf.rs). Keep both in step. */
#ifndef ALCOVE_INTF_H
#define ALCOVE_INTF_H

#define ALCOVE_MAX_SANDBOXES 4096
/* Maps are not preallocated: these bound them, they cost nothing unused. */
#define ALCOVE_MAX_SYSCALL_KEYS 65536
#define ALCOVE_FILENAME_LEN 128
#define ALCOVE_ARGS_LEN 128
#define ALCOVE_COMM_LEN 16

/* alcove_sandbox.flags */
#define ALCOVE_TRACE_SYSCALLS (1u << 0)
#define ALCOVE_LEARN (1u << 1)	/* report opened files and network peers */
#define ALCOVE_SYSCALL_POLICY (1u << 2)	/* report calls outside allowed_syscalls */
/* Syscall numbers the allow-list bitmap covers (x86-64 and arm64 stay below). */
#define ALCOVE_SYSCALL_BITS 512
/* Denials reported as events per sandbox; later ones are only refused (and counted, for syscalls). */
#define ALCOVE_DENIALS_REPORTED 16

enum alcove_event_kind {
	ALCOVE_EV_EXEC = 1,
	ALCOVE_EV_EXIT = 2,
	ALCOVE_EV_DENIED = 3,
	ALCOVE_EV_BUDGET_KILL = 4,
	ALCOVE_EV_OOM = 5,
	ALCOVE_EV_FILE = 6,	/* learn mode: a path opened (value: open flags) */
	ALCOVE_EV_PEER = 7,	/* learn mode: a connect/send/bind (value: alcove_denial kind) */
};

enum alcove_kill_reason {
	ALCOVE_KILL_SYSCALLS = 1,
	ALCOVE_KILL_CPU = 2,
};

enum alcove_denial {
	ALCOVE_DENY_DEVICE = 1,
	ALCOVE_DENY_CONNECT = 2,
	ALCOVE_DENY_BIND = 3,
	ALCOVE_DENY_SYSCALL = 4,	/* outside a learned policy (detail: the number) */
};

/* One sandbox's policy and shared counters, keyed by its cgroup2 id. */
struct alcove_sandbox {
	__u64 syscall_budget;	/* 0: none */
	__u64 cpu_budget_ns;	/* 0: none */
	__u64 syscalls;		/* atomically counted, only with a syscall budget */
	__u64 cpu_ns;		/* sampled by the perf_event program */
	__u32 flags;
	__u32 armed;		/* set at the sandbox's first exec (or at once for a
				 * process already running): count from there */
	__u64 killed;		/* a kill reason once one was sent */
	__u64 denied;		/* syscalls refused outside the policy */
	__u64 reports;		/* denials reported as events (at most ALCOVE_DENIALS_REPORTED) */
	__u64 allowed_syscalls[ALCOVE_SYSCALL_BITS / 64];	/* with ALCOVE_SYSCALL_POLICY */
	__u64 armed_ns;		/* when it was armed (CLOCK_MONOTONIC; with a CPU budget) */
};

/* Per-CPU counters of one sandbox, summed in user space. */
struct alcove_stats {
	__u64 syscalls;
	__u64 ctx_switches;
	__u64 page_faults;
	__u64 bytes_read;
	__u64 bytes_written;
	__u64 execs;
};

struct alcove_syscall_key {
	__u64 cgroup_id;
	__u32 nr;
	__u32 pad;
};

struct alcove_event {
	__u64 cgroup_id;
	__u64 ts_ns;
	__u32 kind;
	__u32 pid;
	__u32 ppid;
	__s32 value;		/* exit status, kill reason, denial kind */
	__u64 detail;		/* budget reached, device (major << 32 | minor), address */
	char comm[ALCOVE_COMM_LEN];
	char filename[ALCOVE_FILENAME_LEN];
	char args[ALCOVE_ARGS_LEN];
};

/* A device a sandbox may use; minor ALCOVE_ANY_MINOR matches every minor. */
#define ALCOVE_ANY_MINOR 0xffffffffu
struct alcove_dev_key {
	__u64 cgroup_id;
	__u32 major;
	__u32 minor;
};

/* LPM-trie keys for allowed network destinations: the cgroup id is part of
 * the matched prefix (prefixlen = 64 + address bits). */
struct alcove_net4_key {
	__u32 prefixlen;
	__u64 cgroup_id;
	__u8 addr[4];
} __attribute__((packed));

struct alcove_net6_key {
	__u32 prefixlen;
	__u64 cgroup_id;
	__u8 addr[16];
} __attribute__((packed));

#endif
