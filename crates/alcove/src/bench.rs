//! `alcove bench`: time whole commands, interleaved, and compare them; and
//! break a sandbox's start into phases.

use alcove_sandbox::{RunOptions, SandboxSpec};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Summary statistics of a set of timings, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub mean: f64,
}

impl Summary {
    pub fn of(samples: &mut [f64]) -> Self {
        samples.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
        Summary {
            median: at(0.5),
            p10: at(0.1),
            p90: at(0.9),
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }
}

/// A command to time: a label and its argv (split on whitespace).
pub struct Subject {
    pub name: String,
    pub argv: Vec<String>,
}

impl Subject {
    /// Parses `NAME=COMMAND ARGS...`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (name, command) = text
            .split_once('=')
            .ok_or_else(|| format!("{text:?}: use NAME=COMMAND, such as floor=/usr/bin/true"))?;
        let argv: Vec<String> = command.split_whitespace().map(str::to_owned).collect();
        if name.is_empty() || argv.is_empty() {
            return Err(format!(
                "{text:?}: use NAME=COMMAND, such as floor=/usr/bin/true"
            ));
        }
        Ok(Subject {
            name: name.to_owned(),
            argv,
        })
    }

    fn time_once(&self) -> Result<f64, String> {
        let start = Instant::now();
        let status = Command::new(&self.argv[0])
            .args(&self.argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("{}: cannot start {}: {e}", self.name, self.argv[0]))?;
        let elapsed = start.elapsed().as_secs_f64() * 1e3;
        if !status.success() {
            return Err(format!(
                "{}: `{}` failed ({status})",
                self.name,
                self.argv.join(" ")
            ));
        }
        Ok(elapsed)
    }
}

/// Runs every subject once per round, in a rotating order so that none always
/// goes first, and returns each subject's timings.
pub fn interleaved(
    subjects: &[Subject],
    rounds: usize,
    warmup: usize,
) -> Result<Vec<Vec<f64>>, String> {
    let mut samples = vec![Vec::with_capacity(rounds); subjects.len()];
    for round in 0..warmup + rounds {
        for k in 0..subjects.len() {
            let i = (round + k) % subjects.len();
            let t = subjects[i].time_once()?;
            if round >= warmup {
                samples[i].push(t);
            }
        }
    }
    Ok(samples)
}

/// Prints the comparison table, with each subject's median as a multiple of
/// the baseline's (or of alcove's, by name).
pub fn report(
    subjects: &[Subject],
    samples: &mut [Vec<f64>],
    baseline: &str,
) -> Vec<(String, Summary)> {
    let summaries: Vec<(String, Summary)> = subjects
        .iter()
        .zip(samples.iter_mut())
        .map(|(s, t)| (s.name.clone(), Summary::of(t)))
        .collect();
    let base = summaries
        .iter()
        .find(|(n, _)| n == baseline)
        .map(|(_, s)| s.median);
    println!(
        "{:<14} {:>9} {:>9} {:>9} {:>9}  {}",
        "command",
        "median",
        "p10",
        "p90",
        "mean",
        "median / ".to_owned() + baseline
    );
    for (name, s) in &summaries {
        let ratio = base.map_or("-".into(), |b| format!("{:.2}x", s.median / b));
        println!(
            "{name:<14} {:>7.3}ms {:>7.3}ms {:>7.3}ms {:>7.3}ms  {ratio}",
            s.median, s.p10, s.p90, s.mean
        );
    }
    summaries
}

/// Runs `spec` `rounds` times in this process with phase recording on, and
/// prints each phase's median and p90 in microseconds.
pub fn phases(spec: &SandboxSpec, rounds: usize) -> Result<(), String> {
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut names: Vec<&'static str> = Vec::new();
    let options = RunOptions::default();
    for _ in 0..rounds {
        let outcome = alcove_sandbox::run(spec, &options).map_err(|e| e.to_string())?;
        let p = outcome.phases.ok_or("no phases recorded")?;
        let values = [
            ("prepare", p.prepare_us),
            ("clone", p.clone_us),
            ("namespaces", p.namespaces_us),
            ("mounts", p.mounts_us),
            ("harden", p.harden_us),
            ("exec", p.exec_us),
            ("run", p.run_us),
            ("teardown", p.teardown_us),
        ];
        names = values.iter().map(|v| v.0).collect();
        rows.push(values.iter().map(|v| v.1).collect());
    }
    println!("{:<12} {:>10} {:>10}", "phase", "median", "p90");
    let mut total = 0.0;
    for (i, name) in names.iter().enumerate() {
        let mut column: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        let s = Summary::of(&mut column);
        total += s.median;
        println!("{name:<12} {:>8.1}us {:>8.1}us", s.median, s.p90);
    }
    println!("{:<12} {:>8.1}us  (sum of medians)", "total", total);
    Ok(())
}

/// A small C program for the compile workload.
const C_SOURCE: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
struct node { int key; struct node *left, *right; };
static struct node *insert(struct node *n, int key) {
    if (!n) { n = calloc(1, sizeof *n); n->key = key; return n; }
    if (key < n->key) n->left = insert(n->left, key); else n->right = insert(n->right, key);
    return n;
}
static int depth(const struct node *n) {
    if (!n) return 0;
    int l = depth(n->left), r = depth(n->right);
    return 1 + (l > r ? l : r);
}
int main(int argc, char **argv) {
    struct node *root = NULL;
    unsigned x = argc > 1 ? (unsigned)atoi(argv[1]) : 1;
    for (int i = 0; i < 10000; i++) { x = x * 1103515245u + 12345u; root = insert(root, (int)(x >> 8)); }
    printf("depth %d\n", depth(root));
    return strcmp(argv[0], "") == 0;
}
"#;

fn run_sandbox(
    alcove: &std::path::Path,
    args: &[&str],
) -> Result<(String, serde_json::Value), String> {
    let dir = std::env::temp_dir().join(format!("alcove-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let report = dir.join("report.json");
    let mut full = vec!["run", "--report", report.to_str().unwrap_or("")];
    full.extend_from_slice(args);
    let out = Command::new(alcove)
        .args(&full)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "`alcove {}` failed: {}",
            full.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let text = std::fs::read_to_string(&report).map_err(|e| e.to_string())?;
    let json = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), json))
}

fn ns_each(stdout: &str) -> Result<f64, String> {
    stdout
        .split(", ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("unexpected probe output {stdout:?}"))
}

/// Host getpid cost in ns, measured in this process.
fn host_getpid_ns(n: u64) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        // SAFETY: getpid takes no arguments.
        unsafe { libc::syscall(libc::SYS_getpid) };
    }
    start.elapsed().as_nanos() as f64 / n as f64
}

/// What eBPF monitoring costs: per syscall inside a sandbox, on a real compile,
/// and for processes outside any sandbox while a traced sandbox runs.
pub fn ebpf_overhead(probe: &std::path::Path, rounds: usize) -> Result<(), String> {
    let alcove = std::env::current_exe().map_err(|e| e.to_string())?;
    let bind = format!("{}:/probe", probe.display());
    let src_dir = std::env::temp_dir().join(format!("alcove-bench-src-{}", std::process::id()));
    std::fs::create_dir_all(&src_dir).map_err(|e| e.to_string())?;
    std::fs::write(src_dir.join("tree.c"), C_SOURCE).map_err(|e| e.to_string())?;
    let src_bind = format!("{}:/src", src_dir.display());
    const CALLS: &str = "2000000";

    let mut plain = Vec::new();
    let mut traced = Vec::new();
    let mut budget = Vec::new();
    let mut compile_plain = Vec::new();
    let mut compile_traced = Vec::new();
    let getpid = ["--bind", bind.as_str(), "--", "/probe", "getpid", CALLS];
    let compile = [
        "--bind",
        src_bind.as_str(),
        "--workdir",
        "/tmp",
        "--",
        "gcc",
        "-O2",
        "-o",
        "/tmp/tree",
        "/src/tree.c",
    ];
    for round in 0..rounds + 1 {
        let keep = round > 0; // the first round warms caches and the pool
        let p = ns_each(&run_sandbox(&alcove, &getpid)?.0)?;
        let t = ns_each(&run_sandbox(&alcove, &[&["--trace"][..], &getpid].concat())?.0)?;
        let b = ns_each(
            &run_sandbox(
                &alcove,
                &[&["--max-syscalls", "1000000000000"][..], &getpid].concat(),
            )?
            .0,
        )?;
        let cp = run_sandbox(&alcove, &compile)?.1["wall_ms"]
            .as_f64()
            .unwrap_or(0.0);
        let ct = run_sandbox(&alcove, &[&["--trace"][..], &compile].concat())?.1["wall_ms"]
            .as_f64()
            .unwrap_or(0.0);
        if keep {
            plain.push(p);
            traced.push(t);
            budget.push(b);
            compile_plain.push(cp);
            compile_traced.push(ct);
        }
    }
    let (p, t, b) = (
        Summary::of(&mut plain),
        Summary::of(&mut traced),
        Summary::of(&mut budget),
    );
    let (cp, ct) = (
        Summary::of(&mut compile_plain),
        Summary::of(&mut compile_traced),
    );
    println!(
        "inside a sandbox, getpid x {CALLS} (ns per call; median, p10-p90 over {rounds} rounds):"
    );
    println!(
        "  unmonitored        {:7.1} ns  ({:.1}-{:.1})",
        p.median, p.p10, p.p90
    );
    println!(
        "  --trace            {:7.1} ns  ({:.1}-{:.1})  +{:.1} ns per syscall",
        t.median,
        t.p10,
        t.p90,
        t.median - p.median
    );
    println!(
        "  --max-syscalls     {:7.1} ns  ({:.1}-{:.1})  +{:.1} ns per syscall",
        b.median,
        b.p10,
        b.p90,
        b.median - p.median
    );
    println!("inside a sandbox, gcc -O2 of a 25-line C file (wall ms; median, p10-p90):");
    println!(
        "  unmonitored        {:7.2} ms  ({:.2}-{:.2})",
        cp.median, cp.p10, cp.p90
    );
    println!(
        "  --trace            {:7.2} ms  ({:.2}-{:.2})  x{:.3} ({:+.1}%)",
        ct.median,
        ct.p10,
        ct.p90,
        ct.median / cp.median,
        (ct.median / cp.median - 1.0) * 100.0
    );

    // Outside any sandbox: this process's getpid, with nothing attached, and
    // while a traced sandbox keeps the per-syscall programs attached.
    let mut idle = Vec::new();
    let mut busy = Vec::new();
    for _ in 0..rounds.max(3) {
        idle.push(host_getpid_ns(1_000_000));
        let mut sleeper = Command::new(&alcove)
            .args(["run", "--trace", "--", "sleep", "3"])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        std::thread::sleep(std::time::Duration::from_millis(300)); // attached by now
        busy.push(host_getpid_ns(1_000_000));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
    }
    let (i, u) = (Summary::of(&mut idle), Summary::of(&mut busy));
    println!("outside any sandbox, this process's getpid (ns per call; median, p10-p90):");
    println!(
        "  nothing attached   {:7.1} ns  ({:.1}-{:.1})",
        i.median, i.p10, i.p90
    );
    println!(
        "  a traced sandbox   {:7.1} ns  ({:.1}-{:.1})  +{:.1} ns per syscall (the in-kernel cgroup filter's miss)",
        u.median,
        u.p10,
        u.p90,
        u.median - i.median
    );
    let _ = std::fs::remove_dir_all(&src_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_use_nearest_rank() {
        let mut v: Vec<f64> = (1..=11).map(f64::from).collect();
        let s = Summary::of(&mut v);
        assert_eq!((s.median, s.p10, s.p90, s.mean), (6.0, 2.0, 10.0, 6.0));
    }

    #[test]
    fn subjects_parse_name_and_argv() {
        let s = Subject::parse("floor=/usr/bin/true -x").unwrap();
        assert_eq!((s.name.as_str(), s.argv.len()), ("floor", 2));
        assert!(Subject::parse("nocommand").is_err());
        assert!(Subject::parse("x=").is_err());
    }
}
