//! `alcove fn ...`: deploy, invoke and inspect functions on a daemon.

mod code_dir;
mod configure;
mod deploy;
pub mod follow;
mod guard_flags;
mod manifest;
mod ps;
pub mod top;
mod view;

use alcove_api::Client;
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use deploy::{deploy_body, DeployArgs};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use view::{invocation_line, show_function};

/// Which daemon to talk to, and with which token.
#[derive(Args, Debug, Clone, Default)]
pub struct ConnArgs {
    /// The daemon's URL [default: $ALCOVE_SERVER or http://127.0.0.1:8480].
    #[arg(long, global = true, value_name = "URL")]
    server: Option<String>,
    /// The daemon's token [default: $ALCOVE_TOKEN, else the file
    /// --token-file names, else for a daemon on loopback /var/lib/alcove/token].
    #[arg(long, global = true, value_name = "TOKEN")]
    token: Option<String>,
    /// Read the token from this file [default: $ALCOVE_TOKEN_FILE].
    #[arg(long, global = true, value_name = "FILE")]
    token_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FnArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: FnCommand,
}

#[derive(Subcommand, Debug)]
enum FnCommand {
    /// Deploy a new version of a function (creating it if needed); `latest`
    /// moves to it. What is not given is inherited from `latest` (the output
    /// says what); a deploy that changes nothing makes no version.
    Deploy(DeployArgs),
    /// Change settings (environment, limits, handler...) as a new version
    /// with the same code.
    Config {
        name: String,
        #[command(flatten)]
        settings: deploy::SettingsArgs,
    },
    /// Set, remove or list a function's secrets (set and rm make a new version).
    #[command(subcommand)]
    Secret(configure::SecretCommand),
    /// Invoke a function: DATA goes to the handler's stdin, its stdout is printed.
    /// Exits 0 when the handler succeeded, 1 when it failed, 125 on other errors.
    #[command(disable_version_flag = true)]
    Invoke {
        name: String,
        /// The request body [default: stdin, unless it is a terminal].
        #[arg(long, short, conflicts_with = "data_file")]
        data: Option<String>,
        /// Read the request body from a file.
        #[arg(long, value_name = "FILE")]
        data_file: Option<PathBuf>,
        /// Run this version instead of `latest`.
        #[arg(long)]
        version: Option<u32>,
        /// Queue it and print the invocation's id; fetch the result with `fn result ID`.
        #[arg(long = "async")]
        is_async: bool,
        /// With --async: attempts after the first while it fails (0 to 10).
        #[arg(long, default_value_t = 0, requires = "is_async")]
        retries: u32,
    },
    /// List functions.
    Ls,
    /// Show a function and its versions.
    Show { name: String },
    /// Show a function's recent invocations and their logs (stderr), newest
    /// first; with --follow, oldest first and then each new invocation as it ends.
    Logs {
        name: String,
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: u32,
        /// Keep printing invocations as they end (from the event stream), until interrupted.
        #[arg(long, short = 'f', conflicts_with_all = ["status", "after"])]
        follow: bool,
        /// Only these: ok (exited 0), failed (ended any other way), or one
        /// status (timeout, oom, killed_by_policy...).
        #[arg(long, value_name = "STATUS")]
        status: Option<String>,
        /// The page after this invocation (the id printed last, or the
        /// `next_after` of --json).
        #[arg(long, value_name = "ID")]
        after: Option<String>,
    },
    /// Learn the function's policy from its real traffic: the next invocations
    /// are traced and what they use (syscalls, files, network peers) is added
    /// to its learned profile; `fn deploy NAME --policy learned` enforces it.
    /// Without --invocations or --for: the next 100 invocations.
    Learn {
        name: String,
        /// Learn from this many invocations.
        #[arg(long, value_name = "N")]
        invocations: Option<u32>,
        /// Learn for this long (such as 10m).
        #[arg(long = "for", value_name = "DURATION", value_parser = alcove_sandbox::units::parse_duration)]
        window: Option<Duration>,
        /// Forget what was learned before.
        #[arg(long)]
        reset: bool,
        /// Show the learned profile and whether learning goes on (changes nothing).
        #[arg(long, conflicts_with_all = ["invocations", "window", "reset", "stop"])]
        show: bool,
        /// Stop learning (what was learned stays).
        #[arg(long, conflicts_with_all = ["invocations", "window", "reset"])]
        stop: bool,
    },
    /// Remove a function with its versions, secrets and invocation records.
    /// Refused while invocations of it are in flight, unless --force.
    Rm {
        name: String,
        /// Cancel its invocations in flight first, wait for them to end, then remove it.
        #[arg(long)]
        force: bool,
    },
    /// List the invocations in flight (queued and running), oldest first,
    /// with their age and their sandboxes' usage so far.
    Ps {
        /// Only this function's.
        name: Option<String>,
    },
    /// Cancel an invocation in flight: a running one's sandbox is killed, a
    /// queued one never runs, an async one is not retried.
    Cancel { id: String },
    /// Point `latest` at another version.
    #[command(disable_version_flag = true)]
    Rollback { name: String, version: u32 },
    /// Show an invocation (the result of an --async invoke); --wait polls until it ends.
    /// Exits 0 when the handler succeeded, 1 when it failed (its stderr is
    /// printed), 2 while it has not finished, 125 on other errors.
    Result {
        id: String,
        #[arg(long)]
        wait: bool,
    },
}

/// `fn result`'s exit status for an invocation still queued or running.
const RESULT_NOT_FINISHED: i32 = 2;

/// Where a local daemon with the default data directory keeps its token.
const LOCAL_TOKEN_FILE: &str = "/var/lib/alcove/token";

/// The token to send: given, read from the file named, or — for a daemon on
/// this host's loopback only — the local daemon's. A token read from a file
/// goes only to a server that first proves it holds it: any local program
/// (a sandbox on the host's network among them) may listen on the daemon's
/// port while the daemon is down, and must not collect it.
fn client_token(args: &ConnArgs, server: &str) -> anyhow::Result<Option<String>> {
    let from_env = std::env::var("ALCOVE_TOKEN").ok().filter(|t| !t.is_empty());
    if let Some(t) = args.token.clone().or(from_env) {
        return Ok(Some(t));
    }
    let named = args
        .token_file
        .clone()
        .or_else(|| std::env::var_os("ALCOVE_TOKEN_FILE").map(PathBuf::from));
    let path = match named {
        Some(path) => path,
        None if is_loopback(server) => PathBuf::from(LOCAL_TOKEN_FILE),
        None => return Ok(None),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // No local daemon has made one: send none.
        Err(_) if path == Path::new(LOCAL_TOKEN_FILE) && !path.exists() => return Ok(None),
        Err(e) => {
            return Err(e).with_context(|| format!("reading the token file {}", path.display()))
        }
    };
    let token = text.trim().to_owned();
    match Client::new(server, None).proves_token(&token) {
        Ok(false) => bail!(
            "the server at {server} could not prove it holds the token in {}, so alcove did not \
             send it: is another program listening on the daemon's port? (check with `ss -ltnp`)",
            path.display()
        ),
        Ok(true) | Err(_) => Ok(Some(token)), // unreachable: the command says so
    }
}

fn is_loopback(server: &str) -> bool {
    ["http://127.0.0.1", "http://localhost", "http://[::1]"]
        .iter()
        .any(|host| server == *host || server.starts_with(&format!("{host}:")))
}

/// The daemon's URL from what was given: `HOST:PORT` means `http://HOST:PORT`.
fn server_url(given: &str) -> anyhow::Result<String> {
    let given = given.trim().trim_end_matches('/');
    let url = match given.split_once("://") {
        Some(("http" | "https", rest)) if !rest.is_empty() => given.to_owned(),
        Some((scheme, _)) => bail!(
            "--server {given:?}: alcove speaks http (or https), not {scheme:?}; give it as http://HOST:PORT"
        ),
        None if !given.is_empty() => format!("http://{given}"),
        None => bail!("--server is empty: give the daemon's address, such as http://127.0.0.1:8480"),
    };
    let authority = url.split_once("://").map_or("", |(_, r)| r);
    if authority.contains(['/', '?', '#', ' ']) {
        bail!("--server {given:?}: give only the daemon's address, such as http://127.0.0.1:8480, without a path");
    }
    Ok(url)
}

/// A daemon on this host may be starting (`alcove serve &` on the line
/// before): give it a moment to listen, so the command and the token it
/// reads do not race its start. It looks for a listening socket in
/// /proc/net rather than connecting: a probe connection would be a request
/// of its own to whatever listens there. No listener after the wait: the
/// request goes on and says the daemon is unreachable.
fn wait_for_local_daemon(server: &str) {
    const WAIT: Duration = Duration::from_secs(2);
    if !is_loopback(server) {
        return;
    }
    let authority = server.split_once("://").map_or(server, |(_, rest)| rest);
    let port = match authority.rsplit_once(':').map(|(_, p)| p.parse::<u16>()) {
        Some(Ok(port)) => port,
        Some(Err(_)) => return,
        None => 80,
    };
    let start = std::time::Instant::now();
    while !listening(port) && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether some socket of this network namespace listens on TCP `port`
/// (or /proc/net cannot tell, which ends the wait too).
fn listening(port: u16) -> bool {
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        let found = text.lines().skip(1).any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local_port = fields
                .get(1)
                .and_then(|a| a.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            local_port == Some(port) && fields.get(3) == Some(&"0A")
        });
        if found {
            return true;
        }
    }
    !readable
}

/// A client for the daemon `conn` names, with its token.
pub fn connect(conn: &ConnArgs) -> anyhow::Result<Client> {
    connect_waiting(conn, true)
}

/// The same, and with `wait`, first giving a local daemon that is starting
/// a moment to listen.
pub fn connect_waiting(conn: &ConnArgs, wait: bool) -> anyhow::Result<Client> {
    let given = conn
        .server
        .clone()
        .or_else(|| {
            std::env::var("ALCOVE_SERVER")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .unwrap_or_else(|| "http://127.0.0.1:8480".into());
    let server = server_url(&given)?;
    if wait {
        wait_for_local_daemon(&server);
    }
    let token = client_token(conn, &server)?;
    alcove_sys::signal::default_sigpipe();
    Ok(Client::new(&server, token))
}

/// Runs `alcove fn ...` and returns the exit code.
pub fn main(args: FnArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(client) => client,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            return 125;
        }
    };
    match run(&client, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            125
        }
    }
}

fn run(client: &Client, args: FnArgs) -> anyhow::Result<i32> {
    let json = args.json;
    let print = |value: &Value| {
        println!(
            "{}",
            serde_json::to_string_pretty(value).unwrap_or_default()
        )
    };
    match args.command {
        FnCommand::Deploy(d) => {
            let body = deploy_body(d)?;
            configure::print_version(&client.deploy(&body)?, json);
        }
        FnCommand::Config { name, settings } => configure::config(client, &name, settings, json)?,
        FnCommand::Secret(command) => configure::secret(client, command, json)?,
        FnCommand::Invoke {
            name,
            data,
            data_file,
            version,
            is_async,
            retries,
        } => {
            let body = request_body(data, data_file)?;
            if is_async {
                let record = client.invoke_async(&name, version, retries, &body)?;
                if json {
                    print(&record);
                } else {
                    println!("{}", record["id"].as_str().unwrap_or(""));
                }
                return Ok(0);
            }
            return invoke(client, &name, version, &body, json);
        }
        FnCommand::Ls => {
            let v = client.list()?;
            if json {
                print(&v);
            } else {
                println!("{}", view::function_table(&v));
            }
        }
        FnCommand::Show { name } => {
            let v = client.show(&name)?;
            if json {
                print(&v);
            } else {
                show_function(&v);
            }
        }
        FnCommand::Learn {
            name,
            invocations,
            window,
            reset,
            show,
            stop,
        } => {
            let v = if show || stop {
                client.learned(&name, stop)?
            } else {
                let body = json!({
                    "invocations": invocations,
                    "seconds": window.map(|w| w.as_secs().max(1)),
                    "reset": reset,
                });
                client.learn(&name, &body)?
            };
            if json || show {
                print(&v);
            } else {
                println!("{}", view::learning_line(&v));
            }
        }
        FnCommand::Logs {
            name,
            limit,
            follow,
            status,
            after,
        } => {
            if follow {
                return follow::logs(client, &name, limit, json);
            }
            let v = client.logs_page(&name, limit, status.as_deref(), after.as_deref())?;
            if json {
                print(&v);
            } else {
                for r in v["invocations"].as_array().into_iter().flatten() {
                    follow::print_record(r, false);
                }
                if let Some(next) = v["next_after"].as_str() {
                    eprintln!("alcove: more: alcove fn logs {name} --after {next}");
                }
            }
        }
        FnCommand::Rm { name, force } => {
            client.remove(&name, force)?;
            if json {
                print(&json!({ "removed": name }));
            } else {
                println!("removed {name}");
            }
        }
        FnCommand::Ps { name } => {
            let v = client.running(name.as_deref())?;
            if json {
                print(&v);
            } else {
                print!("{}", ps::table(&v));
                if v["truncated"] == true {
                    eprintln!(
                        "alcove: showing the oldest {} of {} invocations in flight",
                        v["invocations"].as_array().map_or(0, Vec::len),
                        v["total"]
                    );
                }
            }
        }
        FnCommand::Cancel { id } => {
            let v = client.cancel(&id)?;
            if json {
                print(&v);
            } else {
                match v["status"].as_str() {
                    Some("cancelled") => println!("cancelled {id}"),
                    Some("queued" | "running") => println!("cancelling {id} (it is still ending)"),
                    other => println!(
                        "{id} ended on its own before the cancel took effect (status {})",
                        other.unwrap_or("unknown")
                    ),
                }
            }
        }
        FnCommand::Rollback { name, version } => {
            let v = client.rollback(&name, version)?;
            if json {
                print(&v);
            } else {
                println!("{name}: latest is now version {}", v["latest"]);
            }
        }
        FnCommand::Result { id, wait } => {
            let mut v = client.invocation(&id)?;
            let in_flight = |v: &Value| matches!(v["status"].as_str(), Some("queued" | "running"));
            while wait && in_flight(&v) {
                std::thread::sleep(Duration::from_millis(50));
                v = client.invocation(&id)?;
            }
            if json {
                print(&v);
            } else {
                println!("{}", invocation_line(&v));
                if let Some(text) = v["response"].as_str() {
                    print!("{text}");
                }
                if v["status"] != "exited" || v["exit_code"] != 0 {
                    eprint!("{}", v["stderr"].as_str().unwrap_or(""));
                }
            }
            if in_flight(&v) {
                eprintln!("alcove: {id} has not finished yet: add --wait to wait for it");
                return Ok(RESULT_NOT_FINISHED);
            }
            return Ok(if v["status"] == "exited" && v["exit_code"] == 0 {
                0
            } else {
                1
            });
        }
    }
    Ok(0)
}

fn invoke(
    client: &Client,
    name: &str,
    version: Option<u32>,
    body: &[u8],
    json: bool,
) -> anyhow::Result<i32> {
    let outcome = client.invoke(name, version, body)?;
    if let Some(error) = &outcome.error {
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &json!({ "http_status": outcome.status, "error": error })
                )?
            );
        } else {
            eprintln!(
                "alcove: {}: {} (invocation {})",
                error["code"].as_str().unwrap_or("error"),
                error["message"].as_str().unwrap_or(""),
                outcome.invocation.as_deref().unwrap_or("?")
            );
            if let Some(log) = error.pointer("/invocation/stderr").and_then(Value::as_str) {
                eprint!("{log}");
            }
        }
        return Ok(1);
    }
    if json {
        let text = String::from_utf8_lossy(&outcome.response);
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({ "http_status": outcome.status, "invocation": outcome.invocation, "response": text })
            )?
        );
    } else {
        std::io::stdout()
            .write_all(&outcome.response)
            .context("writing the response")?;
    }
    Ok(0)
}

fn request_body(data: Option<String>, file: Option<PathBuf>) -> anyhow::Result<Vec<u8>> {
    use std::io::IsTerminal;
    if let Some(d) = data {
        return Ok(d.into_bytes());
    }
    let mut body = Vec::new();
    match file {
        Some(path) if path.as_os_str() != "-" => {
            body = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        }
        Some(_) => {
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading stdin")?;
        }
        None if !std::io::stdin().is_terminal() => {
            std::io::stdin()
                .read_to_end(&mut body)
                .context("reading stdin")?;
        }
        None => {}
    }
    Ok(body)
}
