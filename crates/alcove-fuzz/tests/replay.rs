//! CI's short fuzz run, on the stable toolchain: every saved input of every
//! target (`fuzz/corpus/<target>/`, and `fuzz/crashes/<target>/`, which
//! keeps what fuzzing found as tests), then seeded mutations of the corpus.
//! A panic in a target is a failure naming the input; `scripts/fuzz.sh`
//! runs libFuzzer over the same targets for as long as it is given.
//!
//! `ALCOVE_FUZZ_MUTATIONS` sets the mutations per target (default 4000).

use alcove_fuzz::{mutate::Mutator, Target, TARGETS};
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

const FUZZ_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz");

/// The files of `fuzz/<kind>/<target>/`, by name.
fn saved(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(FUZZ_DIR).join(kind).join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.path(),
                std::fs::read(e.path()).expect("read a saved input"),
            )
        })
        .collect();
    files.sort();
    files
}

/// Runs `target` on `input`; the panic's message if it panicked.
fn panics(target: Target, input: &[u8]) -> Option<String> {
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| target(input)));
    let payload = result.err()?;
    Some(
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned()),
    )
}

#[test]
fn every_target_has_a_seed_corpus() {
    for (name, _) in TARGETS {
        assert!(
            !saved("corpus", name).is_empty(),
            "fuzz/corpus/{name}/ is empty: cargo test -p alcove-fuzz -- --ignored write_seed_corpus"
        );
        assert!(
            Path::new(FUZZ_DIR)
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no fuzz/fuzz_targets/{name}.rs for libFuzzer"
        );
    }
}

/// The image seeds import cleanly, so the harness fills digests in right
/// and mutations of them reach the parsers past the digest checks.
#[test]
fn the_image_seeds_import() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let ci = std::env::var("ALCOVE_CI").is_ok_and(|v| v == "1")
            || std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "the_image_seeds_import needs root (layers keep their owners), which CI has"
        );
        eprintln!("SKIPPED the_image_seeds_import: needs root (layers keep their owners)");
        return;
    }
    let mut archives: Vec<(String, Vec<u8>)> = Vec::new();
    for (file, bytes) in saved("corpus", "image_archive") {
        archives.push((file.display().to_string(), bytes));
    }
    for (file, bytes) in saved("corpus", "image_oci") {
        let archive = alcove_fuzz::oci_archive(&alcove_fuzz::OciParts::split(&bytes));
        archives.push((file.display().to_string(), archive));
    }
    for (file, bytes) in saved("corpus", "image_layer") {
        let archive = alcove_fuzz::docker_archive(&alcove_fuzz::fix_tar_checksums(&bytes));
        archives.push((file.display().to_string(), archive));
    }
    for (name, archive) in archives.iter().filter(|(n, _)| n.contains("/seed-")) {
        if let Err(e) = alcove_fuzz::import_archive(archive) {
            panic!("{name} does not import: {e}");
        }
    }
}

/// Every saved corpus and crash input; the failures.
fn replay_saved() -> Vec<String> {
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        for (path, input) in saved("corpus", name)
            .into_iter()
            .chain(saved("crashes", name))
        {
            if let Some(message) = panics(*target, &input) {
                failures.push(format!("{}: {message}", path.display()));
            }
        }
    }
    failures
}

/// Seeded mutations of each target's corpus; the failures, each input
/// saved for reproduction.
fn mutate_corpus() -> Vec<String> {
    let per_target: usize = std::env::var("ALCOVE_FUZZ_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(4000);
    let findings = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings");
    let mut failures = Vec::new();
    for (i, (name, target)) in TARGETS.iter().enumerate() {
        let corpus: Vec<Vec<u8>> = saved("corpus", name).into_iter().map(|(_, b)| b).collect();
        let mut mutator = Mutator::new(0x5eed_0000 + i as u64);
        for n in 0..per_target {
            let input = mutator.mutate(&corpus[n % corpus.len()], &corpus);
            if let Some(message) = panics(*target, &input) {
                let dir = findings.join(name);
                std::fs::create_dir_all(&dir).expect("a findings directory");
                let path = dir.join(format!("mutation-{n}"));
                std::fs::write(&path, &input).expect("save the finding");
                failures.push(format!(
                    "{name}: {message} (input saved to {})",
                    path.display()
                ));
            }
        }
    }
    failures
}

/// One test, so the scratch engine the targets share is removed after the
/// last of them (a static is never dropped).
#[test]
fn saved_inputs_crashes_and_seeded_mutations_pass() {
    let saved = replay_saved();
    let mutated = mutate_corpus();
    alcove_fuzz::remove_scratch();
    assert!(
        saved.is_empty() && mutated.is_empty(),
        "{} saved inputs panic:\n{}\n{} mutated inputs panic (saved; copy them to fuzz/crashes/<target>/):\n{}",
        saved.len(),
        saved.join("\n"),
        mutated.len(),
        mutated.join("\n")
    );
}

/// Writes the seeds of `alcove_fuzz::seeds` to `fuzz/corpus/<target>/`.
#[test]
#[ignore = "regenerates fuzz/corpus/*/seed-*; run by hand"]
fn write_seed_corpus() {
    for (name, _) in TARGETS {
        let dir = Path::new(FUZZ_DIR).join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (file, bytes) in alcove_fuzz::seeds::seeds(name) {
            std::fs::write(dir.join(file), bytes).unwrap();
        }
    }
}
