//! The shipped model on a real colour photo with several faces
//! (`samples/three_portraits.jpg`: three public-domain portraits side by side,
//! see `samples/README.md`), through the same path as `fer-edge detect` with
//! its default options: every face is found, with a box that overlaps the
//! face's MTCNN box (IoU >= 0.5, the boxes the model was trained to draw), and
//! nothing else is reported. Runs for the f32 and the int8 model.

mod common;

use common::repo;
use fer_edge::decode::DecodeOptions;
use fer_edge::detector::Detector;
use fer_edge::face::Face;
use fer_edge::infer::Model;

/// MTCNN's boxes (`training/fer_edge_training/mtcnn.py`) of the three faces,
/// left to right: Barack Obama, Eileen Collins, Joe Biden.
const FACES: [[f32; 4]; 3] = [
    [116.0, 25.9, 194.6, 134.4],
    [416.1, 44.4, 474.0, 122.2],
    [716.9, 30.3, 763.6, 92.4],
];

fn detect(stem: &str) -> Vec<Face> {
    let model = Model::load(&repo(&format!("models/{stem}.onnx"))).unwrap();
    let mut detector = Detector::new(model, DecodeOptions::default());
    let photo = image::open(repo("samples/three_portraits.jpg"))
        .unwrap()
        .into_rgb8();
    detector.detect_rgb(&photo).unwrap()
}

fn finds_every_face_and_nothing_else(stem: &str) {
    let found = detect(stem);
    for face in &found {
        println!(
            "{stem}: {:?} {} {:.2}",
            face.bbox,
            face.expression.name(),
            face.score
        );
    }
    for (i, want) in FACES.iter().enumerate() {
        let best = found
            .iter()
            .map(|f| Face::iou(&f.bbox, want))
            .fold(0.0, f32::max);
        assert!(
            best >= 0.5,
            "{stem}: face {i} {want:?} not found (best IoU {best:.2})"
        );
    }
    assert_eq!(found.len(), FACES.len(), "{stem}: extra boxes: {found:?}");
}

#[test]
fn f32_model_finds_the_three_faces_of_a_colour_photo() {
    finds_every_face_and_nothing_else("fer-yolo-mamba-nano");
}

#[test]
fn int8_model_finds_the_three_faces_of_a_colour_photo() {
    finds_every_face_and_nothing_else("fer-yolo-mamba-nano-int8");
}
