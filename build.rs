//! Build script: the SHA-256 of the model built into the binary, for
//! `fer-edge --version` and the service's log (no hashing at run time).

const BUILT_IN_MODEL: &str = "models/fer-yolo-mamba-nano.onnx";

fn main() {
    println!("cargo:rerun-if-changed={BUILT_IN_MODEL}");
    let bytes = std::fs::read(BUILT_IN_MODEL)
        .unwrap_or_else(|e| panic!("cannot read the built-in model {BUILT_IN_MODEL}: {e}"));
    let digest: String = ring::digest::digest(&ring::digest::SHA256, &bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!("cargo:rustc-env=FER_EDGE_BUILT_IN_MODEL_SHA256={digest}");
}
