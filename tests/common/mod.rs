//! Helpers shared by the integration tests: paths, a minimal `.npy` reader,
//! and running binaries of the build target (under qemu when emulated).
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
use std::process::Command;
use tract_onnx::prelude::Tensor;

/// A path relative to the repository root.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Reads a C-order `.npy` file of little-endian f32 or of u8 (as
/// `numpy.save` writes them).
pub fn read_npy(path: &Path) -> Tensor {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{} is not a .npy file",
        path.display()
    );
    let (header_len, header_start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[header_start..header_start + header_len]).unwrap();
    assert!(
        header.contains("'fortran_order': False"),
        "{}: not C order",
        path.display()
    );
    let shape_text = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let shape: Vec<usize> = shape_text
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let body = &bytes[header_start + header_len..];
    if header.contains("'descr': '|u1'") {
        return Tensor::from_shape(&shape, body).unwrap();
    }
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: not f32 or u8: {header}",
        path.display()
    );
    let data: Vec<f32> = body
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    Tensor::from_shape(&shape, &data).unwrap()
}

/// Flat f32 contents of a tensor.
pub fn values(t: &Tensor) -> Vec<f32> {
    t.try_as_plain_ram()
        .unwrap()
        .as_slice::<f32>()
        .unwrap()
        .to_vec()
}

/// Largest |got - want| / (atol + rtol * |want|) over all elements; <= 1 passes.
pub fn tolerance_ratio(got: &Tensor, want: &Tensor, atol: f32, rtol: f32) -> f32 {
    assert_eq!(got.shape(), want.shape(), "shapes differ");
    values(got)
        .iter()
        .zip(values(want))
        .map(|(g, w)| (g - w).abs() / (atol + rtol * w.abs()))
        .fold(0.0, f32::max)
}

/// True when this test runs under qemu-user (the host kernel's architecture
/// is not the one this binary was built for).
pub fn emulated() -> bool {
    let host_arch = std::fs::read_to_string("/proc/sys/kernel/arch").unwrap_or_default();
    !host_arch.trim().is_empty() && host_arch.trim() != std::env::consts::ARCH
}

/// A command running `exe`, a binary of this build's target: through the
/// cargo runner (qemu) when emulated, since the host may not run it directly.
pub fn command_for(exe: &Path) -> Command {
    if emulated() {
        let runner = std::env::var("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER")
            .unwrap_or_else(|_| "qemu-aarch64 -L /usr/aarch64-linux-gnu".into());
        let mut parts = runner.split_whitespace();
        let mut command = Command::new(parts.next().unwrap());
        command.args(parts).arg(exe);
        command
    } else {
        Command::new(exe)
    }
}

/// Says on the real stderr, past the test harness's output capture (which
/// hides `eprintln!` of passing tests), that a test is skipped and why, so
/// that what was not tested shows in every run.
pub fn skip(why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n**** SKIPPED: {why} ****\n");
}
