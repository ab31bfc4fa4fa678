//! The `fer-edge` binary as a user on a board meets it: one file that
//! carries its model, run from any directory.

mod common;

use common::{command_for, repo};
use fer_edge::infer::BUILT_IN_MODEL_SHA256;
use serde_json::Value;
use std::path::Path;

fn fer_edge() -> std::process::Command {
    command_for(Path::new(env!("CARGO_BIN_EXE_fer-edge")))
}

#[test]
fn version_names_the_built_in_model_and_its_hash() {
    let output = fer_edge().arg("--version").output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let version = String::from_utf8(output.stdout).unwrap();
    assert!(
        version.starts_with(&format!("fer-edge {} ", env!("CARGO_PKG_VERSION")))
            && version.contains("fer-yolo-mamba-nano.onnx")
            && version.contains(BUILT_IN_MODEL_SHA256),
        "{version}"
    );
}

/// Outside the repository there is no `models/`: `detect` runs the model
/// built into the binary and finds the three portraits' faces.
#[test]
fn detect_runs_the_built_in_model_from_any_directory() {
    let elsewhere = std::env::temp_dir();
    assert!(!elsewhere.join("models").exists());
    let output = fer_edge()
        .current_dir(&elsewhere)
        .arg("detect")
        .arg(repo("samples/three_portraits.jpg"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let line: Value = serde_json::from_slice(&output.stdout).unwrap();
    let faces = line["faces"].as_array().unwrap();
    assert_eq!(faces.len(), 3, "{line}");
}

/// A model file that is not there is named once, with its cause once.
#[test]
fn a_missing_model_file_is_named_with_its_cause_once() {
    let output = fer_edge()
        .args(["detect", "--model", "/nonexistent/m.onnx"])
        .arg(repo("samples/obama.jpg"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot read model file /nonexistent/m.onnx"),
        "{stderr}"
    );
    assert_eq!(stderr.matches("No such file").count(), 1, "{stderr}");
}

/// `preview` on a file source: annotated PNGs of the source's size, the
/// first with the smiling face of `samples/sequence` and the caption.
#[test]
fn preview_writes_annotated_frames_of_the_configured_source() {
    if common::emulated() {
        common::skip("preview runs natively only (detect covers the network under qemu)");
        return;
    }
    let dir = std::env::temp_dir().join(format!("fer-edge-preview-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let output = fer_edge()
        .args(["preview", "--frames", "3", "--annotate"])
        .arg(&dir)
        .arg("--set")
        .arg(format!(
            "capture.path=\"{}\"",
            repo("samples/sequence").display()
        ))
        .args([
            "--set",
            "capture.source=image_dir",
            "--set",
            "capture.fps=5.0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(lines[0].ends_with("preview-0001.png (1 face)"), "{stdout}");
    let source = image::open(repo("samples/sequence/frame_000.jpg"))
        .unwrap()
        .into_rgb8();
    for n in 1..=3 {
        let written = image::open(dir.join(format!("preview-{n:04}.png")))
            .unwrap()
            .into_rgb8();
        assert_eq!(written.dimensions(), source.dimensions());
        // The caption: white text on black in the top-left corner.
        let corner = (0..16).flat_map(|y| (0..60).map(move |x| (x, y)));
        let black = corner.filter(|&(x, y)| written.get_pixel(x, y).0 == [0, 0, 0]);
        assert!(black.count() > 300, "no caption on frame {n}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A camera that is not there: `preview` gives up with the source named.
#[test]
fn preview_of_a_missing_camera_names_it() {
    if common::emulated() {
        common::skip("preview runs natively only");
        return;
    }
    let dir = std::env::temp_dir().join(format!("fer-edge-nocam-{}", std::process::id()));
    let output = fer_edge()
        .args(["preview", "--frames", "1", "--annotate"])
        .arg(&dir)
        .args(["--set", "capture.device=/dev/video-fer-edge-missing"])
        .args(["--set", "capture.frame_timeout_ms=100"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no frame from camera /dev/video-fer-edge-missing"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench --profile` accounts for the network op by op: the scan op and
/// tract's matrix products are there, and the shares add up to the whole.
/// `--pace-ms` spaces the frames out as the service does.
#[test]
fn bench_profiles_the_network_per_op_and_paces_frames() {
    let started = std::time::Instant::now();
    let output = fer_edge()
        .args(["bench", "--threads", "1", "--frames", "3", "--warmup", "1"])
        .args(["--pace-ms", "400", "--profile"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // three frames, each started 400 ms after the one before
    assert!(started.elapsed() >= std::time::Duration::from_millis(800));
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(stdout.contains("one every 400 ms"), "{stdout}");
    let profile = stdout.split("network per op").nth(1).expect(&stdout);
    let shares: Vec<(&str, f64)> = profile
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let share = fields.get(3)?.strip_suffix('%')?.parse().ok()?;
            Some((fields[0], share))
        })
        .collect();
    let names: Vec<&str> = shares.iter().map(|(name, _)| *name).collect();
    assert!(
        names.iter().any(|name| name.starts_with("SelectiveScan")) && names.contains(&"OptMatMul"),
        "{stdout}"
    );
    let total: f64 = shares.iter().map(|(_, share)| share).sum();
    assert!(
        (total - 100.0).abs() < 0.5,
        "shares add up to {total}: {stdout}"
    );
}
