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
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
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
/// printed (stdout and stderr together). Past [`PYTHON_LIMIT`] it is killed
/// with the browser and driver it started (they share its process group).
fn run_browser_cases(daemon: &Daemon) -> (bool, String) {
    let out = tempfile::tempfile().expect("a temp file for the output");
    let mut child = Command::new(PYTHON)
        .args(["-m", "unittest", "-v", "test_console"])
        .current_dir(SUITE)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("PYTHONUNBUFFERED", "1")
        .env("ALCOVE_SERVER", daemon.url())
        .env(
            "ALCOVE_TOKEN",
            daemon.token.as_deref().expect("the daemon's token"),
        )
        .env("ALCOVE_BIN", ALCOVE)
        .env("CONSOLE_SCREENSHOTS", SCREENSHOTS)
        .env_remove("ALCOVE_TOKEN_FILE")
        // Everything the cases talk to is on loopback.
        .env_remove("http_proxy")
        .env_remove("https_proxy")
        .env_remove("HTTP_PROXY")
        .env_remove("HTTPS_PROXY")
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out.try_clone().unwrap())
        .spawn()
        .expect("start python3");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > PYTHON_LIMIT {
            let group = child.id() as i32;
            // SAFETY: kill on the process group of a child this test started
            // and has not reaped, so the group's id is still its own.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut text = String::new();
    let mut out = out;
    out.rewind().unwrap();
    out.read_to_string(&mut text).unwrap();
    if status.is_none() {
        text.push_str(&format!(
            "\n[killed: still running after {PYTHON_LIMIT:?}]\n"
        ));
    }
    (status.is_some_and(|s| s.success()), text)
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
