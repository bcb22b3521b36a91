//! Flag parsing (clap) and the subcommands.

use crate::sandbox_flags::{Net, SandboxFlags};
use alcove_sandbox::units::parse_duration;
use alcove_sandbox::{NetMode, Outcome, RunOptions, SandboxError, SandboxSpec, Status};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// alcove: run untrusted code in millisecond micro-containers.
#[derive(Parser, Debug)]
#[command(name = "alcove", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a program once in a fresh micro-container.
    Run(Box<RunArgs>),
    /// Remove cgroups left by `alcove run` processes that were killed mid-run,
    /// the pooled network namespaces and template mount namespaces, and agent
    /// sandboxes' homes that no record holds (in --data-dir).
    Gc {
        /// The daemon's data directory, whose sandboxes/ is checked.
        #[arg(long, default_value = "/var/lib/alcove")]
        data_dir: PathBuf,
    },
    /// Measure: compare commands interleaved, or break a sandbox start into phases.
    Bench(BenchArgs),
    /// Run the functions daemon: an HTTP API (loopback by default) that deploys
    /// functions and runs each invocation in its own sandbox.
    Serve(Box<ServeArgs>),
    /// The accelerator: devices, the calibrated cost model, and a CPU-vs-GPU
    /// benchmark (runs `alcove-accel`, which loads the GPU driver dynamically).
    #[command(disable_help_flag = true)]
    Accel {
        /// Arguments for alcove-accel: info [--json] | check-cpu [--json] | bench [--max N] [--dtype f32|f64|f16|bf16] [--json] | time --dtype T --sizes N,... .
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Import, list, inspect and remove images (OCI and docker archives).
    Image(crate::image::ImageArgs),
    /// Deploy, invoke and inspect functions on a daemon (`alcove serve`).
    #[command(name = "fn")]
    Fn(Box<crate::functions::FnArgs>),
    /// A live view of the daemon: its sandboxes and functions with CPU,
    /// memory, syscalls/s, age and status, refreshed every second (q quits).
    Top(Box<crate::functions::top::TopArgs>),
    /// Print the daemon's event stream (exec, exit, denied, budget_kill, oom,
    /// start, end), one JSON object per line, until interrupted.
    Events(Box<crate::functions::follow::EventsArgs>),
    /// Print a shell completion script: `alcove completions bash >
    /// /etc/bash_completion.d/alcove` (zsh: into a directory on $fpath as
    /// _alcove; fish: ~/.config/fish/completions/alcove.fish).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Long-lived sandboxes for AI agents on a daemon: create, exec, files,
    /// code, pause/resume.
    Sandbox(Box<crate::sandboxes::SandboxArgs>),
    /// The agent inside an agent sandbox (started by the daemon, not by hand).
    #[command(name = "sandbox-agent", hide = true)]
    SandboxAgent,
    /// The first process of a pooled gVisor sandbox (started by the daemon).
    #[command(name = "gvisor-wait", hide = true)]
    GvisorWait,
    /// Show what this kernel supports (BTF, ring buffers, BPF LSM, Landlock,
    /// cgroups...) and which mechanism alcove uses for each kind of rule.
    Doctor {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Address and port to listen on. Every request but /healthz and /readyz
    /// needs the token (see --token-file).
    #[arg(long, default_value = "127.0.0.1:8480")]
    listen: std::net::SocketAddr,
    /// Where functions, code, secrets and invocation records live.
    #[arg(long, default_value = "/var/lib/alcove")]
    data_dir: PathBuf,
    /// The token clients must send as 'Authorization: Bearer TOKEN' (visible in
    /// ps: prefer --token-file or $ALCOVE_TOKEN) [default: DATA_DIR/token,
    /// created at first start, readable by root only].
    #[arg(long)]
    token: Option<String>,
    /// Read the token from a file.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// The image store functions deployed with --image run from
    /// [default: $ALCOVE_IMAGES or /var/lib/alcove/images].
    #[arg(long, value_name = "DIR")]
    image_store: Option<PathBuf>,
    /// Sandboxes running at once over all functions [default: 4 per CPU].
    #[arg(long)]
    max_running: Option<usize>,
    /// Agent sandboxes held at once (`alcove sandbox create`); beyond it, 429.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_sandboxes: u64,
    /// Default agent sandboxes (no image, template or environment, default
    /// limits, --net none) kept started, so that a create asking for no
    /// more is handed one at once; filled after the first such create.
    /// Not counted in --max-sandboxes until claimed; 0: none.
    #[arg(long, default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u64).range(0..=64))]
    sandbox_pool: u64,
    /// The DNS server (ADDR or ADDR:PORT) that outbound agent sandboxes'
    /// allowed names are resolved with [default: the host's first nameserver].
    #[arg(long, value_name = "ADDR[:PORT]", value_parser = parse_dns_server)]
    sandbox_dns: Option<std::net::SocketAddr>,
    /// Leave the cgroup2 tree's mount options as they are. Without it the
    /// daemon adds `favordynmods` at start (keeping the others), so that
    /// moving a process into a cgroup (a warm copy, a fork with memory)
    /// takes ~0.3 ms instead of an RCU grace period (15-17 ms measured).
    #[arg(long)]
    no_favordynmods: bool,
    /// Invocations waiting for a slot before new ones get 429 [default: 1024].
    #[arg(long)]
    max_queued: Option<usize>,
    /// Bytes of request bodies waiting invocations, and of responses their
    /// clients have not yet taken, may hold in all before new ones get 429
    /// [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = alcove_sandbox::units::parse_size)]
    max_queued_bytes: Option<u64>,
    /// Longest timeout a function may be deployed with [default: 15m].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    max_timeout: Option<std::time::Duration>,
    /// Timeout of a function deployed without one [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    default_timeout: Option<std::time::Duration>,
    /// Largest memory limit a function may be deployed with [default: 8G, or the host's memory].
    #[arg(long, value_name = "SIZE", value_parser = alcove_sandbox::units::parse_size)]
    max_memory: Option<u64>,
    /// Memory limit of a function deployed without one [default: 256M].
    #[arg(long, value_name = "SIZE", value_parser = alcove_sandbox::units::parse_size)]
    default_memory: Option<u64>,
    /// Largest process limit a function may be deployed with [default: 4096].
    #[arg(long)]
    max_pids: Option<u64>,
    /// Process limit of a function deployed without one [default: 256].
    #[arg(long)]
    default_pids: Option<u64>,
    /// Largest response (stdout) a function may be deployed to keep [default: 64M].
    #[arg(long, value_name = "SIZE", value_parser = alcove_sandbox::units::parse_size)]
    max_output: Option<u64>,
    /// Most CPUs a function may be deployed with [default: this host's].
    #[arg(long)]
    max_cpus: Option<f64>,
    /// Client connections open at once; more get 503 [default: 1024].
    #[arg(long)]
    max_connections: Option<usize>,
    /// How long a client may take to send a request's headers (and a
    /// kept-alive connection may sit idle) [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    header_timeout: Option<std::time::Duration>,
    /// How long a client may take to send a request's body, or each next
    /// 64 KiB of a sandbox file upload (which may take as long as it keeps
    /// coming) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    body_timeout: Option<std::time::Duration>,
    /// Threads answering the API, 1 to 1024 [default: one fewer than the
    /// host's CPUs, at least 1: they only route, the work runs in sandboxes
    /// and blocking threads, and on a small host each one that wakes takes
    /// a core from them].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// On SIGTERM, how long running invocations may finish before they are
    /// killed [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    shutdown_grace: Option<std::time::Duration>,
    /// Let functions bind host paths under DIR (`fn deploy --bind`), read-only
    /// unless :rw; without it, function binds are refused. Repeatable.
    #[arg(long = "allow-bind", value_name = "DIR[:rw]", value_parser = alcove_engine::AllowedBind::parse)]
    allow_binds: Vec<alcove_engine::AllowedBind>,
    /// Memory warm functions' templates and their ready copies may hold in
    /// all; past it no more copies are made ahead (requests wait for one) and
    /// warm deploys are refused [default: 1G].
    #[arg(long, value_name = "SIZE", value_parser = alcove_sandbox::units::parse_size)]
    warm_memory: Option<u64>,
    /// The most copies kept ready per warm function [default: 8].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=256))]
    warm_ready: Option<u32>,
    /// Ready copies are dropped after this long without a request (the
    /// template stays) [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
    warm_idle: Option<std::time::Duration>,
    /// What every invocation is watched with: `counters` loads alcove's eBPF
    /// programs once at start and registers each sandbox (exec, exit and OOM
    /// events, exit-time counters; per-syscall programs only while a guard
    /// needs them); `off` loads them only for functions with a guard.
    #[arg(long, value_enum, default_value_t = MonitorFlag::Counters)]
    monitor: MonitorFlag,
    /// Keep functions, versions, secrets, records and the async queue in a
    /// PostgreSQL database shared by any number of daemons
    /// (`postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE`; prefer
    /// $ALCOVE_STORE, since flags show in ps) [default: SQLite in DATA_DIR].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// This daemon's name in records, `fn ps` and metrics [default:
    /// $ALCOVE_NODE or the host name].
    #[arg(long, value_name = "NAME")]
    node: Option<String>,
    /// With --store postgres: the key secrets are sealed with in the shared
    /// store, 64 hex digits (`openssl rand -hex 32`), the same on every
    /// daemon and never stored beside them [or $ALCOVE_SECRETS_KEY].
    #[arg(long, value_name = "FILE")]
    secrets_key_file: Option<PathBuf>,
    /// With --store postgres: CA certificates (PEM) the database's TLS
    /// certificate may chain to, besides the system's [or $ALCOVE_STORE_CA].
    /// TLS is used where the server offers it (`?sslmode=require` insists),
    /// and its certificate is always verified.
    #[arg(long, value_name = "FILE")]
    store_ca: Option<PathBuf>,
    /// With --store postgres: how long start-up waits for the database.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = alcove_sandbox::units::parse_duration)]
    store_wait: std::time::Duration,
    /// With --store postgres: how long a daemon holds a queued invocation or
    /// a concurrency slot without renewing it; a daemon that dies gives its
    /// jobs to the others this long after (1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = alcove_sandbox::units::parse_duration)]
    queue_lease: std::time::Duration,
    /// With --store postgres: the most queued invocations one claim takes
    /// (1: one per query).
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=alcove_engine::MAX_QUEUE_BATCH as i64))]
    queue_batch: u32,
    /// The daemon's log lines (one per invocation and per rule decision, at
    /// info; the level from $ALCOVE_LOG or $RUST_LOG, such as `debug` or
    /// `alcove_engine=info`): `text` for people, `json` for log collectors.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MonitorFlag {
    Off,
    Counters,
}

/// Which wall stands between the program and the host's kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Isolation {
    // alcove's micro-container: namespaces, seccomp, cgroups. (Plain
    // comments: clap would print variant docs as long help.)
    #[default]
    Container,
    // gVisor: the program talks to a user-space kernel (runsc), not the host's.
    Gvisor,
}

impl Isolation {
    /// Its name in the API and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Container => "container",
            Isolation::Gvisor => "gvisor",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(subcommand)]
    what: BenchWhat,
}

#[derive(Subcommand, Debug)]
enum BenchWhat {
    /// Time whole commands, interleaved round by round; print median, p10, p90
    /// and each median as a multiple of the baseline's.
    Compare {
        /// A command to time, as NAME=COMMAND ARGS... (split on spaces). Repeatable.
        #[arg(long = "cmd", value_name = "NAME=COMMAND", required = true)]
        commands: Vec<String>,
        #[arg(long, default_value_t = 300)]
        rounds: usize,
        #[arg(long, default_value_t = 20)]
        warmup: usize,
        /// The name of the command the others are compared with.
        #[arg(long, default_value = "alcove")]
        baseline: String,
    },
    /// What eBPF monitoring costs: per syscall inside a sandbox, on a real
    /// compile, and for processes outside any sandbox.
    Ebpf {
        #[arg(long, default_value_t = 10)]
        rounds: usize,
        /// alcove-probe, which the sandboxes run.
        #[arg(long, default_value = "/usr/local/bin/alcove-probe")]
        probe: PathBuf,
    },
    /// Run a sandbox many times in this process and print each start-up phase's median.
    Phases {
        #[arg(long, default_value_t = 300)]
        rounds: usize,
        #[command(flatten)]
        run: Box<RunArgs>,
    },
}

#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: the program's own, 128+N if it died of signal N, \
125 if alcove itself failed, 126 if the program cannot be executed, 127 if it was not found."
)]
struct RunArgs {
    /// Use DIR as / (read-only, under a private writable tmpfs layer). Without it
    /// the sandbox sees the host's /usr (and /bin, /lib...) read-only.
    #[arg(long, value_name = "DIR", conflicts_with = "image")]
    rootfs: Option<PathBuf>,
    /// Run an imported image (`alcove image import`): its layers as /, under a
    /// private writable layer; its Entrypoint and Cmd unless a command is
    /// given; its Env, WorkingDir and User unless given here.
    #[arg(long, value_name = "NAME")]
    image: Option<String>,
    /// The image store [default: $ALCOVE_IMAGES or /var/lib/alcove/images].
    #[arg(long, value_name = "DIR", requires = "image")]
    image_store: Option<PathBuf>,
    #[command(flatten)]
    sandbox: SandboxFlags,
    /// Hostname inside the sandbox.
    #[arg(long, value_name = "NAME", default_value = "alcove")]
    hostname: String,
    /// Maximum open files per process.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    open_files: u64,
    /// Isolation tier: container, or gvisor (runsc: a user-space kernel, slower to start)
    #[arg(long, value_enum, default_value_t = Isolation::Container)]
    isolation: Isolation,
    /// Write a JSON report of how the run ended and what it used to FILE.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Add per-phase start-up timings to the report.
    #[arg(long)]
    phases: bool,
    /// Count syscalls by name, context switches, page faults and bytes read and
    /// written in the kernel (eBPF), and add them with the event list to the report.
    #[arg(long)]
    trace: bool,
    /// Print sandbox events (exec, exit, denials, budget kills, OOM) as they happen.
    #[arg(long)]
    trace_live: bool,
    /// Kill the sandbox, from inside the kernel, past this many syscalls.
    #[arg(long, value_name = "N")]
    max_syscalls: Option<u64>,
    /// Kill the sandbox, from inside the kernel, past this much CPU time (even a
    /// spinner that makes no syscalls; sampled every millisecond).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    cpu_budget: Option<Duration>,
    /// The same as --timeout, kept for older scripts: the sandbox is killed,
    /// sleeping or running, once this much wall time has passed (the shorter
    /// of the two wins).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    wall_budget: Option<Duration>,
    /// The character devices the sandbox may open, refused with EPERM otherwise
    /// (cgroup device program): names (null, zero, full, random, urandom, tty,
    /// ptmx, pts) or MAJOR:MINOR, comma-separated.
    #[arg(long, value_name = "LIST", value_parser = parse_devices)]
    devices: Option<DeviceList>,
    /// Let the sandbox open this host character device, at the same path
    /// (such as /dev/nvidia0); added to --devices when that is given. Repeatable.
    #[arg(long = "expose-device", value_name = "/dev/NODE")]
    expose_devices: Vec<PathBuf>,
    /// Allow the program this path (inside the sandbox), read-only unless :rw,
    /// and refuse every other path outside a base set (Landlock). Repeatable.
    #[arg(long = "allow-path", value_name = "PATH[:ro|rw]", value_parser = parse_path_rule)]
    allow_paths: Vec<alcove_sandbox::PathRule>,
    /// Refuse network connects, sends and binds except to loopback, with EPERM
    /// (cgroup sock_addr programs; mostly useful with --net host).
    #[arg(long)]
    deny_net: bool,
    /// Also allow this address or CIDR range under --deny-net. Repeatable.
    #[arg(long = "allow-net", value_name = "CIDR", value_parser = parse_net)]
    allow_net: Vec<alcove_bpf::IpNet>,
    /// Record the syscalls, files and network peers the program uses into a
    /// profile (JSON) for --policy.
    #[arg(long, value_name = "PROFILE.json", conflicts_with = "policy")]
    learn: Option<PathBuf>,
    /// Allow exactly what a --learn profile recorded (seccomp allow-list,
    /// Landlock path rules, network allow-list); refuse and report the rest.
    #[arg(long, value_name = "PROFILE.json")]
    policy: Option<PathBuf>,
    /// Run a minimal init as PID 1 that forwards signals and reaps orphans, with
    /// the program as its child (ordinary signal behaviour; costs a fork).
    #[arg(long)]
    init: bool,
    /// The program and its arguments (after --).
    #[arg(
        last = true,
        required_unless_present = "image",
        value_name = "PROGRAM [ARGS]..."
    )]
    argv: Vec<OsString>,
}

/// The devices a sandbox may open, as given to --devices.
#[derive(Debug, Clone)]
struct DeviceList(Vec<alcove_bpf::DeviceId>);

fn parse_devices(text: &str) -> Result<DeviceList, String> {
    alcove_monitor::devices::parse_list(text).map(DeviceList)
}

fn parse_path_rule(text: &str) -> Result<alcove_sandbox::PathRule, String> {
    alcove_sandbox::PathRule::parse(text).map_err(|e| e.to_string())
}

fn parse_net(text: &str) -> Result<alcove_bpf::IpNet, String> {
    alcove_bpf::IpNet::parse(text)
}

/// What to type instead, for the mistakes people make most: `alcove run ls`
/// (the program goes after `--`).
fn parse_hint(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") {
        return None;
    }
    let Some(ContextValue::String(word)) = e.get(ContextKind::InvalidArg) else {
        return None;
    };
    if word.starts_with('-') {
        return None;
    }
    let at = args.iter().position(|a| a == word)?;
    let (options, program) = args[1..].split_at(at - 1);
    let mut line = vec!["alcove".to_owned(), "run".to_owned()];
    line.extend(options.iter().cloned());
    line.push("--".into());
    line.extend(program.iter().cloned());
    let quoted: Vec<String> = line
        .iter()
        .map(|a| shlex::try_quote(a).map_or_else(|_| a.clone(), |q| q.into_owned()))
        .collect();
    Some(format!(
        "hint: alcove run takes the program after `--`, so its own flags are never read as alcove's:\n  {}",
        quoted.join(" ")
    ))
}

/// The first process of a pooled gVisor sandbox: it serves the one request
/// the daemon sends it (alcove_gvisor::waiter).
fn gvisor_wait() -> ! {
    std::process::exit(alcove_gvisor::waiter::serve())
}

/// Runs the command line and returns the process exit code.
pub fn main() -> i32 {
    // Every agent sandbox starts this; building the whole command line's
    // parser first would be most of its start (~0.75 ms measured).
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next()) {
        (Some(a), None) if a == "sandbox-agent" => return alcove_agent::serve_inherited(),
        (Some(a), None) if a == "gvisor-wait" => gvisor_wait(),
        _ => {}
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            if let Some(hint) = parse_hint(&e) {
                eprintln!("{hint}");
            }
            return if e.use_stderr() { 125 } else { 0 };
        }
    };
    match cli.command {
        Command::Run(args) => run(*args),
        Command::Bench(args) => bench(args),
        Command::Doctor { json } => crate::doctor::run(json),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "alcove", &mut script);
            match std::io::stdout().write_all(&script) {
                Ok(()) => 0,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
                Err(e) => {
                    eprintln!("alcove: error: writing the completion script: {e}");
                    125
                }
            }
        }
        Command::Fn(args) => crate::functions::main(*args),
        Command::Sandbox(args) => crate::sandboxes::main(*args),
        Command::SandboxAgent => alcove_agent::serve_inherited(),
        Command::GvisorWait => gvisor_wait(),
        Command::Top(args) => crate::functions::top::main(*args),
        Command::Events(args) => crate::functions::follow::events_main(*args),
        Command::Image(args) => crate::image::main(args),
        Command::Accel { args } => accel(&args),
        Command::Serve(args) => {
            if let Err(e) = crate::scope::ensure_own_cgroup() {
                return fail(&e);
            }
            let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            let options = crate::serve::ServeOptions {
                listen: args.listen,
                data_dir: args.data_dir,
                token: args.token,
                token_file: args.token_file,
                image_store: args.image_store,
                max_running: args.max_running,
                max_sandboxes: args.max_sandboxes as usize,
                sandbox_pool: args.sandbox_pool as usize,
                sandbox_dns: args.sandbox_dns,
                favordynmods: !args.no_favordynmods,
                max_queued: args.max_queued,
                max_queued_bytes: args.max_queued_bytes,
                max_timeout_ms: args.max_timeout.map(ms),
                default_timeout_ms: args.default_timeout.map(ms),
                max_memory: args.max_memory,
                default_memory: args.default_memory,
                max_pids: args.max_pids,
                default_pids: args.default_pids,
                max_output: args.max_output,
                max_cpus: args.max_cpus,
                max_connections: args.max_connections,
                header_timeout: args.header_timeout,
                body_timeout: args.body_timeout,
                shutdown_grace: args.shutdown_grace,
                workers: args.workers,
                allow_binds: args.allow_binds,
                warm_memory: args.warm_memory,
                warm_ready: args.warm_ready,
                warm_idle: args.warm_idle,
                monitor: match args.monitor {
                    MonitorFlag::Off => alcove_engine::MonitorMode::Off,
                    MonitorFlag::Counters => alcove_engine::MonitorMode::Counters,
                },
                log_format: args.log_format,
                store: args.store,
                node: args.node,
                secrets_key_file: args.secrets_key_file,
                store_ca: args.store_ca,
                store_wait: args.store_wait,
                queue_lease: args.queue_lease,
                queue_batch: args.queue_batch as usize,
            };
            match crate::serve::run(options) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("alcove: error: {e:#}");
                    125
                }
            }
        }
        Command::Gc { data_dir } => match alcove_sandbox::gc() {
            Ok(r) => {
                // Ten minutes spare a create in flight on a running daemon
                // (its record is written once its home is filled).
                let homes =
                    alcove_engine::sandboxes::gc_sandbox_homes(&data_dir, Duration::from_secs(600));
                let gvisor = alcove_gvisor::gc();
                println!(
                    "removed {} cgroup(s) of dead runs, {} pooled piece(s) (cgroups and network namespaces), {} template namespace(s), {} empty parent cgroup(s), {} orphaned sandbox home(s), {} gVisor run directories",
                    r.orphan_cgroups, r.pool_pieces, r.templates, r.parents, homes, gvisor
                );
                0
            }
            Err(e) => fail(&e),
        },
    }
}

/// Execs `alcove-accel` from beside this binary (or from PATH).
fn accel(args: &[OsString]) -> i32 {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("alcove-accel")));
    let program = beside
        .filter(|p| p.exists())
        .unwrap_or_else(|| "alcove-accel".into());
    let err = std::process::Command::new(&program).args(args).exec();
    eprintln!(
        "alcove: error: cannot run {}: {err} (scripts/setup.sh installs alcove-accel next to alcove)",
        program.display()
    );
    125
}

fn bench(args: BenchArgs) -> i32 {
    let result = match args.what {
        BenchWhat::Compare {
            commands,
            rounds,
            warmup,
            baseline,
        } => (|| {
            let subjects = commands
                .iter()
                .map(|c| crate::bench::Subject::parse(c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut samples = crate::bench::interleaved(&subjects, rounds.max(1), warmup)?;
            crate::bench::report(&subjects, &mut samples, &baseline);
            Ok::<(), String>(())
        })(),
        BenchWhat::Ebpf { rounds, probe } => crate::bench::ebpf_overhead(&probe, rounds.max(1)),
        BenchWhat::Phases { rounds, run } => match spec_from(*run) {
            Ok((mut spec, _lease)) => {
                spec.record_phases = true;
                crate::bench::phases(&spec, rounds.max(1))
            }
            Err(e) => Err(format!("{e:#}")),
        },
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("alcove: error: {e}");
            125
        }
    }
}

/// The spec `args` describe, and with --image the lease that keeps its
/// layers from being pruned while the sandbox runs.
fn spec_from(args: RunArgs) -> anyhow::Result<(SandboxSpec, Option<alcove_image::Lease>)> {
    let mut spec = SandboxSpec::new(args.argv);
    let flags = args.sandbox;
    spec.rootfs = args.rootfs;
    spec.binds = flags.binds;
    spec.workdir = flags.workdir.clone().unwrap_or_else(|| "/".into());
    spec.env = flags
        .env
        .into_iter()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    spec.hostname = args.hostname;
    spec.user = flags.user.unwrap_or_default();
    spec.device_nodes = args.expose_devices.clone();
    spec.net = match flags.net {
        Some(Net::Host) => NetMode::Host,
        Some(Net::None) | None => NetMode::None,
    };
    spec.record_phases = args.phases;
    spec.init = args.init;
    spec.allow_paths = args.allow_paths;
    spec.limits.memory_bytes = flags.memory;
    spec.limits.cpus = flags.cpus;
    spec.limits.pids = flags.pids;
    // One wall-clock limit: the supervisor's, which catches sleepers too.
    spec.limits.timeout = match (flags.timeout, args.wall_budget) {
        (Some(t), Some(w)) => Some(t.min(w)),
        (t, w) => t.or(w),
    };
    spec.limits.cpu_time = flags.cpu_time;
    spec.limits.output_bytes = flags.output_limit;
    if let Some(bytes) = flags.tmpfs_size {
        spec.limits.tmpfs_bytes = bytes;
    }
    spec.limits.open_files = args.open_files;
    let mut lease = None;
    if let Some(name) = &args.image {
        let (store, record, held) = crate::image::for_run(args.image_store.as_deref(), name)?;
        alcove_engine::apply_image(
            &mut spec,
            &store,
            &record,
            flags.user.is_some(),
            flags.workdir.is_some(),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
        lease = Some(held);
    }
    Ok((spec, lease))
}

/// The eBPF side of a run: what to count and which budgets to enforce.
struct Monitoring {
    trace: bool,
    trace_live: bool,
    max_syscalls: Option<u64>,
    cpu_budget: Option<Duration>,
    devices: Option<Vec<alcove_bpf::DeviceId>>,
    net_allow: Option<Vec<alcove_bpf::IpNet>>,
    learn: Option<PathBuf>,
    policy: Option<PathBuf>,
}

fn run(args: RunArgs) -> i32 {
    if let Err(e) = crate::scope::ensure_own_cgroup() {
        return fail(&e);
    }
    let report_path = args.report.clone();
    let isolation = args.isolation;
    if isolation == Isolation::Gvisor {
        if let Some(flag) = gvisor_refuses(&args) {
            eprintln!(
                "alcove: error: {flag} watches the host kernel's view of the sandbox, which in \
                 the gVisor tier is the Sentry, not the program: leave it out or use --isolation container"
            );
            return 125;
        }
    }
    let monitoring = Monitoring {
        trace: args.trace,
        trace_live: args.trace_live,
        max_syscalls: args.max_syscalls,
        cpu_budget: args.cpu_budget,
        devices: args.devices.clone().map(|d| {
            let mut allowed = d.0;
            allowed.extend(args.expose_devices.iter().filter_map(|node| {
                use std::os::unix::fs::MetadataExt;
                let rdev = std::fs::metadata(node).ok()?.rdev();
                Some(alcove_bpf::DeviceId {
                    major: libc::major(rdev),
                    minor: Some(libc::minor(rdev)),
                })
            }));
            allowed
        }),
        net_allow: (args.deny_net || !args.allow_net.is_empty()).then(|| args.allow_net.clone()),
        learn: args.learn.clone(),
        policy: args.policy.clone(),
    };
    let (spec, _lease) = match spec_from(args) {
        Ok(done) => done,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            return 125;
        }
    };
    if isolation == Isolation::Gvisor {
        return run_gvisor(&spec, report_path.as_deref(), monitoring.trace);
    }
    // Open the report first, so a bad path fails before anything runs.
    let mut report = match &report_path {
        Some(path) => match std::fs::File::create(path) {
            Ok(file) => Some(file),
            Err(e) => {
                eprintln!(
                    "alcove: error: cannot write the report to {}: {e}",
                    path.display()
                );
                return 125;
            }
        },
        None => None,
    };
    let options = RunOptions {
        forward_signals: true,
        collect_usage: report.is_some(),
        ..RunOptions::default()
    };
    let mut policy = alcove_bpf::SandboxPolicy {
        trace: monitoring.trace,
        syscall_budget: monitoring.max_syscalls,
        cpu_budget: monitoring.cpu_budget,
        syscall_policy: None,
        devices: monitoring.devices,
        net_allow: monitoring.net_allow,
        net_deny: Vec::new(),
        learn: monitoring.learn.is_some(),
    };
    let mut spec = spec;
    let profile = match &monitoring.policy {
        Some(path) => match alcove_monitor::Profile::load(path)
            .and_then(|p| p.apply(&mut spec, &mut policy).map(|()| p))
        {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("alcove: error: {e}");
                return 125;
            }
        },
        None => None,
    };
    // Learning and policies report syscalls by number: both trace.
    if monitoring.learn.is_some() || profile.is_some() {
        policy.trace = true;
    }
    let mut watch = None;
    if !policy.is_empty() || monitoring.trace_live {
        match crate::trace::watch(policy, monitoring.trace_live) {
            Ok(w) => watch = Some(w),
            Err(e) => {
                eprintln!("alcove: error: {}", alcove_sandbox::error_chain(&e));
                return 125;
            }
        }
    }
    if monitoring.trace && report_path.is_none() {
        warn_trace_without_report();
    }
    let result = match watch.as_mut() {
        Some(w) => alcove_sandbox::run_observed(&spec, &options, w),
        None => alcove_sandbox::run(&spec, &options),
    };
    let seen = watch.as_ref().and_then(|w| w.result().cloned());
    if let Some(file) = report.as_mut() {
        let json = match &result {
            Ok(outcome) => {
                let mut json = serde_json::to_value(outcome).expect("an outcome serialises");
                if let (Some(seen), Some(map)) = (seen.as_ref(), json.as_object_mut()) {
                    let traced = watch.as_ref().is_some_and(|w| w.policy().trace);
                    map.insert("trace".into(), crate::trace::report(seen, traced));
                    if let Some(p) = &profile {
                        let denials = &seen.denials;
                        map.insert(
                            "policy_refused".into(),
                            serde_json::json!({"syscalls": p.refused(&crate::trace::refused(seen)), "denials": denials}),
                        );
                    }
                }
                json
            }
            Err(e) => error_report(e),
        };
        let written = serde_json::to_writer_pretty(&mut *file, &json)
            .map_err(std::io::Error::from)
            .and_then(|()| writeln!(file));
        if let Err(e) = written {
            eprintln!("alcove: error: cannot write the report: {e}");
            return 125;
        }
    }
    if let (Some(path), Some(seen), Ok(_)) = (&monitoring.learn, seen.as_ref(), &result) {
        let program: Vec<String> = spec
            .argv
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let used: Vec<u32> = seen.syscall_counts.iter().map(|(nr, _)| *nr).collect();
        let learned = alcove_monitor::Profile::learned(&program, &used, &seen.events);
        let text = serde_json::to_string_pretty(&learned).expect("a profile serialises");
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!(
                "alcove: error: cannot write the profile to {}: {e}",
                path.display()
            );
            return 125;
        }
    }
    if let (Some(p), Some(seen)) = (&profile, seen.as_ref()) {
        let refused = p.refused(&crate::trace::refused(seen));
        if !refused.is_empty() {
            eprintln!(
                "alcove: the policy refused syscalls outside the profile: {}",
                refused.join(", ")
            );
        }
    }
    match result {
        Ok(outcome) => {
            if let Some(note) = limit_note(&outcome, &spec) {
                eprintln!("alcove: {note}");
            }
            outcome.shell_exit_code()
        }
        Err(e) => fail(&e),
    }
}

/// The first `alcove run` flag the gVisor tier cannot honour (eBPF sees
/// the Sentry's syscalls, not the program's; `--trace` counts the program's
/// from the Sentry's own log instead).
fn gvisor_refuses(args: &RunArgs) -> Option<&'static str> {
    [
        (args.trace_live, "--trace-live"),
        (args.max_syscalls.is_some(), "--max-syscalls"),
        (args.cpu_budget.is_some(), "--cpu-budget"),
        (args.devices.is_some(), "--devices"),
        (
            args.deny_net || !args.allow_net.is_empty(),
            "--deny-net/--allow-net",
        ),
        (args.learn.is_some(), "--learn"),
        (args.policy.is_some(), "--policy"),
        (args.phases, "--phases"),
    ]
    .into_iter()
    .find_map(|(used, flag)| used.then_some(flag))
}

/// `--trace` without `--report`: the counts would go nowhere (said once
/// the run is about to start, after any refusal).
fn warn_trace_without_report() {
    eprintln!(
        "alcove: warning: --trace counts into the report: add --report FILE to keep them \
         (--trace-live prints events as they happen)"
    );
}

fn run_gvisor(spec: &SandboxSpec, report_path: Option<&std::path::Path>, trace: bool) -> i32 {
    // As in the container tier: a bad report path fails before anything
    // runs, and the counts (which slow every call) are taken only for a
    // report to hold them.
    let mut report = match report_path.map(std::fs::File::create).transpose() {
        Ok(file) => file,
        Err(e) => {
            let path = report_path
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            eprintln!("alcove: error: cannot write the report to {path}: {e}");
            return 125;
        }
    };
    if trace && report.is_none() {
        warn_trace_without_report();
    }
    let options = alcove_gvisor::GvisorOptions::default();
    let result = if trace && report.is_some() {
        alcove_gvisor::run_counting_syscalls(spec, &options).map(|(o, seen)| (o, Some(seen)))
    } else {
        alcove_gvisor::run(spec, &options).map(|o| (o, None))
    };
    let (outcome, syscalls) = match result {
        Ok(o) => o,
        Err(e) => {
            eprintln!("alcove: error: {}", alcove_sandbox::error_chain(&e));
            // The report, opened above, says so too (not left empty).
            if let Some(file) = report.as_mut() {
                let mut json = error_report(&e);
                json["isolation"] = "gvisor".into();
                let text = serde_json::to_string_pretty(&json).expect("a report serialises") + "\n";
                let _ = file.write_all(text.as_bytes());
            }
            return 125;
        }
    };
    if let Some(file) = report.as_mut() {
        let mut json = serde_json::to_value(&outcome).expect("an outcome serialises");
        if let Some(map) = json.as_object_mut() {
            map.insert("isolation".into(), "gvisor".into());
            if let Some(seen) = &syscalls {
                map.insert("trace".into(), crate::trace::gvisor_report(seen));
            }
        }
        let text = serde_json::to_string_pretty(&json).expect("a report serialises") + "\n";
        if let Err(e) = file.write_all(text.as_bytes()) {
            eprintln!("alcove: error: cannot write the report: {e}");
            return 125;
        }
    }
    if let Some(note) = limit_note(&outcome, spec) {
        eprintln!("alcove: {note}");
    }
    outcome.shell_exit_code()
}

/// One line on stderr when alcove (or the kernel, for memory) ended the program
/// for a limit, so the 137 a shell sees has a reason next to it.
fn limit_note(outcome: &Outcome, spec: &SandboxSpec) -> Option<String> {
    let l = &spec.limits;
    match outcome.status {
        Status::Timeout => Some(format!(
            "killed: wall-clock limit of {:?} reached",
            l.timeout?
        )),
        Status::CpuTime => Some(format!(
            "killed: CPU-time limit of {:?} reached",
            l.cpu_time?
        )),
        Status::KilledByPolicy => Some(format!(
            "killed by policy: {}",
            outcome.reason.as_deref().unwrap_or("a budget")
        )),
        Status::Oom => Some(match l.memory_bytes {
            Some(m) => format!("out of memory: the memory limit of {m} bytes was reached"),
            None => "out of memory".into(),
        }),
        _ => None,
    }
}

fn error_report(e: &dyn std::error::Error) -> serde_json::Value {
    serde_json::json!({
        "status": "error",
        "error": alcove_sandbox::error_chain(e),
        "exit_code": null,
        "signal": null,
        "wall_ms": 0.0,
        "cpu_user_ms": 0.0,
        "cpu_sys_ms": 0.0,
        "memory_peak_bytes": null,
        "pids_peak": null,
        "output_truncated": false,
    })
}

fn fail(e: &SandboxError) -> i32 {
    eprintln!("alcove: error: {}", alcove_sandbox::error_chain(e));
    e.exit_code()
}

/// `192.0.2.53`, `192.0.2.53:5353` or `[2001:db8::53]:53`.
fn parse_dns_server(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| (ip, 53).into()))
        .map_err(|_| format!("{text:?} is not an address, such as 192.0.2.53 or 192.0.2.53:5353"))
}
