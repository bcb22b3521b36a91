//! The operator console (`/ui/`) in a real browser: a real `alcove serve`
//! with real functions deployed, and tests/console/test_console.py driving
//! headless Chromium through chromedriver (Debian's chromium,
//! chromium-driver and python3-selenium) against it: logging in, every view
//! free of console errors, deploys and invocations appearing live, a failed
//! invocation's stderr, hostile output shown as text, the charts, killing a
//! sandbox, the event stream, and the page's security headers. The Python
//! saves a screenshot of each view under the target directory, for a person
//! to look at.

mod common;
use common::daemon::{code, deploy, setup, Daemon};
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The browser test's directory; its cases are in test_console.py.
const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/console");
/// Where the Python saves its screenshots, kept after the run.
const SCREENSHOTS: &str = concat!(env!("CARGO_TARGET_TMPDIR"), "/console-screenshots");
/// One per view, named by test_console.py.
const VIEWS: [&str; 6] = [
    "login.png",
    "functions.png",
    "function.png",
    "invocation.png",
    "sandboxes.png",
    "events.png",
];
/// The longest the browser cases may take together (they take about a
/// minute, most of it 10,000 invocations).
const PYTHON_LIMIT: Duration = Duration::from_secs(400);

/// The functions test_console.py drives, by the names it knows them by.
const FUNCTIONS: [(&str, &str); 4] = [
    (
        "console-hello",
        r#"echo 'hello writes to stderr' >&2
echo "hello, $(cat)"
"#,
    ),
    (
        "console-fails",
        r#"body=$(cat)
if [ "$body" = fail ]; then
    echo 'console says boom' >&2
    exit 3
fi
echo fine
"#,
    ),
    (
        "console-hostile",
        r#"printf '%s\n' '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">' >&2
"#,
    ),
    // Invoked 10,000 times: the list pages, and the event stream is busy.
    ("console-bulk", "exit 0\n"),
];

/// The function test_console.py deploys itself, with the alcove CLI.
const DEPLOYED_BY_THE_BROWSER_TEST: &str = "console-live";

#[test]
fn console_in_a_browser() {
    let test = "console_in_a_browser";
    if !python_or_skip(test) {
        return;
    }
    let missing = missing_browser_packages();
    if !missing.is_empty() {
        skip_unprovided(
            test,
            &format!(
                "needs the Debian packages {} (a headless browser and its driver)",
                missing.join(" ")
            ),
        );
        return;
    }
    let Some(s) = setup(test, &[]) else { return };
    for (name, script) in FUNCTIONS {
        deploy(&s.daemon, name, &code(s.dir.path(), name, script), &[]);
    }
    // Screenshots of an earlier run must not stand in for this one's.
    let _ = std::fs::remove_dir_all(SCREENSHOTS);
    std::fs::create_dir_all(SCREENSHOTS).unwrap();

    let started = Instant::now();
    let (passed, output) = run_browser_cases(&s.daemon);
    eprintln!(
        "--- test_console.py ({:.1} s; screenshots in {SCREENSHOTS}) ---\n{output}",
        started.elapsed().as_secs_f64()
    );
    let log = || s.daemon.log.lock().unwrap().clone();
    assert!(
        passed,
        "test_console.py failed:\n{output}\n--- daemon log ---\n{}",
        log()
    );
    let cases = case_count();
    let ran = ran_count(&output);
    assert!(
        ran == cases && output.lines().any(|l| l == "OK") && !output.contains("skipped"),
        "test_console.py: all {cases} cases must run and pass, none skipped (ran {ran}):\n{output}"
    );
    assert!(
        !log().contains("panicked"),
        "the daemon panicked:\n{}",
        log()
    );
    // The browser test's deploy went to this daemon, through the CLI.
    let live = s.daemon.http(
        "GET",
        &format!("/v1/functions/{DEPLOYED_BY_THE_BROWSER_TEST}"),
        b"",
    );
    assert_eq!(live.status, 200, "{}", live.text());

    for view in VIEWS {
        let path = Path::new(SCREENSHOTS).join(view);
        let png = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("no screenshot {}: {e}", path.display()));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1024,
            "{} is not a screenshot ({} bytes)",
            path.display(),
            png.len()
        );
    }
}

/// The Debian packages the browser cases need that this machine lacks.
fn missing_browser_packages() -> Vec<&'static str> {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/chromium").exists() {
        missing.push("chromium");
    }
    if !Path::new("/usr/bin/chromedriver").exists() {
        missing.push("chromium-driver");
    }
    let selenium = Command::new(PYTHON)
        .args(["-c", "import selenium.webdriver"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !selenium {
        missing.push("python3-selenium");
    }
    missing
}

/// Runs test_console.py against `daemon`: whether it passed, and what it
/// printed. Past [`PYTHON_LIMIT`] it is killed with the browser and driver
/// it started (they share its process group).
fn run_browser_cases(daemon: &Daemon) -> (bool, String) {
    let env = [
        ("ALCOVE_BIN", ALCOVE.to_owned()),
        ("CONSOLE_SCREENSHOTS", SCREENSHOTS.to_owned()),
    ];
    common::sdk::run_python_tests(
        Path::new(SUITE),
        daemon,
        "test_console",
        &env,
        PYTHON_LIMIT,
        || {},
    )
}

/// How many cases test_console.py has: every one must run.
fn case_count() -> usize {
    std::fs::read_to_string(Path::new(SUITE).join("test_console.py"))
        .expect("read test_console.py")
        .lines()
        .filter(|l| l.trim_start().starts_with("def test_"))
        .count()
}

/// N from unittest's "Ran N tests in ...".
fn ran_count(output: &str) -> usize {
    output
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0)
}
