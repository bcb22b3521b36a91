//! `alcove-accel info` and `bench` as a user runs them. On a host without a
//! GPU (CI) they must report that state cleanly; the GPU comparisons print
//! why they were skipped.

use serde_json::Value;
use std::io::Write as _;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_alcove-accel");

fn json(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(args)
        .output()
        .expect("run alcove-accel");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn info_reports_the_devices_and_a_calibrated_model() {
    let info = json(&["info", "--json"]);
    assert!(info["cpu"]["cores"].as_u64().unwrap() >= 1);
    match info["gpus"]["state"].as_str() {
        Some("absent") => {
            let reason = info["gpus"]["reason"].as_str().unwrap();
            assert!(!reason.is_empty());
            let _ = writeln!(std::io::stderr(), "SKIPPED the GPU half of info: {reason}");
            assert_eq!(
                info["profiles"].as_array().unwrap().len(),
                1,
                "only the CPU is modelled"
            );
        }
        Some("present") => assert_eq!(info["profiles"].as_array().unwrap().len(), 2),
        other => panic!("gpus.state {other:?}"),
    }
    // A measured curve: sizes ascending, every speed a positive number. (Not
    // that speed grows with size: tests run beside each other and a loaded
    // moment can make any point slow.)
    let cpu = &info["profiles"][0];
    assert_eq!(cpu["kind"], "cpu");
    let f32_curve = cpu["speed"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e[0] == "f32")
        .unwrap()[1]
        .as_array()
        .unwrap()
        .clone();
    let points: Vec<(f64, f64)> = f32_curve
        .iter()
        .map(|p| (p["flops"].as_f64().unwrap(), p["gflops"].as_f64().unwrap()))
        .collect();
    assert!(points.len() >= 4, "{points:?}");
    assert!(points.windows(2).all(|w| w[0].0 < w[1].0), "{points:?}");
    assert!(
        points.iter().all(|&(_, g)| g.is_finite() && g > 0.0),
        "{points:?}"
    );
}

#[test]
fn bench_reports_choices_and_regret() {
    let bench = json(&["bench", "--max", "128", "--json"]);
    let rows = bench["rows"].as_array().unwrap();
    assert_eq!(
        rows.iter()
            .map(|r| r["n"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [8, 16, 32, 64, 128]
    );
    for r in rows {
        assert!(r["cpu_ms"].as_f64().unwrap() > 0.0);
        assert!(r["regret"].as_f64().unwrap() >= 1.0);
    }
    if bench["gpus"]["state"] == "absent" {
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED the GPU columns of bench: {}",
            bench["gpus"]["reason"]
        );
        assert!(rows
            .iter()
            .all(|r| r["choice"] == "cpu" && r["gpu_ms"].is_null()));
        assert_eq!(bench["mean_regret"], 1.0);
    }
}

#[test]
fn asking_for_the_gpu_without_one_is_a_clear_error() {
    use alcove_accel::accel::{Accel, Placement};
    use alcove_accel::{DType, Op};
    let accel = Accel::start();
    let op = Op::Matmul {
        m: 2,
        n: 2,
        k: 2,
        dtype: DType::F32,
    };
    let a = alcove_accel::accel::encode(DType::F32, &[1.0, 2.0, 3.0, 4.0]);
    let mut c = vec![0u8; 16];
    let ran = accel.run(&op, Placement::Auto, &a, &a, &mut c).unwrap();
    assert_eq!(
        alcove_accel::accel::decode(DType::F32, &c),
        [7.0, 10.0, 15.0, 22.0]
    );
    if accel.has_gpu() {
        let _ = writeln!(
            std::io::stderr(),
            "(a GPU is present: the no-GPU error is not reachable here)"
        );
        return;
    }
    assert_eq!(ran.device, alcove_accel::DeviceKind::Cpu);
    let err = accel
        .run(&op, Placement::Gpu, &a, &a, &mut c)
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("no GPU: "), "{err}");
    let short = accel
        .run(&op, Placement::Cpu, &a[..8], &a, &mut c)
        .unwrap_err()
        .to_string();
    assert!(short.contains("too short"), "{short}");
}

/// `check-cpu --json` under `env`: its exit status and answer.
fn check_cpu(env: &[(&str, &str)]) -> (bool, Value) {
    let out = Command::new(BIN)
        .args(["check-cpu", "--json"])
        .envs(env.iter().copied())
        .output()
        .expect("run alcove-accel");
    let answer: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    (out.status.success(), answer)
}

fn bf16_path(answer: &Value) -> String {
    answer["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["op"]["Matmul"]["dtype"] == "bf16")
        .map(|c| c["path"].as_str().unwrap().to_owned())
        .unwrap()
}

#[test]
fn every_cpu_path_agrees_with_the_reference_and_so_do_the_forced_fallbacks() {
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let has = |flag: &str| flags.split_whitespace().any(|f| f == flag);
    for (env, expect) in [
        (vec![], "host"),
        // What a CPU with AVX512-BF16 but no AMX runs.
        (vec![("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")], "no-amx"),
        (vec![("ALCOVE_ACCEL_CPU", "portable")], "portable"),
    ] {
        let (ok, answer) = check_cpu(&env);
        let failed: Vec<_> = answer["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["ok"] != true)
            .collect();
        assert!(ok && failed.is_empty(), "{env:?}: {failed:#?}");
        assert!(answer["cases"].as_array().unwrap().len() >= 24);
        let path = bf16_path(&answer);
        let onednn = path.starts_with("oneDNN");
        // Every bf16 product ran where the path says (none declined);
        // products up to 64^3 are widened on the calling thread, cheaper
        // than the hand-over to oneDNN's.
        let bf16_ran: Vec<_> = answer["cases"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| {
                let op = c["op"].as_object().unwrap().values().next().unwrap();
                let dim = |d: &str| op[d].as_u64().unwrap_or(1) as f64;
                let flops = 2.0 * dim("batch") * dim("m") * dim("n") * dim("k");
                let want = if onednn && flops > 2.0 * 64f64.powi(3) {
                    "onednn"
                } else {
                    "widened"
                };
                (op["dtype"] == "bf16").then(|| (c["ran"].as_str().unwrap().to_owned(), want))
            })
            .collect();
        assert!(
            bf16_ran.len() >= 9 && bf16_ran.iter().all(|(ran, want)| ran == want),
            "{env:?}: {bf16_ran:?}"
        );
        if onednn {
            assert!(bf16_ran.iter().filter(|(ran, _)| ran == "onednn").count() >= 5);
        }
        match expect {
            "portable" => assert!(path.starts_with("widened to f32"), "{path}"),
            _ if !onednn => {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED the oneDNN half ({expect}): bf16 runs {path}"
                );
            }
            "host" if has("amx_bf16") => assert!(path.contains("amx"), "{path}"),
            "no-amx" => assert!(
                path.contains("avx512_core_bf16") && !path.contains("amx"),
                "{path}"
            ),
            _ => {}
        }
    }
}

#[test]
fn each_element_type_is_calibrated_on_its_own_path() {
    let info = json(&["info", "--json"]);
    let speed = info["profiles"][0]["speed"].as_array().unwrap();
    let curve = |dtype: &str| {
        speed.iter().find(|e| e[0] == dtype).unwrap()[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["gflops"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let curves: Vec<_> = ["f32", "f64", "f16", "bf16"].map(curve).into();
    // Measured, not copied: no two types' curves are the same numbers.
    for (i, a) in curves.iter().enumerate() {
        for b in &curves[i + 1..] {
            assert_ne!(a, b, "two element types share one speed curve");
        }
    }
    for dtype in ["f32", "f64", "f16", "bf16"] {
        assert!(info["cpu_paths"][dtype]
            .as_str()
            .is_some_and(|p| !p.is_empty()));
    }
}
