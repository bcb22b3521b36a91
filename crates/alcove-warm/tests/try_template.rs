//! Scratch end-to-end check of a template with the Python runtime.

use alcove_sandbox::{Bind, NoObserver, RunOptions, SandboxSpec, Stdio};
use alcove_warm::{Budget, Template, TemplateSpec};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[test]
fn python_template_serves_a_request() {
    let code = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/hello-warm-python");
    let mut spec = SandboxSpec::new(vec![
        "python3".into(),
        "/run/alcove/runtime/alcove_runtime.py".into(),
        "main.py".into(),
    ]);
    spec.binds.push(Bind {
        source: code.canonicalize().unwrap(),
        target: "/code".into(),
        writable: false,
        device: false,
    });
    spec.workdir = "/code".into();
    spec.limits.memory_bytes = Some(256 << 20);
    spec.limits.timeout = Some(Duration::from_secs(10));
    let template = Template::start(
        TemplateSpec {
            name: "try".into(),
            sandbox: spec.clone(),
            init_timeout: Duration::from_secs(20),
            max_ready: 4,
            idle: Duration::from_secs(60),
        },
        Arc::new(Budget::new(1 << 30)),
    )
    .unwrap_or_else(|e| panic!("{}", alcove_sandbox::error_chain(&e)));
    for i in 0..5 {
        let mut req = spec.clone();
        req.stdio = Stdio::Capture {
            stdin: format!("world {i}").into_bytes(),
        };
        let t = std::time::Instant::now();
        let outcome = template
            .run(&req, &RunOptions::default(), &mut NoObserver)
            .unwrap_or_else(|e| panic!("{}", alcove_sandbox::error_chain(&e)));
        eprintln!(
            "{:?} {:?} out={:?} err={:?} warm={:?} took {:?}",
            outcome.status,
            outcome.exit_code,
            String::from_utf8_lossy(&outcome.stdout),
            String::from_utf8_lossy(&outcome.stderr),
            outcome.warm,
            t.elapsed()
        );
    }
}
