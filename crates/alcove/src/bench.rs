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
