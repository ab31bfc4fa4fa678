//! Helpers shared by the integration tests: paths and a minimal `.npy` reader.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::{Path, PathBuf};
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
