//! `alcove sandbox ...`: agent sandboxes on a daemon, from the shell.

use crate::functions::{connect, ConnArgs};
use alcove_api::Client;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

mod terminal;
use std::io::{IsTerminal, Read, Write};

#[derive(Args, Debug)]
pub struct SandboxArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Subcommand, Debug)]
enum SandboxCommand {
    /// Create a sandbox and print its id.
    Create(CreateArgs),
    /// List sandboxes (all, or those whose metadata matches every --meta).
    Ls {
        /// Only sandboxes with this metadata (KEY=VALUE, repeatable).
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Only running, paused or stopped ones.
        #[arg(long)]
        state: Option<String>,
    },
    /// Show one sandbox.
    Show {
        id: String,
    },
    /// Run a command in a sandbox, streaming its output; exits with its code.
    Exec(ExecArgs),
    /// Reattach to a background command's output (what it printed so far, then live).
    Attach {
        id: String,
        pid: i32,
        /// Its terminal (it was started with -t): type into it, and keep
        /// its size this terminal's.
        #[arg(long, short = 't')]
        tty: bool,
    },
    /// Send a signal to a command (KILL by default).
    Kill {
        id: String,
        pid: i32,
        #[arg(long, default_value = "KILL")]
        signal: String,
    },
    /// Copy a file into or out of a sandbox: `cp LOCAL ID:PATH` or `cp ID:PATH LOCAL`
    /// (`-` is stdin or stdout). Streamed both ways.
    Cp {
        from: String,
        to: String,
    },
    /// List a directory in a sandbox.
    Files {
        id: String,
        #[arg(default_value = ".")]
        path: String,
    },
    /// Run Python in the sandbox's code interpreter (its variables persist
    /// between calls). CODE `-` reads it from stdin.
    Code {
        id: String,
        code: String,
        /// Seconds the call may take.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// A new sandbox with the same settings and a copy of this one's home
    /// (the source is frozen while it is copied); prints the new id.
    Fork {
        id: String,
        #[arg(long = "meta", value_name = "KEY=VALUE")]
        meta: Vec<String>,
        /// Copy the code interpreter's memory too (its variables and
        /// imports): the fork then lives in its parent's process tree and
        /// ends with it (net: none sandboxes only).
        #[arg(long)]
        memory: bool,
    },
    /// Save the sandbox's home as a template new sandboxes start from
    /// (`create --template NAME`).
    Snapshot {
        id: String,
        name: String,
    },
    /// List templates, or remove one with --rm.
    Templates {
        #[arg(long)]
        rm: Option<String>,
    },
    /// Freeze a sandbox (memory and files kept; the next call resumes it).
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// Start a stopped sandbox again (files, metadata, limits and expiry
    /// kept; processes and the code interpreter start afresh). Any call
    /// that needs it does this by itself.
    Start {
        id: String,
    },
    /// Set the sandbox's timeout to this long from now (such as 30m, 2h).
    Timeout {
        id: String,
        duration: String,
    },
    /// Remove sandboxes: everything in them is killed and nothing is left.
    Rm {
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// An imported image (default: the host's read-only view).
    #[arg(long)]
    image: Option<String>,
    /// Start with a template's files (and its image, unless --image).
    #[arg(long)]
    template: Option<String>,
    /// Reclaimed this long after creation unless extended (such as 5m, 2h).
    #[arg(long, default_value = "5m")]
    timeout: String,
    /// Pause after this long without a call (such as 60s); auto-resumed on the next.
    #[arg(long)]
    idle_pause: Option<String>,
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(long = "meta", value_name = "KEY=VALUE")]
    meta: Vec<String>,
    #[arg(long)]
    memory: Option<String>,
    #[arg(long)]
    cpus: Option<f64>,
    #[arg(long)]
    pids: Option<u64>,
    /// Size of its writable files (home, /tmp, its root's upper layer).
    #[arg(long)]
    disk: Option<String>,
    /// none (loopback only), outbound (a link of its own out, see
    /// --allow-out) or host.
    #[arg(long)]
    net: Option<String>,
    /// With --net outbound: where it may connect (a CIDR range, an address,
    /// a host name or *.domain; repeat it). None: anywhere but the host and
    /// other sandboxes.
    #[arg(long = "allow-out", value_name = "RULE")]
    allow_out: Vec<String>,
    /// Let its code interpreter fork itself into new sandboxes (`fork
    /// --memory`): the interpreter may then make the namespaces a copy
    /// needs. net none only.
    #[arg(long)]
    forkable: bool,
    /// container (the default) or gvisor: run it on gVisor's user-space
    /// kernel (runsc), a second wall between its code and the host's kernel.
    #[arg(long)]
    isolation: Option<String>,
}

#[derive(Args, Debug)]
struct ExecArgs {
    id: String,
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(long)]
    cwd: Option<String>,
    /// Seconds it may run (foreground: 60 by default, 24 h with -t).
    #[arg(long)]
    timeout: Option<u64>,
    /// Start it and print its pid; `alcove sandbox attach` follows it later.
    #[arg(long, short = 'd')]
    background: bool,
    /// Send this process's stdin to it (with -t: as it is typed).
    #[arg(long, short = 'i')]
    stdin: bool,
    /// Run it on a terminal (a pty in the sandbox, this terminal's size or
    /// 80x24): keystrokes go to it raw while this terminal is in raw mode,
    /// and a resize here resizes it.
    #[arg(long, short = 't')]
    tty: bool,
    /// The command (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    cmd: Vec<String>,
}

fn pairs(items: &[String], what: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|i| {
            i.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("{what} {i:?}: give KEY=VALUE"))
        })
        .collect()
}

fn seconds(text: &str) -> anyhow::Result<u64> {
    let d = alcove_sandbox::units::parse_duration(text).map_err(anyhow::Error::msg)?;
    Ok(d.as_secs().max(1))
}

pub fn main(args: SandboxArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            return 125;
        }
    };
    match run(&client, args.json, args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            125
        }
    }
}

fn run(client: &Client, json_out: bool, command: SandboxCommand) -> anyhow::Result<i32> {
    let print = |v: &Value| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match command {
        SandboxCommand::Create(a) => {
            let mut body = json!({
                "timeout_s": seconds(&a.timeout)?,
                "env": pairs(&a.env, "--env")?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "metadata": pairs(&a.meta, "--meta")?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            });
            let fields = [
                ("image", a.image.map(Value::from)),
                ("template", a.template.map(Value::from)),
                (
                    "idle_pause_s",
                    a.idle_pause
                        .as_deref()
                        .map(seconds)
                        .transpose()?
                        .map(Value::from),
                ),
                ("memory", a.memory.map(Value::from)),
                ("cpus", a.cpus.map(Value::from)),
                ("pids", a.pids.map(Value::from)),
                ("disk", a.disk.map(Value::from)),
                ("net", a.net.map(Value::from)),
                ("isolation", a.isolation.map(Value::from)),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    body[k] = v;
                }
            }
            if !a.allow_out.is_empty() {
                body["allow_out"] = a.allow_out.into();
            }
            if a.forkable {
                body["forkable"] = true.into();
            }
            let info = client.create_sandbox(&body)?;
            if json_out {
                print(&info);
            } else {
                println!("{}", info["id"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
        SandboxCommand::Ls { meta, state } => {
            let list = client.list_sandboxes(&pairs(&meta, "--meta")?, state.as_deref())?;
            if json_out {
                print(&list);
                return Ok(0);
            }
            let now = alcove_engine_now();
            println!(
                "{:<22} {:<8} {:>8} {:>9} {:>10}  METADATA",
                "ID", "STATE", "AGE", "EXPIRES", "MEMORY"
            );
            for s in list["sandboxes"].as_array().into_iter().flatten() {
                let age = now - s["created_at"].as_f64().unwrap_or(now);
                let left = s["expires_at"].as_f64().unwrap_or(now) - now;
                let memory = s["usage"]["memory_bytes"]
                    .as_u64()
                    .map_or("-".into(), alcove_sandbox::units::format_size);
                let meta: Vec<String> = s["metadata"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect();
                println!(
                    "{:<22} {:<8} {:>7}s {:>8}s {:>10}  {}",
                    s["id"].as_str().unwrap_or(""),
                    s["state"].as_str().unwrap_or(""),
                    age as u64,
                    left.max(0.0) as u64,
                    memory,
                    meta.join(",")
                );
            }
            Ok(0)
        }
        SandboxCommand::Show { id } => {
            print(&client.sandbox_call("GET", &id, "", None)?);
            Ok(0)
        }
        SandboxCommand::Exec(a) => exec(client, a),
        SandboxCommand::Attach { id, pid, tty } => {
            let lines =
                client.sandbox_stream("GET", &id, &format!("/processes/{pid}/output"), None)?;
            if tty {
                let local = std::io::stdin().is_terminal();
                return terminal::interact(client, &id, pid, lines, local, local);
            }
            follow(lines, false)
        }
        SandboxCommand::Kill { id, pid, signal } => {
            client.sandbox_call(
                "POST",
                &id,
                &format!("/processes/{pid}/kill"),
                Some(&json!({ "signal": signal })),
            )?;
            Ok(0)
        }
        SandboxCommand::Cp { from, to } => copy(client, &from, &to),
        SandboxCommand::Files { id, path } => {
            let list = client.sandbox_file_call("GET", &id, "/files/list", &path)?;
            if json_out {
                print(&list);
                return Ok(0);
            }
            for e in list["entries"].as_array().into_iter().flatten() {
                println!(
                    "{:<7} {:>10} {:o} {}",
                    e["type"].as_str().unwrap_or(""),
                    e["size"].as_u64().unwrap_or(0),
                    e["mode"].as_u64().unwrap_or(0),
                    e["name"].as_str().unwrap_or("")
                );
            }
            if list["truncated"] == true {
                eprintln!("(more entries not shown)");
            }
            Ok(0)
        }
        SandboxCommand::Code { id, code, timeout } => {
            let code = if code == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text)?;
                text
            } else {
                code
            };
            let lines = client.sandbox_stream(
                "POST",
                &id,
                "/code",
                Some(&json!({ "code": code, "timeout_s": timeout })),
            )?;
            let mut ok = true;
            for line in lines {
                let line = line?;
                match line["type"].as_str().unwrap_or("") {
                    "stdout" => print!("{}", line["text"].as_str().unwrap_or("")),
                    "stderr" => eprint!("{}", line["text"].as_str().unwrap_or("")),
                    "result" => println!("{}", line["text"].as_str().unwrap_or("")),
                    "error" => {
                        ok = false;
                        for l in line["traceback"].as_array().into_iter().flatten() {
                            eprintln!("{}", l.as_str().unwrap_or(""));
                        }
                        if line["traceback"].as_array().is_none_or(|t| t.is_empty()) {
                            eprintln!(
                                "{}: {}",
                                line["name"].as_str().unwrap_or("Error"),
                                line["value"].as_str().unwrap_or("")
                            );
                        }
                    }
                    _ => {}
                }
                let _ = std::io::stdout().flush();
            }
            Ok(if ok { 0 } else { 1 })
        }
        SandboxCommand::Fork { id, meta, memory } => {
            let mut body = json!({});
            if memory {
                body["memory"] = json!(true);
            }
            if !meta.is_empty() {
                body["metadata"] = json!(pairs(&meta, "--meta")?
                    .into_iter()
                    .collect::<std::collections::BTreeMap<_, _>>());
            }
            let info = client.sandbox_call("POST", &id, "/fork", Some(&body))?;
            if json_out {
                print(&info);
            } else {
                println!("{}", info["id"].as_str().unwrap_or(""));
            }
            Ok(0)
        }
        SandboxCommand::Snapshot { id, name } => {
            let info =
                client.sandbox_call("POST", &id, "/snapshot", Some(&json!({ "name": name })))?;
            if json_out {
                print(&info);
            } else {
                println!(
                    "template {name}: {} files, {} bytes",
                    info["entries"], info["bytes"]
                );
            }
            Ok(0)
        }
        SandboxCommand::Templates { rm } => {
            if let Some(name) = rm {
                client.sandbox_templates("DELETE", Some(&name))?;
                println!("template {name} removed");
                return Ok(0);
            }
            let list = client.sandbox_templates("GET", None)?;
            if json_out {
                print(&list);
                return Ok(0);
            }
            println!(
                "{:<24} {:>8} {:>12}  {:<22} IMAGE",
                "NAME", "FILES", "BYTES", "FROM"
            );
            for t in list["templates"].as_array().into_iter().flatten() {
                println!(
                    "{:<24} {:>8} {:>12}  {:<22} {}",
                    t["name"].as_str().unwrap_or(""),
                    t["entries"],
                    t["bytes"],
                    t["source"].as_str().unwrap_or(""),
                    t["image"].as_str().unwrap_or("-")
                );
            }
            Ok(0)
        }
        SandboxCommand::Pause { id } => show_state(client, &id, "/pause", json_out),
        SandboxCommand::Resume { id } => show_state(client, &id, "/resume", json_out),
        SandboxCommand::Start { id } => show_state(client, &id, "/start", json_out),
        SandboxCommand::Timeout { id, duration } => {
            let info = client.sandbox_call(
                "POST",
                &id,
                "/timeout",
                Some(&json!({ "timeout_s": seconds(&duration)? })),
            )?;
            if json_out {
                print(&info);
            }
            Ok(0)
        }
        SandboxCommand::Rm { ids } => {
            let mut code = 0;
            for id in ids {
                match client.sandbox_call("DELETE", &id, "", None) {
                    Ok(_) => println!("{id} removed"),
                    Err(e) => {
                        eprintln!("alcove: error: {id}: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

fn alcove_engine_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn show_state(client: &Client, id: &str, action: &str, json_out: bool) -> anyhow::Result<i32> {
    let info = client.sandbox_call("POST", id, action, None)?;
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&info).unwrap_or_default()
        );
    } else {
        println!("{id} {}", info["state"].as_str().unwrap_or(""));
    }
    Ok(0)
}

fn exec(client: &Client, a: ExecArgs) -> anyhow::Result<i32> {
    let mut body = json!({
        "cmd": a.cmd,
        "env": pairs(&a.env, "--env")?.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
        "background": a.background,
    });
    if let Some(cwd) = a.cwd {
        body["cwd"] = cwd.into();
    }
    if let Some(t) = a.timeout {
        body["timeout_s"] = t.into();
    } else if a.tty && !a.background {
        // A session at a terminal is not cut at the 60 s a command gets.
        body["timeout_s"] = TTY_TIMEOUT_S.into();
    }
    // With -t, stdin is typed in as it comes (not read first).
    let local_tty = a.tty && std::io::stdin().is_terminal();
    if a.tty {
        let (cols, rows) = if local_tty {
            terminal::size()
        } else {
            terminal::DEFAULT_SIZE
        };
        body["pty"] = json!({ "cols": cols, "rows": rows });
    }
    if a.stdin && !a.tty {
        let mut input = String::new();
        std::io::stdin()
            .read_to_string(&mut input)
            .context("reading stdin (it is sent as text)")?;
        body["stdin"] = input.into();
    }
    let mut lines = client.sandbox_stream("POST", &a.id, "/exec", Some(&body))?;
    if a.background {
        let started = lines.next().transpose()?.unwrap_or_default();
        println!("{}", started["pid"]);
        return Ok(0);
    }
    if a.tty {
        let started = lines.next().transpose()?.unwrap_or_default();
        let Some(pid) = started["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) else {
            bail!("the daemon did not say which pid the command has");
        };
        // Keystrokes go in when there are any to send: from this terminal,
        // or from stdin with -i.
        return terminal::interact(client, &a.id, pid, lines, local_tty, local_tty || a.stdin);
    }
    follow(lines, false)
}

/// How long `exec -t` lets a foreground command run unless told (the API's most).
const TTY_TIMEOUT_S: u64 = 24 * 3600;

/// Prints a command's stream; returns its exit code (128+signal if killed).
/// `raw`: this terminal is in raw mode (a note ends with \r\n to be seen).
fn follow(lines: alcove_api::Lines, raw: bool) -> anyhow::Result<i32> {
    let note = |text: String| {
        if raw {
            eprint!("{text}\r\n");
        } else {
            eprintln!("{text}");
        }
    };
    for line in lines {
        let line = line?;
        match line["type"].as_str().unwrap_or("") {
            "stdout" => {
                print!("{}", line["text"].as_str().unwrap_or(""));
                let _ = std::io::stdout().flush();
            }
            "stderr" => eprint!("{}", line["text"].as_str().unwrap_or("")),
            "missed" => note(format!(
                "alcove: ({} chunks of output missed: the reader was slow)",
                line["chunks"]
            )),
            "exit" => {
                if line["timed_out"] == true {
                    note("alcove: the command ran past its timeout and was killed".into());
                }
                if line["sandbox_gone"] == true {
                    note("alcove: the sandbox ended before the command did".into());
                    return Ok(125);
                }
                return Ok(match line["code"].as_i64() {
                    Some(code) => code as i32,
                    None => 128 + signal_number(line["signal"].as_str().unwrap_or("")),
                });
            }
            _ => {}
        }
    }
    bail!("the stream ended without the command's exit (the daemon stopped?)")
}

fn signal_number(name: &str) -> i32 {
    match name {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "KILL" => 9,
        "SEGV" => 11,
        "PIPE" => 13,
        "TERM" => 15,
        other => other.parse().unwrap_or(0),
    }
}

/// `ID:PATH` names a file in a sandbox.
fn remote(spec: &str) -> Option<(&str, &str)> {
    let (id, path) = spec.split_once(':')?;
    (id.starts_with("sb-") && !path.is_empty()).then_some((id, path))
}

fn copy(client: &Client, from: &str, to: &str) -> anyhow::Result<i32> {
    match (remote(from), remote(to)) {
        (None, Some((id, path))) => {
            let mut input: Box<dyn Read> = if from == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(std::fs::File::open(from).with_context(|| format!("opening {from}"))?)
            };
            client.upload(id, path, &mut input)?;
            Ok(0)
        }
        (Some((id, path)), None) => {
            let mut reader = client.download(id, path)?;
            let written = if to == "-" {
                std::io::copy(&mut reader, &mut std::io::stdout().lock())
            } else {
                let mut file =
                    std::fs::File::create(to).with_context(|| format!("creating {to}"))?;
                std::io::copy(&mut reader, &mut file)
            };
            written.context("copying the file")?;
            Ok(0)
        }
        _ => bail!(
            "cp: give exactly one side as SANDBOX_ID:PATH (such as sb-1a2b3c:/home/user/out.txt)"
        ),
    }
}
