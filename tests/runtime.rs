//! The exported network in tract against PyTorch: golden outputs, golden
//! boxes, the scan ops (contract versions 1 and 2) against their standard
//! `Scan` twin, and clear errors for broken model files and inputs.
//!
//! Golden files come from `training/` (see training/README.md for the
//! command that writes them); tolerances are stated where they are used.

mod common;

use common::{read_npy, repo, tolerance_ratio, values};
use fer_edge::config::DetectorConfig;
use fer_edge::decode::{decode, DecodeOptions};
use fer_edge::device::Device;
use fer_edge::infer::{
    Model, ModelError, ModelSource, BUILT_IN_MODEL_SHA256, CONFIDENCE_METADATA_KEY,
};
use fer_edge::preprocess::Letterbox;
use fer_edge::scan::op::{SelectiveScan, SelectiveScan2D};
use std::path::Path;
use tract_onnx::prelude::*;

const MODEL: &str = "models/fer-yolo-mamba-nano.onnx";

fn run_onnx(path: &Path, input: Tensor) -> Vec<Tensor> {
    let model = fer_edge::infer::onnx()
        .model_for_path(path)
        .unwrap()
        .into_optimized()
        .unwrap()
        .into_runnable()
        .unwrap();
    model
        .run(tvec!(input.into()))
        .unwrap()
        .into_iter()
        .map(|t| t.into_tensor())
        .collect()
}

/// f32 tract vs f32 PyTorch on a whole network differ by summation order in
/// convolutions, matmuls and the scan, and the randomly initialised network
/// amplifies rounding: onnxruntime on the same graph (Scan twin) is up to
/// 1.4e-4 absolute / 0.7 x (1e-4 + 1e-3 |x|) away from PyTorch on this input.
/// The tolerance is 5e-4 absolute plus 2e-3 relative, a few times that; the
/// measured worst ratio is printed.
#[test]
fn full_network_matches_pytorch_golden_outputs() {
    let model = Model::load(&repo(MODEL)).unwrap();
    let outputs = model
        .run(read_npy(&repo("tests/data/golden/input.npy")))
        .unwrap();
    assert_eq!(outputs.len(), 3);
    for (level, got) in outputs.iter().enumerate() {
        let want = read_npy(&repo(&format!("tests/data/golden/level{level}.npy")));
        let ratio = tolerance_ratio(got, &want, 5e-4, 2e-3);
        println!(
            "level {level} {:?}: worst error / tolerance = {ratio:.3}",
            got.shape()
        );
        assert!(
            ratio <= 1.0,
            "level {level} differs from PyTorch: ratio {ratio}"
        );
    }
}

/// tract's own convolutions against fer-edge's direct ops on the shipped
/// model: on every CPU its 4 depthwise 3x3 convolutions and 3 max pools;
/// where a direct kernel exists, also all 27 dense 3x3 convolutions (the 9
/// at stride 1 over rows of 28 pixels or more by the row-pixel tiling, the
/// 12 narrower ones and the 6 at stride 2 by the output-channel tiling) and
/// 63 pointwise products (47 channel-first
/// 1x1 convolutions and `x_proj`s, 5 of them, the C2f blocks' last, reading
/// the parts of their `Concat`, which tract would have split into 12
/// products; 8 token-major `in_proj` and `out_proj` halves, 8 products
/// from tokens into channel-first maps; the head's 1x1s with 1, 4 and 7
/// outputs stay tract's), and the `Silu` after 62 of these and the
/// depthwise convolutions folded in,
/// and the outputs move by no more than
/// summation order does (the tolerance is 1e-5 absolute plus 1e-4 relative;
/// the worst error measured is printed).
#[test]
fn direct_convolutions_replace_the_dense_3x3s_and_keep_the_outputs() {
    use fer_edge::conv::{declutter, use_direct_convolutions, Kernel, Replaced};
    let mut typed = fer_edge::infer::onnx()
        .model_for_path(repo(MODEL))
        .unwrap()
        .into_typed()
        .unwrap();
    declutter(&mut typed).unwrap();
    let mut direct = typed.clone();
    // The depthwise convolutions and max pools are portable code, taken on
    // every CPU; the rest only where a direct kernel exists.
    let everywhere = Replaced {
        depthwise: 4,
        max_pool: 3,
        ..Replaced::default()
    };
    let (want, kernel) = match Kernel::best() {
        Some(kernel) => (
            Replaced {
                conv3x3: 27,
                pointwise: 63,
                silu: 62,
                ..everywhere
            },
            kernel.name(),
        ),
        None => (everywhere, "no direct convolution kernel"),
    };
    assert_eq!(
        use_direct_convolutions(&mut direct).unwrap(),
        want,
        "{kernel}"
    );
    let run = |model: TypedModel| {
        let plan = model.into_optimized().unwrap().into_runnable().unwrap();
        let input = read_npy(&repo("tests/data/golden/input.npy"));
        let outputs = plan.run(tvec!(input.into())).unwrap();
        outputs
            .into_iter()
            .map(|t| t.into_tensor())
            .collect::<Vec<_>>()
    };
    for (level, (got, want)) in run(direct).iter().zip(&run(typed)).enumerate() {
        let ratio = tolerance_ratio(got, want, 1e-5, 1e-4);
        println!("level {level}: worst error / tolerance = {ratio:.3}");
        assert!(ratio <= 1.0, "level {level}: ratio {ratio}");
    }
}

#[test]
fn decoding_gives_the_golden_boxes() {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("tests/data/golden/detections.json")).unwrap(),
    )
    .unwrap();
    let model = Model::load(&repo(MODEL)).unwrap();
    let outputs = model
        .run(read_npy(&repo("tests/data/golden/input.npy")))
        .unwrap();
    let image = image::open(repo(golden["image"].as_str().unwrap())).unwrap();
    let size = golden["size"].as_f64().unwrap() as f32;
    let scale = (size / image.width() as f32).min(size / image.height() as f32);
    let letterbox = Letterbox {
        scale,
        source_width: image.width() as usize,
        source_height: image.height() as usize,
    };
    let options = DecodeOptions {
        confidence: golden["conf"].as_f64().unwrap() as f32,
        nms_iou: golden["iou"].as_f64().unwrap() as f32,
        class_agnostic: false,
    };
    let faces = decode(&outputs, model.input_size(), &letterbox, &options).unwrap();
    let want = golden["detections"].as_array().unwrap();
    assert!(!want.is_empty(), "golden file has no detections to compare");
    assert_eq!(faces.len(), want.len(), "number of boxes");
    for (face, want) in faces.iter().zip(want) {
        let want_box: Vec<f32> = want["box"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        for (g, w) in face.bbox.iter().zip(&want_box) {
            assert!(
                (g - w).abs() < 0.5,
                "box {:?} vs golden {want_box:?}",
                face.bbox
            );
        }
        assert_eq!(
            face.expression.index() as u64,
            want["label"].as_u64().unwrap()
        );
        assert!((face.score - want["score"].as_f64().unwrap() as f32).abs() < 1e-3);
    }
}

#[test]
fn scan_op_survives_optimisation_once_per_ss2d_call() {
    let optimized = fer_edge::infer::onnx()
        .model_for_path(repo(MODEL))
        .unwrap()
        .into_optimized()
        .unwrap();
    let scans = optimized
        .nodes()
        .iter()
        .filter(|n| n.op_is::<SelectiveScan>() || n.op_is::<SelectiveScan2D>())
        .count();
    assert_eq!(
        scans, 4,
        "the network has 4 SS2D blocks, each one scan node"
    );
}

/// The custom ops (one FER-YOLO-VSS block exported in contract version 3,
/// `SelectiveScan2D` with the dt projection inside, in version 2, and in
/// version 1, `SelectiveScan` between Gathers) and
/// the standard ONNX `Scan` formulation are the same maths run by different
/// code in tract; they agree to f32 rounding (1e-5 abs + 1e-4 rel), and all
/// agree with PyTorch.
#[test]
fn scan_ops_of_every_contract_version_match_their_scan_twin_and_pytorch() {
    let input = read_npy(&repo("tests/data/vss_block/vss_block_input.npy"));
    let want = read_npy(&repo("tests/data/vss_block/vss_block_output.npy"));
    let twin = run_onnx(
        &repo("tests/data/vss_block/vss_block_scan.onnx"),
        input.clone(),
    );
    for file in ["vss_block_v3.onnx", "vss_block.onnx", "vss_block_v1.onnx"] {
        let custom = run_onnx(
            &repo(&format!("tests/data/vss_block/{file}")),
            input.clone(),
        );
        let twin_ratio = tolerance_ratio(&custom[0], &twin[0], 1e-5, 1e-4);
        assert!(twin_ratio <= 1.0, "{file} vs Scan twin: ratio {twin_ratio}");
        let torch_ratio = tolerance_ratio(&custom[0], &want, 1e-5, 1e-4);
        assert!(torch_ratio <= 1.0, "{file} vs PyTorch: ratio {torch_ratio}");
    }
    assert!(
        values(&want).iter().any(|v| v.abs() > 1e-3),
        "golden output is not trivially zero"
    );
}

/// The version 2 block has one `SelectiveScan2D` and no Gather left after
/// tract's optimisation: the cross-scan is inside the op.
#[test]
fn a_version_2_block_scans_without_gathers() {
    let optimized = fer_edge::infer::onnx()
        .model_for_path(repo("tests/data/vss_block/vss_block.onnx"))
        .unwrap()
        .into_optimized()
        .unwrap();
    let count = |name: &str| {
        optimized
            .nodes()
            .iter()
            .filter(|n| n.op().name() == name)
            .count()
    };
    assert_eq!(count("SelectiveScan2D"), 1);
    assert_eq!(count("SelectiveScan") + count("Gather"), 0);
}

/// The version 3 block computes its dt projection inside `SelectiveScan2D`:
/// after tract's optimisation it has fewer matrix-product nodes than the
/// version 2 block of the same weights.
#[test]
fn a_version_3_block_has_no_dt_projection_product() {
    let products = |file: &str| {
        let optimized = fer_edge::infer::onnx()
            .model_for_path(repo(&format!("tests/data/vss_block/{file}")))
            .unwrap()
            .into_optimized()
            .unwrap();
        let nodes = optimized.nodes().iter();
        nodes.filter(|n| n.op().name().contains("MatMul")).count()
    };
    let (v2, v3) = (products("vss_block.onnx"), products("vss_block_v3.onnx"));
    assert!(v2 > 0, "the block's projections are matrix products");
    // tract writes a product as a packing node and a kernel node
    assert!(
        v3 < v2,
        "matrix product nodes: version 2 {v2}, version 3 {v3}"
    );
}

/// Writes `bytes` to a fresh model file in this test process's temporary
/// folder and returns its path.
fn model_file(bytes: &[u8]) -> std::path::PathBuf {
    static FILES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!("fer-edge-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("model-{n}.onnx"));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn load_error(bytes: &[u8]) -> String {
    let path = model_file(bytes);
    let err = Model::load(&path).expect_err("loading must fail");
    std::fs::remove_file(&path).unwrap();
    err.to_string()
}

#[test]
fn corrupt_and_truncated_files_give_a_clear_error() {
    let err = load_error(b"this is not an onnx file at all \x00\xff\x13");
    assert!(err.contains("not a valid ONNX model"), "{err}");
    let real = std::fs::read(repo("tests/data/vss_block/vss_block.onnx")).unwrap();
    let err = load_error(&real[..real.len() / 2]);
    assert!(err.contains("not a valid ONNX model"), "{err}");
    let missing =
        anyhow::Error::from(Model::load(Path::new("/nonexistent/model.onnx")).unwrap_err());
    let missing = format!("{missing:#}");
    assert!(
        missing.contains("cannot read model file /nonexistent/model.onnx"),
        "{missing}"
    );
    assert_eq!(
        missing.matches("os error 2").count(),
        1,
        "cause repeated: {missing}"
    );
}

/// The model inside the binary is `models/`'s: the same bytes (build.rs's
/// hash against the loader's hash of the file) and the same network.
#[test]
fn the_built_in_model_is_the_shipped_file() {
    let built_in = Model::load_on(&ModelSource::BuiltIn, Device::Cpu).unwrap();
    let file = Model::load(&repo(MODEL)).unwrap();
    assert_eq!(file.sha256(), BUILT_IN_MODEL_SHA256);
    assert_eq!(built_in.sha256(), BUILT_IN_MODEL_SHA256);
    assert_eq!(built_in.input_shape(), file.input_shape());
    let input = read_npy(&repo("tests/data/golden/input.npy"));
    let (a, b) = (
        built_in.run(input.clone()).unwrap(),
        file.run(input).unwrap(),
    );
    assert_eq!(a, b, "the built-in network computes what the file's does");
    assert_eq!(
        built_in.source().to_string(),
        "built-in model fer-yolo-mamba-nano.onnx"
    );
}

/// The ONNX file `file` (under the repository), its model rewritten by
/// `edit`.
fn edited_model(file: &str, edit: impl FnOnce(&mut tract_onnx::pb::ModelProto)) -> Vec<u8> {
    use prost::Message;
    let bytes = std::fs::read(repo(file)).unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
    edit(&mut proto);
    proto.encode_to_vec()
}

/// The ONNX file `file` (under the repository) with its
/// [`CONFIDENCE_METADATA_KEY`] entry set to `value`.
fn with_confidence_metadata(file: &str, value: &str) -> Vec<u8> {
    edited_model(file, |proto| {
        proto
            .metadata_props
            .push(tract_onnx::pb::StringStringEntryProto {
                key: CONFIDENCE_METADATA_KEY.into(),
                value: value.into(),
            })
    })
}

/// A model file's own score threshold is what its detections are cut at,
/// unless the config sets one; a model without it gets the built-in
/// model's 0.18; a threshold outside (0, 1] is refused, naming the key.
#[test]
fn a_model_file_carries_its_own_confidence_which_a_config_overrides() {
    let built_in = Model::load_on(&ModelSource::BuiltIn, Device::Cpu).unwrap();
    assert_eq!(built_in.confidence(), None);
    let config = DetectorConfig::default();
    assert_eq!(config.decode_options(&built_in).confidence, 0.18);

    let path = model_file(&with_confidence_metadata(
        "models/fer-yolo-mamba-nano.onnx",
        "0.3",
    ));
    let model = Model::load(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(model.confidence(), Some(0.3));
    assert_eq!(config.decode_options(&model).confidence, 0.3);
    assert_eq!(DecodeOptions::for_model(&model).confidence, 0.3);
    let chosen = DetectorConfig {
        confidence: Some(0.25),
        ..DetectorConfig::default()
    };
    assert_eq!(chosen.decode_options(&model).confidence, 0.25);

    for bad in ["high", "0", "1.5", ""] {
        let err = load_error(&with_confidence_metadata(
            "tests/data/vss_block/vss_block.onnx",
            bad,
        ));
        assert!(
            err.contains("does not keep fer-edge's model contract")
                && err.contains(&format!("{CONFIDENCE_METADATA_KEY} is `{bad}`"))
                && err.contains("(0, 1]"),
            "{bad}: {err}"
        );
    }
}

/// Rewrites the scan nodes of a block model (`vss_block.onnx`, version 2,
/// or `vss_block_v1.onnx`) with `edit`.
fn edited_block_model(file: &str, edit: impl Fn(&mut tract_onnx::pb::NodeProto)) -> Vec<u8> {
    edited_model(&format!("tests/data/vss_block/{file}"), |proto| {
        let graph = proto.graph.as_mut().unwrap();
        graph
            .node
            .iter_mut()
            .filter(|n| n.op_type.starts_with("SelectiveScan"))
            .for_each(edit)
    })
}

#[test]
fn a_model_whose_op_is_missing_or_foreign_gives_a_clear_error() {
    for file in ["vss_block_v3.onnx", "vss_block.onnx", "vss_block_v1.onnx"] {
        let err = load_error(&edited_block_model(file, |n| {
            n.op_type = "SelectiveScan3D".into()
        }));
        assert!(
            err.contains("does not implement") && err.contains("SelectiveScan3D"),
            "{file}: {err}"
        );
        let err = load_error(&edited_block_model(file, |n| {
            n.domain = "com.example".into()
        }));
        assert!(err.contains("domain `com.example`"), "{file}: {err}");
    }
}

/// A block model (`tests/data/vss_block/{file}`) whose `fer_edge` import
/// says `version`, its nodes unchanged.
fn importing_version(file: &str, version: i64) -> Vec<u8> {
    edited_model(&format!("tests/data/vss_block/{file}"), |proto| {
        let imports = proto.opset_import.iter_mut();
        imports
            .filter(|o| o.domain == "fer_edge")
            .for_each(|o| o.version = version)
    })
}

/// A model of a newer op contract, or with a scan input of the wrong shape,
/// is named as such in one line: not as a corrupt file, not in tract's dump
/// of every fact of the node.
#[test]
fn a_model_that_breaks_the_op_contract_says_how_in_one_line() {
    let err = load_error(&importing_version("vss_block.onnx", 4));
    assert!(
        err.contains("does not keep fer-edge's model contract")
            && err.contains("ops are version 4")
            && err.contains("implements versions 1 to 3"),
        "{err}"
    );
    assert!(!err.contains("corrupt") && !err.contains("Some("), "{err}");

    // D wired to A ([KD, N]) instead of a [KD] vector, in every version.
    for (file, op, d, a) in [
        ("vss_block_v3.onnx", "SelectiveScan2D", 6, 3),
        ("vss_block.onnx", "SelectiveScan2D", 5, 2),
        ("vss_block_v1.onnx", "SelectiveScan", 5, 2),
    ] {
        let err = load_error(&edited_block_model(file, |n| {
            n.input[d] = n.input[a].clone()
        }));
        assert!(
            err.contains(&format!("{op} input `D` has rank 2")) && err.contains("expected rank 1"),
            "{err}"
        );
        assert!(
            err.len() < 300 && !err.contains('\n'),
            "{} bytes: {err}",
            err.len()
        );
    }

    // version 2's 7-input form in a model that imports version 3
    let err = load_error(&importing_version("vss_block.onnx", 3));
    assert!(
        err.contains("of contract version 3 takes 8 inputs (u, dt_low, dt_weight, A, Bs, Cs")
            && err.contains("got 7"),
        "{err}"
    );

    // a version 2 op in a model that imports version 1
    let err = load_error(&importing_version("vss_block.onnx", 1));
    assert!(
        err.contains("`SelectiveScan2D` is an op of contract version 2")
            && err.contains("imports `fer_edge` version 1"),
        "{err}"
    );
}

#[test]
fn wrong_input_size_gives_a_clear_error() {
    let model = Model::load(&repo(MODEL)).unwrap();
    let err = model
        .run(Tensor::zero::<f32>(&[1, 3, 256, 256]).unwrap())
        .unwrap_err();
    assert!(matches!(err, ModelError::InputShape { .. }), "{err}");
    assert!(err.to_string().contains("[1, 3, 256, 256]"), "{err}");
}
