//! `alcove fn logs NAME --follow` and `alcove events`: the daemon's event
//! stream, printed as it arrives.

use super::ConnArgs;
use alcove_api::Client;
use clap::Args;
use serde_json::Value;
use std::collections::HashSet;

/// `alcove events`: every invocation's events as they happen.
#[derive(Args, Debug)]
pub struct EventsArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Only this function's events.
    #[arg(long, short = 'f', value_name = "NAME")]
    pub function: Option<String>,
}

/// Runs `alcove events` and returns the exit code.
pub fn events_main(args: EventsArgs) -> i32 {
    let run = || -> anyhow::Result<()> {
        let client = super::connect(&args.conn)?;
        for event in client.events(args.function.as_deref())? {
            println!("{}", event?);
        }
        Ok(())
    };
    match run() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            125
        }
    }
}

/// `fn logs NAME --follow`: the last `limit` invocations, oldest first, then
/// each one as it ends. Returns when the daemon closes the stream.
pub fn logs(client: &Client, name: &str, limit: u32, json: bool) -> anyhow::Result<i32> {
    // Subscribed before listing: an invocation that ends in between is then
    // in both, and skipped the second time, rather than in neither.
    let events = client.events(Some(name))?;
    let recent = client.logs(name, limit)?;
    let listed: Vec<&Value> = recent["invocations"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    // An async invocation ends once per attempt, and a listed record may be
    // of one still running: only the very same state is skipped.
    let shown: HashSet<(String, u64, String)> =
        listed.iter().filter_map(|r| attempt_of(r)).collect();
    // The daemon lists newest first; read on, the log runs forward in time.
    for r in listed.into_iter().rev() {
        print_record(r, json);
    }
    for event in events {
        let event = event?;
        match event["event"].as_str() {
            Some("end") => {}
            Some("lagged") => {
                eprintln!(
                    "alcove: this client fell behind the event stream: {} events were missed; \
                     `alcove fn logs {name}` lists what ended meanwhile",
                    event["missed"]
                );
                continue;
            }
            _ => continue,
        }
        let Some(id) = event["invocation"].as_str() else {
            continue;
        };
        match client.invocation(id) {
            Ok(r) if attempt_of(&r).is_some_and(|a| shown.contains(&a)) => {}
            Ok(r) => print_record(&r, json),
            // Its record can be gone already (`fn rm`): say so and go on.
            Err(e) => {
                eprintln!("alcove: invocation {id} ended, but its record cannot be read: {e}")
            }
        }
    }
    Ok(0)
}

/// Which invocation a record is of, at which attempt, in which state.
fn attempt_of(record: &Value) -> Option<(String, u64, String)> {
    Some((
        record["id"].as_str()?.to_owned(),
        record["attempts"].as_u64().unwrap_or(0),
        record["status"].as_str().unwrap_or("").to_owned(),
    ))
}

/// One record the way `fn logs` prints it: a line, then its stderr
/// indented; with `json`, one JSON object per line.
pub(super) fn print_record(record: &Value, json: bool) {
    if json {
        println!("{record}");
        return;
    }
    println!("{}", super::view::invocation_line(record));
    for line in record["stderr"].as_str().unwrap_or("").lines() {
        println!("    {line}");
    }
}
