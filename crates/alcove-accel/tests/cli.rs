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
    // The CPU's achieved speed grows with size (small products reach less of its peak).
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
    let speeds: Vec<f64> = f32_curve
        .iter()
        .map(|p| p["gflops"].as_f64().unwrap())
        .collect();
    assert!(speeds.first() < speeds.last(), "{speeds:?}");
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
