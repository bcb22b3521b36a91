//! Functions with the accelerator: a Python handler (stdlib client) asks
//! the service for products through shared memory; placement is enforced;
//! the service dies with the daemon.

mod common;
use common::daemon::Daemon;
use common::*;
use std::time::Duration;

const CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../clients/python/alcove_accel.py"
);

const HANDLER: &str = r#"
import json, struct, sys
import alcove_accel
req = json.load(sys.stdin)
acc = alcove_accel.connect()
try:
    c = acc.matmul(req["a"], req["b"], req["m"], req["n"], req["k"])
except alcove_accel.AccelError as e:
    print(f"accelerator: {e}", file=sys.stderr)
    sys.exit(3)
device = acc.last["device"]
r = acc.relu([-1.0, 2.0])
# A result over many pages (the client must write each: tmpfs counts
# pages only fallocated as holes), and every element type.
big = acc.matmul([1.0] * 10000, [0.5] * 10000, 100, 100, 100)
big_path = acc.last.get("path")
# Up to 64x64x64, f32 and f64 stay in this process when numpy is here.
small = acc.matmul([2.0] * 16, [0.5] * 16, 4, 4, 4)
small_local = acc.last.get("local", False)
try:
    import numpy
    has_numpy = True
except ImportError:
    has_numpy = False
# numpy arrays of the dtype and shape asked take matmul's shortcut; the
# others the long way, with the same answers as before it.
shortcut = None
if has_numpy:
    x = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
    y = numpy.ones((4, 2), dtype=numpy.float32)
    exact = acc.matmul(x, y, 3, 2, 4)
    flat = acc.matmul(x.ravel(), y.ravel(), 3, 2, 4)  # values read row-major, as the service would
    view = acc.matmul(x.T.copy().T, y, 3, 2, 4)  # not contiguous: still its logical values
    x64 = acc.matmul(x.astype(numpy.float64), y.astype(numpy.float64), 3, 2, 4, dtype="f64")
    try:
        acc.matmul(x.astype(numpy.float64), y, 3, 2, 4)  # f64 values named f32
        wrong_kind = "accepted"
    except alcove_accel.AccelError as e:
        wrong_kind = str(e)
    try:
        acc.matmul(x, y, 2, 2, 4)  # 12 values where 8 are asked for
        wrong_size = "accepted"
    except alcove_accel.AccelError as e:
        wrong_size = str(e)
    local = acc.last.get("local", False)
    # What a caller does to acc.last stays its own (the next call's is fresh).
    acc.last["local"] = "changed by the caller"
    acc.matmul(x, y, 3, 2, 4)
    shortcut = {"exact": exact.tolist(), "flat": flat.tolist(), "view": view.tolist(),
                "f64": x64.tolist(), "local": local, "last_again": acc.last["local"],
                "wrong_kind": wrong_kind, "wrong_size": wrong_size}
f64 = acc.matmul([1.5, 2.0], [2.0, 4.0], 1, 1, 2, dtype="f64")
eye = [1, 0, 0, 1]
bf16 = alcove_accel.bf16_decode(acc.matmul(
    alcove_accel.bf16_encode([1, 2, 3, 4]), alcove_accel.bf16_encode(eye), 2, 2, 2, dtype="bf16"))
f16 = struct.unpack("4e", acc.matmul([1, 2, 3, 4], eye, 2, 2, 2, dtype="f16"))
json.dump({"c": list(c), "device": device, "relu": list(r), "placement": acc.info()["placement"],
           "big": [min(big), max(big), len(big)], "big_path": big_path, "f64": list(f64), "bf16": bf16,
           "f16": list(f16), "small": list(small), "small_local": small_local,
           "numpy": has_numpy, "shortcut": shortcut}, sys.stdout)
"#;

#[test]
fn python_functions_use_the_accelerator_through_shared_memory() {
    if !root_or_skip("python_functions_use_the_accelerator_through_shared_memory") {
        return;
    }
    let accel_bin = std::path::Path::new(ALCOVE).with_file_name("alcove-accel");
    if !accel_bin.exists() {
        skip_unprovided(
            "python_functions_use_the_accelerator_through_shared_memory",
            &format!(
                "{} is not built (cargo test --workspace builds it)",
                accel_bin.display()
            ),
        );
        return;
    }
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let code = dir.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::copy(CLIENT, code.join("alcove_accel.py")).unwrap();
    std::fs::write(code.join("main.py"), HANDLER).unwrap();
    let mut d = Daemon::start(&dir.path().join("data"), &[]);
    let code_dir = code.to_str().unwrap();
    let gpu_nodes = std::fs::read_dir("/dev")
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("nvidia"));
    for (name, placement) in [("mm", "auto"), ("mmgpu", "gpu")] {
        let (rc, _, err) = d.cli(&[
            "deploy",
            name,
            "--handler",
            "python3 /fn/main.py",
            "--code",
            code_dir,
            "--accel",
            placement,
        ]);
        if placement == "gpu" && !gpu_nodes {
            // Refused at deploy on a machine without a GPU, not at each invoke.
            assert_eq!(rc, 125, "{err}");
            assert!(
                err.contains("has no GPU") && err.contains("--accel auto"),
                "{err}"
            );
            continue;
        }
        assert_eq!(rc, 0, "{err}");
    }
    let (rc, _, err) = d.cli(&["deploy", "bad", "--handler", "true", "--accel", "tpu"]);
    assert_eq!(rc, 125);
    assert!(err.contains("accel \"tpu\""), "{err}");

    let request = r#"{"m": 2, "n": 2, "k": 3, "a": [1, 2, 3, 4, 5, 6], "b": [1, 0, 0, 1, 1, 1]}"#;
    let (rc, out, err) = d.cli(&["invoke", "mm", "--data", request]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["c"], serde_json::json!([4.0, 5.0, 10.0, 11.0]));
    assert_eq!(v["relu"], serde_json::json!([0.0, 2.0]));
    assert_eq!(v["big"], serde_json::json!([50.0, 50.0, 10000]));
    assert_eq!(
        v["big_path"], "portable",
        "a 100^3 product goes to the service"
    );
    assert_eq!(v["small"], serde_json::json!(vec![4.0; 16]));
    assert_eq!(
        v["small_local"], v["numpy"],
        "small work stays in the function exactly when numpy is there"
    );
    if v["numpy"] == true {
        let rows = serde_json::json!([[6.0, 6.0], [22.0, 22.0], [38.0, 38.0]]);
        let s = &v["shortcut"];
        for way in ["exact", "flat", "view", "f64"] {
            assert_eq!(s[way], rows, "{way}: {s}");
        }
        assert_eq!(s["local"], true, "{s}");
        assert_eq!(
            s["last_again"], true,
            "a caller's change to acc.last outlived it: {s}"
        );
        assert!(s["wrong_kind"].as_str().unwrap().contains("float64"), "{s}");
        assert!(s["wrong_size"].as_str().unwrap().contains("bytes"), "{s}");
    } else {
        assert!(
            std::env::var("ALCOVE_CI").as_deref() != Ok("1"),
            "python3-numpy is missing: scripts/test.sh installs it"
        );
        skip_machine(
            "the in-function path for small products",
            "no numpy for the handler's python3",
        );
    }
    assert_eq!(v["f64"], serde_json::json!([11.0]));
    assert_eq!(v["bf16"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(v["f16"], serde_json::json!([1.0, 2.0, 3.0, 4.0]));
    assert_eq!(v["placement"], "auto");
    let gpu_present = v["device"] == "gpu";
    if !gpu_present {
        assert_eq!(v["device"], "cpu");
        if gpu_nodes {
            // Device nodes but no usable GPU (no driver library, say).
            let (rc, _, err) = d.cli(&["invoke", "mmgpu", "--data", request]);
            assert_eq!(rc, 1);
            assert!(err.contains("accelerator: no GPU"), "{err}");
        }
        skip_machine(
            "the GPU placement run",
            "no GPU here (the gpu-placed function was refused, as it must be)",
        );
    }

    // The service is one process per daemon and goes when the daemon goes.
    let service = format!("{} serve", accel_bin.display());
    assert_eq!(processes_with(&service).len(), 1, "one service");
    d.kill9();
    wait_until(
        "the service is gone with the daemon",
        Duration::from_secs(10),
        || processes_with(&service).is_empty(),
    );
}
