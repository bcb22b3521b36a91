//! `alcove-oci`: runc's command line over alcove's container core, for
//! podman (`--runtime`), containerd's runc shim (`BinaryName`) and
//! Kubernetes (a RuntimeClass). See the README section "OCI runtime".

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alcove_oci::container::{self, ContainerError, CreateOptions};
use alcove_oci::exec::{self, ExecOptions};
use alcove_oci::state;
use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "alcove-oci",
    version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.0.2"),
    about = "alcove as an OCI runtime (runc's command line)"
)]
struct Cli {
    /// Where container state lives.
    #[arg(long, global = true, default_value = state::DEFAULT_ROOT)]
    root: PathBuf,
    /// Append errors to this file as well as stderr.
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// text or json (the shim reads the last "level":"error" JSON line).
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    /// cgroupsPath is "slice:prefix:name" (systemd's form).
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for runc compatibility; has no effect.
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for runc compatibility; has no effect.
    #[arg(long, global = true, hide = true)]
    criu: Option<String>,
    /// Accepted for runc compatibility; has no effect.
    #[arg(id = "global_rootless", long = "rootless", hide = true)]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct CreateArgs {
    /// The bundle directory (holds config.json).
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// A unix socket to send the terminal's master fd to.
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    /// MS_MOVE and chroot instead of pivot_root.
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    /// Accepted: alcove never makes a session keyring.
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    /// Pass this many file descriptors (3, 4, …) on to the container.
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    id: String,
}

#[derive(Subcommand)]
enum Command {
    /// Create a container (its process waits for `start`).
    Create(CreateArgs),
    /// Let a created container's process run.
    Start { id: String },
    /// Create and start a container; wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
    },
    /// Print a container's state as JSON.
    State { id: String },
    /// Send a signal (default SIGTERM) to the container's init, or all its processes.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Remove a container (a running one only with --force).
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// Run a new process in a running container.
    Exec(ExecArgs),
    /// List the container's processes.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Freeze every process of the container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Change a container's resources.
    Update(UpdateArgs),
    /// Print the container's resource statistics (--stats once) or follow them.
    Events {
        #[arg(long)]
        stats: bool,
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Print what this runtime supports (runtime-spec features.md).
    Features,
    /// Write a starting config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
}

#[derive(Args)]
struct ExecArgs {
    /// A JSON file with the process to run (the spec's process object).
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(short, long)]
    tty: bool,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short, long)]
    env: Vec<String>,
    /// UID[:GID]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: u32,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    /// Accepted for runc compatibility; has no effect.
    #[arg(long = "process-label", hide = true)]
    process_label: Option<String>,
    /// Accepted for runc compatibility; has no effect.
    #[arg(long, hide = true)]
    apparmor: Option<String>,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct UpdateArgs {
    /// A JSON file (or - for stdin) with the spec's linux.resources object.
    #[arg(short, long)]
    resources: Option<String>,
    #[arg(long)]
    memory: Option<i64>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<i64>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    id: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Command::Create(_) | Command::Run { .. } | Command::Exec(_)
    ) {
        if let Err(e) = protect_binary() {
            log_error(&cli, &format!("{e:#}"));
            return ExitCode::from(1);
        }
    }
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            log_error(&cli, &format!("{e:#}"));
            ExitCode::from(1)
        }
    }
}

/// Commands that enter a container run non-dumpable, from a binary nobody
/// in the container can write: a process there that reaches it (through
/// /proc/PID/exe, or by executing /proc/self/exe while the init still runs
/// us) must not be able to rewrite the host's runtime (CVE-2019-5736). The
/// runtime re-executes itself through a detached, read-only bind of its own
/// binary (open_tree and mount_setattr: no mount namespace, nothing
/// attached anywhere, ~1 ms); a process that follows /proc/PID/exe lands on
/// that read-only mount, which no process can remount, for it is in no
/// mount namespace. Where that is refused, a sealed memfd copy, as runc 1.1
/// does (~4 ms for 6 MB). A binary already on a read-only mount runs as it is.
fn protect_binary() -> anyhow::Result<()> {
    alcove_sys::process::set_dumpable(false).context("PR_SET_DUMPABLE")?;
    let exe = std::fs::read_link("/proc/self/exe").context("read /proc/self/exe")?;
    if exe.to_string_lossy().starts_with("/memfd:alcove-oci") {
        return Ok(());
    }
    let exe_c = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes())
        .context("the runtime's path holds a NUL byte")?;
    let running = std::fs::File::open("/proc/self/exe").context("open /proc/self/exe")?;
    if alcove_sys::fs::on_read_only_mount(running.as_fd()).unwrap_or(false) {
        return Ok(());
    }
    let (argv_c, env_c) = own_argv_and_env()?;
    let mut argv: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    if let Ok(tree) = read_only_clone(&exe_c) {
        let err = alcove_sys::process::execute_fd(tree.as_fd(), &argv, &envp);
        return Err(anyhow::Error::new(err).context("re-execute the runtime read-only"));
    }
    let copy = alcove_sys::process::sealed_copy_of_self(c"alcove-oci")
        .context("copy the runtime into a sealed memfd")?;
    let err = alcove_sys::process::execute_fd(copy.as_fd(), &argv, &envp);
    Err(anyhow::Error::new(err).context("execute the sealed copy of the runtime"))
}

/// A detached read-only bind of the file `exe`.
fn read_only_clone(exe: &std::ffi::CStr) -> std::io::Result<std::os::fd::OwnedFd> {
    let tree = alcove_sys::mount::clone_tree(exe)?;
    alcove_sys::mount::set_attributes(tree.as_fd(), alcove_sys::mount::MOUNT_ATTR_RDONLY)?;
    Ok(tree)
}

fn own_argv_and_env() -> anyhow::Result<(Vec<std::ffi::CString>, Vec<std::ffi::CString>)> {
    let to_c = |s: std::ffi::OsString| std::ffi::CString::new(s.into_encoded_bytes());
    let args = std::env::args_os()
        .map(to_c)
        .collect::<Result<_, _>>()
        .context("an argument holds a NUL byte")?;
    let env = std::env::vars_os()
        .map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            to_c(kv)
        })
        .collect::<Result<_, _>>()
        .context("the environment holds a NUL byte")?;
    Ok((args, env))
}

/// runc's error line: on stderr always, and in the --log file in its format.
fn log_error(cli: &Cli, text: &str) {
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let line = if cli.log_format == "json" {
        serde_json::json!({"level": "error", "msg": text, "time": time}).to_string()
    } else {
        format!("time={time:?} level=error msg={text:?}")
    };
    eprintln!("alcove-oci: {text}");
    if let Some(path) = &cli.log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

fn create_options(cli: &Cli, a: &CreateArgs) -> CreateOptions {
    CreateOptions {
        root: cli.root.clone(),
        id: a.id.clone(),
        bundle: a.bundle.clone(),
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        no_pivot: a.no_pivot,
        systemd_cgroup: cli.systemd_cgroup,
        preserve_fds: a.preserve_fds,
    }
}

fn run(cli: &Cli) -> anyhow::Result<u8> {
    let root = cli.root.as_path();
    match &cli.command {
        Command::Create(a) => {
            container::create(&create_options(cli, a))?;
        }
        Command::Start { id } => container::start(root, id)?,
        Command::Run { create, detach } => {
            let signals = if *detach {
                None
            } else {
                alcove_sys::process::set_child_subreaper().context("PR_SET_CHILD_SUBREAPER")?;
                Some(container::catch_forwarded()?)
            };
            let pid = container::create(&create_options(cli, create))?;
            container::start(root, &create.id)?;
            let Some(signals) = signals else {
                return Ok(0);
            };
            let status = container::wait_forwarding(pid, &signals)?;
            container::delete(root, &create.id, true)?;
            return Ok(alcove_sys::process::exit_code_of(status).clamp(0, 255) as u8);
        }
        Command::State { id } => {
            let (_dir, saved, status) = container::open(root, id, false)?;
            let doc = state::document(saved.as_ref(), id, status);
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Command::Kill { all, id, signal } => {
            let signal = container::parse_signal(signal.as_deref().unwrap_or("TERM"))?;
            container::kill(root, id, signal, *all)?;
        }
        Command::Delete { force, id } => container::delete(root, id, *force)?,
        Command::Exec(a) => return exec_command(cli, a),
        Command::Ps { format, id, .. } => {
            let pids = container::pids(root, id)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string(&pids)?),
                "table" => {
                    println!("PID");
                    for p in pids {
                        println!("{p}");
                    }
                }
                other => bail!("invalid --format {other:?}: use table or json"),
            }
        }
        Command::Pause { id } => container::pause(root, id, true)?,
        Command::Resume { id } => container::pause(root, id, false)?,
        Command::Update(a) => update_command(root, a)?,
        Command::Events {
            stats,
            interval,
            id,
        } => events_command(root, id, *stats, interval)?,
        Command::Features => {
            std::io::stdout().write_all(&alcove_oci::features::features_text()?)?;
        }
        Command::Spec { bundle, rootless } => {
            alcove_oci::features::write_spec(bundle, *rootless)?;
        }
        Command::List { format, quiet } => list_command(root, format, *quiet)?,
    }
    Ok(0)
}

fn exec_command(cli: &Cli, a: &ExecArgs) -> anyhow::Result<u8> {
    let root = cli.root.as_path();
    let process = match &a.process {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a valid process object", path.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("exec needs a command, or --process FILE");
            }
            let (_dir, saved, _status) = container::open(root, &a.id, false)?;
            let base = saved.as_ref().and_then(|s| s.spec.process().clone());
            let user = match &a.user {
                Some(u) => Some(parse_user(u)?),
                None => None,
            };
            let mut p = exec::process_from_args(
                base.as_ref(),
                a.command.clone(),
                &a.env,
                a.cwd.as_deref(),
                user,
                a.tty,
            );
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            p
        }
    };
    let code = exec::exec(&ExecOptions {
        root: root.to_path_buf(),
        id: a.id.clone(),
        process,
        detach: a.detach,
        pid_file: a.pid_file.clone(),
        console_socket: a.console_socket.clone(),
        preserve_fds: a.preserve_fds,
    })?;
    Ok(code.clamp(0, 255) as u8)
}

fn parse_user(text: &str) -> anyhow::Result<(u32, u32)> {
    let (u, g) = text.split_once(':').unwrap_or((text, "0"));
    Ok((
        u.parse()
            .with_context(|| format!("--user {text:?}: use UID[:GID]"))?,
        g.parse()
            .with_context(|| format!("--user {text:?}: use UID[:GID]"))?,
    ))
}

fn update_command(root: &Path, a: &UpdateArgs) -> anyhow::Result<()> {
    use oci_spec::runtime::{LinuxCpu, LinuxPids, LinuxResources};
    let mut resources: LinuxResources = match a.resources.as_deref() {
        Some("-") => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .take(1 << 20)
                .read_to_end(&mut bytes)
                .context("read stdin")?;
            serde_json::from_slice(&bytes)
                .context("the resources on stdin are not a valid linux.resources object")?
        }
        Some(path) => {
            serde_json::from_slice(&std::fs::read(path).with_context(|| format!("read {path}"))?)
                .with_context(|| format!("{path} is not a valid linux.resources object"))?
        }
        None => LinuxResources::default(),
    };
    if a.memory.is_some() || a.memory_swap.is_some() {
        let mut m = resources.memory().unwrap_or_default();
        if let Some(v) = a.memory {
            m.set_limit(Some(v));
        }
        if let Some(v) = a.memory_swap {
            m.set_swap(Some(v));
        }
        resources.set_memory(Some(m));
    }
    if let Some(v) = a.pids_limit {
        let mut p = LinuxPids::default();
        p.set_limit(v);
        resources.set_pids(Some(p));
    }
    if a.cpu_quota.is_some()
        || a.cpu_period.is_some()
        || a.cpu_share.is_some()
        || a.cpuset_cpus.is_some()
        || a.cpuset_mems.is_some()
    {
        let mut c: LinuxCpu = resources.cpu().clone().unwrap_or_default();
        if a.cpu_quota.is_some() {
            c.set_quota(a.cpu_quota);
        }
        if a.cpu_period.is_some() {
            c.set_period(a.cpu_period);
        }
        if a.cpu_share.is_some() {
            c.set_shares(a.cpu_share);
        }
        if a.cpuset_cpus.is_some() {
            c.set_cpus(a.cpuset_cpus.clone());
        }
        if a.cpuset_mems.is_some() {
            c.set_mems(a.cpuset_mems.clone());
        }
        resources.set_cpu(Some(c));
    }
    container::update(root, &a.id, &resources)?;
    Ok(())
}

fn events_command(root: &Path, id: &str, once: bool, interval: &str) -> anyhow::Result<()> {
    let every = parse_interval(interval)?;
    let mut ooms = container::oom_kills(root, id)?.unwrap_or(0);
    loop {
        match container::stats(root, id) {
            Ok(doc) => println!("{doc}"),
            Err(ContainerError::WrongStatus { .. }) if !once => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        if once {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + every;
        while std::time::Instant::now() < deadline {
            match container::oom_kills(root, id)? {
                Some(now) if now > ooms => {
                    ooms = now;
                    println!("{}", serde_json::json!({"type": "oom", "id": id}));
                }
                None => return Ok(()),
                _ => {}
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

fn parse_interval(text: &str) -> anyhow::Result<std::time::Duration> {
    let bad = || anyhow::anyhow!("invalid --interval {text:?}: use e.g. 5s or 500ms");
    let (num, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let n: u64 = num.parse().map_err(|_| bad())?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(bad()),
    };
    if d < std::time::Duration::from_millis(100) || d > std::time::Duration::from_secs(86400) {
        bail!("--interval {text:?} must be between 100ms and 24h");
    }
    Ok(d)
}

fn list_command(root: &Path, format: &str, quiet: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    if let Ok(entries) = std::fs::read_dir(root) {
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            if state::check_id(&id).is_err() {
                continue;
            }
            if let Ok((_d, saved, status)) = container::open(root, &id, false) {
                rows.push(state::document(saved.as_ref(), &id, status));
            }
        }
    }
    if quiet {
        for r in &rows {
            println!("{}", r["id"].as_str().unwrap_or_default());
        }
    } else if format == "json" {
        println!("{}", serde_json::to_string(&rows)?);
    } else {
        println!(
            "{:<24} {:<8} {:<10} {:<40} CREATED",
            "ID", "PID", "STATUS", "BUNDLE"
        );
        for r in &rows {
            println!(
                "{:<24} {:<8} {:<10} {:<40} {}",
                r["id"].as_str().unwrap_or_default(),
                r["pid"],
                r["status"].as_str().unwrap_or_default(),
                r["bundle"].as_str().unwrap_or_default(),
                r["created"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}
