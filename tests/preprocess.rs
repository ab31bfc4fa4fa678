//! The Rust letterbox against the one definition in
//! `training/fer_edge_training/preprocess.py`, on real image crops that
//! Python decoded (so JPEG decoder differences stay out of the comparison),
//! and the MJPEG path on frames without Huffman tables.

mod common;

use common::{read_npy, repo, tolerance_ratio};
use fer_edge::preprocess::{Frame, PixelFormat, Preprocessor};

/// Both sides compute in f32 with the same formula; they differ only in the
/// order of a few roundings (normalisation, the scale ratio in f64 on the
/// Python side), so 1e-4 absolute on values of magnitude ~2 is tight.
#[test]
fn letterbox_matches_python_on_golden_crops() {
    let spec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/data/golden/preprocess.json")).unwrap(),
    )
    .unwrap();
    let cases = spec["cases"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let rgb = read_npy(&repo(&format!(
            "tests/data/golden/{}",
            case["rgb"].as_str().unwrap()
        )));
        let want = read_npy(&repo(&format!(
            "tests/data/golden/{}",
            case["output"].as_str().unwrap()
        )));
        let size = case["size"].as_u64().unwrap() as usize;
        let (h, w) = (rgb.shape()[0], rgb.shape()[1]);
        let data = rgb
            .try_as_plain_ram()
            .unwrap()
            .as_slice::<u8>()
            .unwrap()
            .to_vec();
        let frame = Frame {
            format: PixelFormat::Rgb8,
            width: w,
            height: h,
            data: &data,
        };
        let (got, letterbox) = Preprocessor::new(size, size).run(&frame).unwrap();
        let ratio = tolerance_ratio(&got, &want, 1e-4, 0.0);
        assert!(
            ratio <= 1.0,
            "{}: differs from Python, ratio {ratio}",
            case["name"]
        );
        let r = case["r"].as_f64().unwrap() as f32;
        assert!(
            (letterbox.scale - r).abs() < 1e-6,
            "{}: scale",
            case["name"]
        );
    }
}

/// Removes every DHT segment from a baseline JPEG, as many UVC cameras send
/// their MJPEG frames (relying on the standard tables of JPEG Annex K).
fn strip_huffman_tables(jpeg: &[u8]) -> Vec<u8> {
    let mut out = jpeg[..2].to_vec();
    let mut pos = 2;
    loop {
        let marker = jpeg[pos + 1];
        if marker == 0xDA {
            out.extend_from_slice(&jpeg[pos..]);
            return out;
        }
        let len = u16::from_be_bytes([jpeg[pos + 2], jpeg[pos + 3]]) as usize;
        if marker != 0xC4 {
            out.extend_from_slice(&jpeg[pos..pos + 2 + len]);
        }
        pos += 2 + len;
    }
}

#[test]
fn mjpeg_frames_without_huffman_tables_decode_like_complete_ones() {
    // image's JPEG encoder writes the standard Annex K tables, so stripping
    // them gives exactly what a table-less camera would send.
    let source = image::open(repo("samples/obama.jpg")).unwrap().into_rgb8();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode_image(&source)
        .unwrap();
    let stripped = strip_huffman_tables(&jpeg);
    assert!(
        stripped.len() < jpeg.len(),
        "the encoder wrote DHT segments to strip"
    );

    let mut pre = Preprocessor::new(64, 64);
    let mjpeg = |data| Frame {
        format: PixelFormat::Mjpeg,
        width: 0,
        height: 0,
        data,
    };
    let (complete, lb_complete) = pre.run(&mjpeg(&jpeg)).unwrap();
    let (tableless, lb_tableless) = pre.run(&mjpeg(&stripped)).unwrap();
    assert_eq!(lb_complete, lb_tableless);
    assert_eq!(tableless, complete);
    // Cameras may pad a frame with zeros after its end-of-image marker.
    let padded = [&stripped[..], &[0; 64]].concat();
    assert_eq!(pre.run(&mjpeg(&padded)).unwrap().0, complete);
}

#[test]
fn corrupt_mjpeg_frames_are_errors_not_panics() {
    let jpeg = std::fs::read(repo("samples/obama.jpg")).unwrap();
    let mut pre = Preprocessor::new(64, 64);
    for broken in [
        &jpeg[..jpeg.len() / 3],
        &jpeg[100..],
        &b"\xff\xd8\xff"[..],
        &[][..],
    ] {
        let frame = Frame {
            format: PixelFormat::Mjpeg,
            width: 0,
            height: 0,
            data: broken,
        };
        let err = pre
            .run(&frame)
            .expect_err("a broken frame must be rejected");
        assert!(err.to_string().contains("frame"), "{err}");
    }
}
