//! `alcove top`: a terminal view of what the daemon runs now, refreshed
//! every second; `--once` prints one listing for scripts.
//!
//! The daemon lists usage so far (CPU time, syscalls); rates come from two
//! listings, worked out here by plain functions the tests call directly.

use super::ConnArgs;
use alcove_api::Client;
use alcove_sandbox::units::{format_duration, format_size};
use anyhow::{bail, Context};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row as TableRow, Table};
use ratatui::Frame;
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const REFRESH: Duration = Duration::from_secs(1);
/// Between the two listings `--once` takes to work out rates.
const ONCE_GAP: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct TopArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Print one listing as text and exit. It takes two listings 0.5s apart
    /// to work out CPU% and syscalls/s.
    #[arg(long)]
    pub once: bool,
    /// With --once: print JSON ({"invocations", "functions", "time"}), each
    /// invocation with "cpu_percent" and "syscalls_per_second" (null when
    /// unknown).
    #[arg(long, requires = "once")]
    pub json: bool,
}

/// Runs `alcove top` and returns the exit code.
pub fn main(args: TopArgs) -> i32 {
    match run(&args) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("alcove: error: {e:#}");
            125
        }
    }
}

fn run(args: &TopArgs) -> anyhow::Result<()> {
    if !args.once && !std::io::stdout().is_terminal() {
        bail!("alcove top draws on a terminal, and stdout is not one; use --once (with --json for scripts)");
    }
    let client = super::connect(&args.conn)?;
    let server = client.server().to_owned();
    if !args.once {
        return interactive(&client, server);
    }
    let before = client.running(None)?;
    std::thread::sleep(ONCE_GAP);
    let view = View::new(Some(&before), &client.running(None)?, &client.list()?);
    if args.json {
        println!("{:#}", view.to_json());
    } else {
        println!("{}\n\n{}", view.header(&server), view.rows_text());
        if !view.functions.is_empty() {
            println!("\n{}", view.functions_text());
        }
    }
    Ok(())
}

/// One invocation in flight as the daemon listed it, with the rates worked
/// out against the listing before.
#[derive(Debug, Clone)]
struct Row {
    raw: Value,
    cpu_percent: Option<f64>,
    syscalls_per_second: Option<f64>,
}

impl Row {
    fn text(&self, key: &str) -> &str {
        self.raw[key].as_str().unwrap_or("-")
    }

    fn running(&self) -> bool {
        self.raw["status"] == "running"
    }

    fn to_json(&self) -> Value {
        let mut out = self.raw.clone();
        if let Some(o) = out.as_object_mut() {
            o.insert("cpu_percent".into(), json!(self.cpu_percent));
            o.insert(
                "syscalls_per_second".into(),
                json!(self.syscalls_per_second),
            );
        }
        out
    }
}

/// The invocations of a `GET /v1/invocations` answer.
fn listed(list: &Value) -> &[Value] {
    list["invocations"].as_array().map_or(&[], Vec::as_slice)
}

/// `now`'s invocations, with rates against `before` (the listing taken just
/// before, if any). One that ended in between is simply not in `now`.
fn rows(before: Option<&Value>, now: &Value) -> Vec<Row> {
    let previous: HashMap<&str, &Value> = before
        .map_or(&[][..], listed)
        .iter()
        .filter_map(|r| Some((r["id"].as_str()?, r)))
        .collect();
    listed(now)
        .iter()
        .filter(|r| r.is_object())
        .map(|r| {
            let before = r["id"].as_str().and_then(|id| previous.get(id).copied());
            let rate = |key| before.and_then(|b| per_wall_ms(b, r, key));
            Row {
                raw: r.clone(),
                cpu_percent: rate("cpu_ms")
                    .map(|r| r * 100.0)
                    .or_else(|| average_cpu_percent(r)),
                syscalls_per_second: rate("syscalls").map(|r| r * 1e3),
            }
        })
        .collect()
}

/// How much `key` grew per millisecond between two listings of one
/// invocation. Its age is the daemon's own clock, so the time the requests
/// took does not count.
fn per_wall_ms(before: &Value, now: &Value, key: &str) -> Option<f64> {
    let wall_ms = now["age_ms"].as_f64()? - before["age_ms"].as_f64()?;
    let grown = now[key].as_f64()? - before[key].as_f64()?;
    // A retry runs in a fresh sandbox whose counters start again from zero.
    (wall_ms > 0.0 && grown >= 0.0).then(|| grown / wall_ms)
}

/// With nothing to compare to: the CPU time over its whole age.
fn average_cpu_percent(r: &Value) -> Option<f64> {
    let age_ms = r["age_ms"].as_f64()?;
    let cpu_ms = r["cpu_ms"].as_f64()?;
    (age_ms > 0.0).then(|| cpu_ms / age_ms * 100.0)
}

/// What `s` cycles through; each sorts the biggest first unless reversed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Cpu,
    Memory,
    Age,
    Syscalls,
}

impl SortBy {
    fn next(self) -> Self {
        match self {
            SortBy::Cpu => SortBy::Memory,
            SortBy::Memory => SortBy::Age,
            SortBy::Age => SortBy::Syscalls,
            SortBy::Syscalls => SortBy::Cpu,
        }
    }

    /// The header of the column it sorts.
    fn column(self) -> &'static str {
        match self {
            SortBy::Cpu => "CPU%",
            SortBy::Memory => "MEMORY",
            SortBy::Age => "AGE",
            SortBy::Syscalls => "SYSCALLS/S",
        }
    }

    fn key(self, r: &Row) -> Option<f64> {
        match self {
            SortBy::Cpu => r.cpu_percent,
            SortBy::Memory => r.raw["memory_bytes"].as_f64(),
            SortBy::Age => r.raw["age_ms"].as_f64(),
            SortBy::Syscalls => r.syscalls_per_second,
        }
    }
}

fn sort(rows: &mut [Row], by: SortBy, reverse: bool) {
    rows.sort_by(|a, b| {
        let order = match (by.key(a), by.key(b)) {
            (Some(x), Some(y)) if reverse => x.total_cmp(&y),
            (Some(x), Some(y)) => y.total_cmp(&x),
            // Unknowns last either way: reversing is to find the idle ones.
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        order.then_with(|| a.text("id").cmp(b.text("id")))
    });
}

/// One function's invocations in flight, summed.
#[derive(Debug, Default, Clone, PartialEq)]
struct FunctionRow {
    name: String,
    running: usize,
    queued: usize,
    cpu_percent: Option<f64>,
    memory_bytes: Option<u64>,
}

fn by_function(rows: &[Row]) -> Vec<FunctionRow> {
    fn add<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
        match (a, b) {
            (Some(a), Some(b)) => Some(a + b),
            (a, b) => a.or(b),
        }
    }
    let mut out: BTreeMap<&str, FunctionRow> = BTreeMap::new();
    for r in rows {
        let name = r.text("function");
        let f = out.entry(name).or_insert_with(|| FunctionRow {
            name: name.to_owned(),
            ..FunctionRow::default()
        });
        if r.running() {
            f.running += 1;
        } else {
            f.queued += 1;
        }
        f.cpu_percent = add(f.cpu_percent, r.cpu_percent);
        f.memory_bytes = add(f.memory_bytes, r.raw["memory_bytes"].as_u64());
    }
    out.into_values().collect()
}

/// What one refresh shows.
struct View {
    rows: Vec<Row>,
    functions: Vec<FunctionRow>,
    /// In flight, counting any past the listing's cap.
    total: u64,
    deployed: usize,
    warm: usize,
    /// Unix seconds.
    time: f64,
}

impl View {
    /// From two listings of the invocations in flight and the function list.
    fn new(before: Option<&Value>, now: &Value, functions: &Value) -> View {
        let rows = rows(before, now);
        let deployed = functions["functions"]
            .as_array()
            .map_or(&[][..], Vec::as_slice);
        View {
            functions: by_function(&rows),
            total: now["total"].as_u64().unwrap_or(rows.len() as u64),
            deployed: deployed.len(),
            warm: deployed.iter().filter(|f| f["warm"] == true).count(),
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()),
            rows,
        }
    }

    fn header(&self, server: &str) -> String {
        let running = self.rows.iter().filter(|r| r.running()).count();
        let shown = self.rows.len() as u64;
        let more = if self.total > shown {
            format!(" (the oldest {shown} of {} shown)", self.total)
        } else {
            String::new()
        };
        format!(
            "{server}  {running} running, {} queued{more}  functions: {} deployed, {} warm  {}",
            self.rows.len() - running,
            self.deployed,
            self.warm,
            super::view::utc(self.time)
        )
    }

    fn to_json(&self) -> Value {
        let functions: Vec<Value> = self
            .functions
            .iter()
            .map(|f| {
                json!({ "name": f.name, "running": f.running, "queued": f.queued,
                        "cpu_percent": f.cpu_percent, "memory_bytes": f.memory_bytes })
            })
            .collect();
        json!({
            "invocations": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "functions": functions,
            "total": self.total,
            "time": self.time,
        })
    }

    fn rows_text(&self) -> String {
        let cells: Vec<Vec<String>> = self.rows.iter().map(cells).collect();
        super::view::table(&COLUMNS, &cells)
    }

    fn functions_text(&self) -> String {
        let cells: Vec<Vec<String>> = self.functions.iter().map(function_cells).collect();
        super::view::table(&FUNCTION_COLUMNS, &cells)
    }
}

/// The columns, and whether each is right-aligned (numbers).
const COLUMNS: [(&str, bool); 8] = [
    ("ID", false),
    ("FUNCTION", false),
    ("VERSION", true),
    ("STATUS", false),
    ("AGE", true),
    ("CPU%", true),
    ("MEMORY", true),
    ("SYSCALLS/S", true),
];

const FUNCTION_COLUMNS: [(&str, bool); 5] = [
    ("FUNCTION", false),
    ("RUNNING", true),
    ("QUEUED", true),
    ("CPU%", true),
    ("MEMORY", true),
];

fn cells(r: &Row) -> Vec<String> {
    let mut status = r.text("status").to_owned();
    if r.raw["cancelled"] == true {
        status.push_str(" (cancelling)");
    }
    vec![
        r.text("id").to_owned(),
        r.text("function").to_owned(),
        r.raw["version"]
            .as_u64()
            .map_or("-".into(), |v| format!("v{v}")),
        status,
        r.raw["age_ms"].as_f64().map_or("-".into(), |ms| {
            format_duration(Duration::from_secs_f64(ms.max(0.0) / 1e3))
        }),
        percent(r.cpu_percent),
        size(r.raw["memory_bytes"].as_u64()),
        r.syscalls_per_second
            .map_or("-".into(), |n| format!("{n:.0}")),
    ]
}

fn function_cells(f: &FunctionRow) -> Vec<String> {
    vec![
        f.name.clone(),
        f.running.to_string(),
        f.queued.to_string(),
        percent(f.cpu_percent),
        size(f.memory_bytes),
    ]
}

fn percent(p: Option<f64>) -> String {
    p.map_or("-".into(), |p| format!("{p:.1}"))
}

fn size(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), format_size)
}

/// The interactive view's state between refreshes.
struct Screen {
    server: String,
    sort: SortBy,
    reverse: bool,
    /// The last listing, to work out the next one's rates.
    before: Option<Value>,
    view: View,
    /// Why the last refresh failed; the view is then the one before.
    error: Option<String>,
}

impl Screen {
    fn refresh(&mut self, client: &Client) -> anyhow::Result<()> {
        let now = client.running(None)?;
        self.view = View::new(self.before.as_ref(), &now, &client.list()?);
        self.before = Some(now);
        self.resort();
        Ok(())
    }

    fn resort(&mut self) {
        sort(&mut self.view.rows, self.sort, self.reverse);
    }
}

/// Leaves full-screen mode when dropped: on return, on error, and while a
/// panic unwinds (ratatui's panic hook restores it too, before the message).
struct RestoreTerminal;

impl Drop for RestoreTerminal {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

fn interactive(client: &Client, server: String) -> anyhow::Result<()> {
    // The first listing is taken before the screen changes, so that an
    // unreachable daemon is an ordinary error message.
    let first = client.running(None)?;
    let mut screen = Screen {
        server,
        sort: SortBy::Cpu,
        reverse: false,
        view: View::new(None, &first, &client.list()?),
        before: Some(first),
        error: None,
    };
    screen.resort();
    let _restore = RestoreTerminal;
    let mut terminal = ratatui::try_init().context("cannot set the terminal up")?;
    let mut due = Instant::now() + REFRESH;
    loop {
        terminal.draw(|frame| draw(frame, &screen))?;
        if event::poll(due.saturating_duration_since(Instant::now()))? {
            if !on_event(&mut screen, event::read()?) {
                return Ok(());
            }
            continue;
        }
        // A daemon that goes away shows as an error line; the view waits for it.
        screen.error = screen.refresh(client).err().map(|e| format!("{e:#}"));
        due = Instant::now() + REFRESH;
    }
}

/// Applies a key; false to quit.
fn on_event(screen: &mut Screen, event: Event) -> bool {
    let Event::Key(key) = event else {
        return true;
    };
    if key.kind != KeyEventKind::Press {
        return true;
    }
    match key.code {
        KeyCode::Char('q') | KeyCode::Esc => return false,
        // Raw mode turns Ctrl-C into a key, so it is handled here.
        KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => return false,
        KeyCode::Char('s') => screen.sort = screen.sort.next(),
        KeyCode::Char('r') => screen.reverse = !screen.reverse,
        _ => return true,
    }
    screen.resort();
    true
}

fn draw(frame: &mut Frame, screen: &Screen) {
    let view = &screen.view;
    let functions_height = (view.functions.len() as u16).clamp(1, 8) + 2;
    let [top, invocations, functions, keys] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(functions_height),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let header = match &screen.error {
        Some(e) => Line::from(format!("{}  refresh failed: {e}", screen.server)).fg(Color::Red),
        None => Line::from(view.header(&screen.server)).bold(),
    };
    frame.render_widget(Paragraph::new(header), top);
    let cells: Vec<Vec<String>> = view.rows.iter().map(cells).collect();
    let arrow = if screen.reverse { "▲" } else { "▼" };
    let sorted = Some((screen.sort.column(), arrow));
    let title = format!(" {} invocations in flight ", view.total);
    frame.render_widget(table(&COLUMNS, &cells, sorted, title), invocations);
    let cells: Vec<Vec<String>> = view.functions.iter().map(function_cells).collect();
    let title = " by function ".to_owned();
    frame.render_widget(table(&FUNCTION_COLUMNS, &cells, None, title), functions);
    let help = format!(
        "q quit  s sort ({})  r reverse",
        screen.sort.column().to_lowercase()
    );
    frame.render_widget(Paragraph::new(Line::from(help).dim()), keys);
}

/// A table widget sized to its content, its sort column marked.
fn table<'a>(
    columns: &[(&str, bool)],
    rows: &'a [Vec<String>],
    sorted: Option<(&str, &str)>,
    title: String,
) -> Table<'a> {
    let names: Vec<String> = columns
        .iter()
        .map(|(name, _)| match sorted {
            Some((column, arrow)) if column == *name => format!("{name}{arrow}"),
            _ => (*name).to_owned(),
        })
        .collect();
    let widths = columns.iter().enumerate().map(|(i, _)| {
        let widest = rows
            .iter()
            .filter_map(|r| r.get(i))
            .map(|c| c.chars().count());
        Constraint::Length(widest.fold(names[i].chars().count(), usize::max) as u16)
    });
    let line = |i: usize, text: String| {
        let line = Line::from(text);
        Cell::from(if columns[i].1 {
            line.right_aligned()
        } else {
            line
        })
    };
    let header = TableRow::new(names.iter().enumerate().map(|(i, n)| line(i, n.clone())))
        .style(Style::new().bold().reversed());
    let body = rows
        .iter()
        .map(|r| TableRow::new(r.iter().enumerate().map(|(i, c)| line(i, c.clone()))));
    Table::new(body, widths)
        .header(header)
        .column_spacing(2)
        .block(Block::new().borders(Borders::TOP).title(title))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(invocations: Value) -> Value {
        json!({ "invocations": invocations, "total": invocations.as_array().map_or(0, Vec::len) })
    }

    fn running(id: &str, function: &str, age_ms: f64, cpu_ms: f64) -> Value {
        json!({ "id": id, "function": function, "version": 1, "status": "running",
                "async": false, "attempts": 1, "created_at": 1.0e9, "age_ms": age_ms,
                "memory_bytes": 1u64 << 20, "memory_peak_bytes": 1u64 << 20,
                "cpu_ms": cpu_ms, "cancelled": false })
    }

    #[test]
    fn rates_come_from_what_grew_between_two_listings() {
        let mut a1 = running("a", "f", 1000.0, 100.0);
        a1["syscalls"] = json!(10);
        let mut a2 = running("a", "f", 1500.0, 350.0);
        a2["syscalls"] = json!(510);
        let rows = rows(Some(&listing(json!([a1]))), &listing(json!([a2])));
        assert_eq!(rows.len(), 1);
        // 250ms of CPU in 500ms of wall time; 500 syscalls in half a second.
        assert_eq!(rows[0].cpu_percent, Some(50.0));
        assert_eq!(rows[0].syscalls_per_second, Some(1000.0));
    }

    #[test]
    fn a_first_listing_averages_cpu_over_the_age_and_knows_no_syscall_rate() {
        let mut a = running("a", "f", 2000.0, 500.0);
        a["syscalls"] = json!(40);
        let rows = rows(None, &listing(json!([a])));
        assert_eq!(rows[0].cpu_percent, Some(25.0));
        assert_eq!(rows[0].syscalls_per_second, None);
        assert_eq!(cells(&rows[0])[7], "-");
    }

    #[test]
    fn one_that_ended_between_listings_is_gone_and_a_new_one_is_averaged() {
        let before = listing(json!([
            running("a", "f", 1000.0, 900.0),
            running("b", "g", 1000.0, 0.0)
        ]));
        let now = listing(json!([
            running("b", "g", 2000.0, 100.0),
            running("c", "f", 400.0, 100.0)
        ]));
        let rows = rows(Some(&before), &now);
        let ids: Vec<&str> = rows.iter().map(|r| r.text("id")).collect();
        assert_eq!(ids, ["b", "c"]);
        assert_eq!(rows[0].cpu_percent, Some(10.0));
        assert_eq!(rows[1].cpu_percent, Some(25.0));
        let functions = by_function(&rows);
        assert_eq!(
            functions
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            ["f", "g"]
        );
    }

    #[test]
    fn a_retry_that_started_its_counters_again_is_averaged_not_negative() {
        let rows = rows(
            Some(&listing(json!([running("a", "f", 1000.0, 800.0)]))),
            &listing(json!([running("a", "f", 2000.0, 100.0)])),
        );
        assert_eq!(rows[0].cpu_percent, Some(5.0));
    }

    #[test]
    fn missing_fields_are_unknown_not_zero() {
        let queued = json!({ "id": "q", "function": "f", "status": "queued" });
        let rows = rows(
            Some(&listing(json!([queued.clone()]))),
            &listing(json!([queued, 7])),
        );
        assert_eq!(rows.len(), 1, "a non-object is skipped");
        assert_eq!(
            (rows[0].cpu_percent, rows[0].syscalls_per_second),
            (None, None)
        );
        assert_eq!(
            cells(&rows[0]),
            ["q", "f", "-", "queued", "-", "-", "-", "-"]
        );
        let f = &by_function(&rows)[0];
        assert_eq!(
            (f.running, f.queued, f.cpu_percent, f.memory_bytes),
            (0, 1, None, None)
        );
        let json = rows[0].to_json();
        assert!(json["cpu_percent"].is_null() && json["syscalls_per_second"].is_null());
        assert!(super::rows(None, &json!({"error": "x"})).is_empty());
    }

    #[test]
    fn sorting_puts_the_biggest_first_and_unknowns_last_either_way() {
        let now = listing(json!([
            running("low", "f", 1000.0, 100.0),
            { "id": "queued", "function": "f", "status": "queued", "age_ms": 5000.0 },
            running("high", "f", 1000.0, 900.0),
        ]));
        let mut rows = rows(None, &now);
        let ids = |rows: &[Row]| {
            rows.iter()
                .map(|r| r.text("id").to_owned())
                .collect::<Vec<_>>()
        };
        sort(&mut rows, SortBy::Cpu, false);
        assert_eq!(ids(&rows), ["high", "low", "queued"]);
        sort(&mut rows, SortBy::Cpu, true);
        assert_eq!(ids(&rows), ["low", "high", "queued"]);
        sort(&mut rows, SortBy::Age, false);
        assert_eq!(ids(&rows), ["queued", "high", "low"], "ties go by id");
        let mut by = SortBy::Cpu;
        for _ in 0..4 {
            by = by.next();
        }
        assert_eq!(by, SortBy::Cpu);
    }

    #[test]
    fn functions_sum_their_invocations() {
        let now = listing(json!([
            running("a", "f", 1000.0, 100.0),
            running("b", "f", 1000.0, 300.0)
        ]));
        let view = View::new(
            None,
            &now,
            &json!({ "functions": [{ "name": "f", "warm": true }] }),
        );
        assert_eq!(
            view.functions,
            [FunctionRow {
                name: "f".into(),
                running: 2,
                queued: 0,
                cpu_percent: Some(40.0),
                memory_bytes: Some(2 << 20),
            }]
        );
        assert_eq!((view.deployed, view.warm, view.total), (1, 1, 2));
        assert!(view.header("http://x").contains("2 running, 0 queued"));
        assert_eq!(view.to_json()["functions"][0]["memory_bytes"], 2 << 20);
    }
}
