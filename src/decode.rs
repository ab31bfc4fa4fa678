//! Decoding: the network's raw output maps -> scored face boxes.
//!
//! Each output level is a `[1, 5 + 7, H, W]` map (box x, y, w, h; objectness
//! logit; 7 class logits). Its stride is the input size divided by the map
//! size, derived from the shapes and never assumed. A cell decodes to
//! centre `(raw + grid) * stride` and size `exp(raw) * stride`; its score for
//! each expression is `sigmoid(obj) * sigmoid(cls)`. Boxes under the
//! confidence threshold are dropped, the rest go through per-class greedy
//! non-maximum suppression.

use crate::face::{Expression, ExpressionScores, Face};
use crate::infer::Model;
use crate::preprocess::Letterbox;
use tract_core::prelude::Tensor;

/// Channels of one output cell: 4 box + 1 objectness + 7 classes.
pub const CELL_CHANNELS: usize = 5 + Expression::COUNT;

/// Thresholds of decoding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeOptions {
    /// Minimum score (objectness x class) of a kept face.
    pub confidence: f32,
    /// IoU above which the lower-scored of two overlapping boxes is dropped.
    pub nms_iou: f32,
    /// Suppress overlapping boxes whatever their expressions (one box per
    /// face, its `scores` holding every expression: what `detect` and the
    /// service report), instead of only boxes of the same expression (the
    /// YOLO convention, which `eval` uses so AP is computed per class).
    pub class_agnostic: bool,
}

impl Default for DecodeOptions {
    /// The options for a model file that does not carry its own threshold
    /// (see [`DecodeOptions::for_model`]). On real colour photos (the 153
    /// scenes of `training`'s `compare`), with class-agnostic NMS, the
    /// shipped model (v19) finds 92.0% of the faces at 93.1% precision at
    /// 0.18 (int8: 92.0% at 92.5%); 0.16 finds as many at 92.0%, 0.2 90.1%
    /// at 94.2%. The threshold was chosen on those photos. See
    /// `models/MODEL_CARD.md`.
    fn default() -> Self {
        DecodeOptions {
            confidence: 0.18,
            nms_iou: 0.45,
            class_agnostic: true,
        }
    }
}

impl DecodeOptions {
    /// The default options with `model`'s own threshold, if its file
    /// carries one.
    pub fn for_model(model: &Model) -> Self {
        let default = DecodeOptions::default();
        DecodeOptions {
            confidence: model.confidence().unwrap_or(default.confidence),
            ..default
        }
    }

    /// The options of `fer-edge eval`: every candidate down to `confidence`
    /// and per-expression NMS, as VOC/COCO-style AP expects.
    pub fn for_evaluation(confidence: f32) -> Self {
        DecodeOptions {
            confidence,
            class_agnostic: false,
            ..DecodeOptions::default()
        }
    }
}

/// A problem with the network outputs.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("output {index} has shape {shape:?}; expected [1, {CELL_CHANNELS}, H, W]")]
    BadShape { index: usize, shape: Vec<usize> },
    #[error("output {index} is {map_h}x{map_w}, which does not divide the {input_h}x{input_w} input into a whole stride")]
    BadStride {
        index: usize,
        map_h: usize,
        map_w: usize,
        input_h: usize,
        input_w: usize,
    },
    #[error("output {index} is not f32: {reason}")]
    NotF32 { index: usize, reason: String },
}

/// Decodes all output levels of one image into faces in source-image pixels,
/// highest score first.
pub fn decode(
    outputs: &[Tensor],
    input_size: (usize, usize),
    letterbox: &Letterbox,
    options: &DecodeOptions,
) -> Result<Vec<Face>, DecodeError> {
    let mut candidates = Vec::new();
    for (index, output) in outputs.iter().enumerate() {
        decode_level(
            index,
            output,
            input_size,
            options.confidence,
            &mut candidates,
        )?;
    }
    let mut faces = non_max_suppression(candidates, options.nms_iou, options.class_agnostic);
    for face in &mut faces {
        face.bbox = letterbox.to_source(face.bbox);
    }
    Ok(faces)
}

/// Checks an output's shape and returns `(map_h, map_w, stride_y, stride_x)`.
pub fn level_geometry(
    index: usize,
    shape: &[usize],
    (input_h, input_w): (usize, usize),
) -> Result<(usize, usize, f32, f32), DecodeError> {
    let [1, CELL_CHANNELS, map_h, map_w] = *shape else {
        return Err(DecodeError::BadShape {
            index,
            shape: shape.to_vec(),
        });
    };
    if map_h == 0 || map_w == 0 || input_h % map_h != 0 || input_w % map_w != 0 {
        return Err(DecodeError::BadStride {
            index,
            map_h,
            map_w,
            input_h,
            input_w,
        });
    }
    Ok((
        map_h,
        map_w,
        (input_h / map_h) as f32,
        (input_w / map_w) as f32,
    ))
}

fn decode_level(
    index: usize,
    output: &Tensor,
    input_size: (usize, usize),
    confidence: f32,
    faces: &mut Vec<Face>,
) -> Result<(), DecodeError> {
    let (map_h, map_w, stride_y, stride_x) = level_geometry(index, output.shape(), input_size)?;
    let not_f32 = |e: anyhow::Error| DecodeError::NotF32 {
        index,
        reason: e.to_string(),
    };
    let plain = output.try_as_plain_ram().map_err(not_f32)?;
    let data = plain.as_slice::<f32>().map_err(not_f32)?;
    let cells = map_h * map_w;
    let channel = |c: usize, cell: usize| data[c * cells + cell];
    for cell in 0..cells {
        let objectness = sigmoid(channel(4, cell));
        // Cheap rejection: no class score can exceed the objectness.
        if objectness < confidence {
            continue;
        }
        let scores = ExpressionScores(std::array::from_fn(|k| {
            objectness * sigmoid(channel(5 + k, cell))
        }));
        let (expression, score) = scores.best();
        if score < confidence {
            continue;
        }
        let (gx, gy) = ((cell % map_w) as f32, (cell / map_w) as f32);
        let cx = (channel(0, cell) + gx) * stride_x;
        let cy = (channel(1, cell) + gy) * stride_y;
        let w = channel(2, cell).exp() * stride_x;
        let h = channel(3, cell).exp() * stride_y;
        let bbox = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        faces.push(Face {
            bbox,
            expression,
            score,
            scores,
        });
    }
    Ok(())
}

/// Greedy per-class NMS: highest score first (ties keep the earlier
/// candidate), dropping boxes of the same expression that overlap a kept one
/// by more than `iou`.
pub fn non_max_suppression(mut candidates: Vec<Face>, iou: f32, class_agnostic: bool) -> Vec<Face> {
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Face> = Vec::new();
    for face in candidates {
        let suppressed = kept.iter().any(|k| {
            (class_agnostic || k.expression == face.expression)
                && Face::iou(&k.bbox, &face.bbox) > iou
        });
        if !suppressed {
            kept.push(face);
        }
    }
    kept
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 1x12x2x2 map (stride 16 at a 32x32 input) with `cells` set to
    /// (cell, raw box, objectness logit, class, class logit); other cells are
    /// strongly negative.
    fn map(cells: &[(usize, [f32; 4], f32, usize, f32)]) -> Tensor {
        let mut data = vec![-20f32; CELL_CHANNELS * 4];
        for &(cell, raw, obj, class, logit) in cells {
            for (c, v) in raw.iter().enumerate() {
                data[c * 4 + cell] = *v;
            }
            data[4 * 4 + cell] = obj;
            data[(5 + class) * 4 + cell] = logit;
        }
        Tensor::from_shape(&[1, CELL_CHANNELS, 2, 2], &data).unwrap()
    }

    const IDENTITY: Letterbox = Letterbox {
        scale: 1.0,
        source_width: 32,
        source_height: 32,
    };

    #[test]
    fn decodes_grid_offsets_and_sizes() {
        // Cell 3 is (gx 1, gy 1); raw offsets 0.5 -> centre (24, 24); exp(0) * 16 = 16.
        let t = map(&[(3, [0.5, 0.5, 0.0, 0.0], 5.0, 3, 5.0)]);
        let faces = decode(&[t], (32, 32), &IDENTITY, &DecodeOptions::default()).unwrap();
        assert_eq!(faces.len(), 1);
        assert_eq!(faces[0].bbox, [16.0, 16.0, 32.0, 32.0]);
        assert_eq!(faces[0].expression, Expression::Happiness);
        let expected = sigmoid(5.0) * sigmoid(5.0);
        assert!((faces[0].score - expected).abs() < 1e-6);
        assert_eq!(faces[0].scores.get(Expression::Happiness), faces[0].score);
    }

    #[test]
    fn nms_is_per_class_for_evaluation_and_per_face_by_default() {
        // Two heavily overlapping boxes of one class and one of another class.
        let t = map(&[
            (0, [0.5, 0.5, 0.0, 0.0], 6.0, 4, 6.0),
            (1, [-0.45, 0.5, 0.0, 0.0], 5.0, 4, 5.0),
            (2, [0.5, -0.5, 0.0, 0.0], 5.0, 6, 5.0),
        ]);
        let labels = |options: &DecodeOptions| -> Vec<_> {
            decode(std::slice::from_ref(&t), (32, 32), &IDENTITY, options)
                .unwrap()
                .iter()
                .map(|f| f.expression)
                .collect()
        };
        let per_class = DecodeOptions::for_evaluation(DecodeOptions::default().confidence);
        assert_eq!(
            labels(&per_class),
            [Expression::Neutral, Expression::Surprise]
        );
        assert_eq!(labels(&DecodeOptions::default()), [Expression::Neutral]);
    }

    #[test]
    fn strides_come_from_shapes() {
        assert_eq!(
            level_geometry(0, &[1, 12, 40, 40], (320, 320)).unwrap(),
            (40, 40, 8.0, 8.0)
        );
        assert_eq!(
            level_geometry(2, &[1, 12, 8, 10], (256, 320)).unwrap(),
            (8, 10, 32.0, 32.0)
        );
        let err = level_geometry(1, &[1, 12, 30, 40], (320, 320)).unwrap_err();
        assert!(err.to_string().contains("whole stride"), "{err}");
        let err = level_geometry(1, &[1, 11, 40, 40], (320, 320)).unwrap_err();
        assert!(err.to_string().contains("expected [1, 12, H, W]"), "{err}");
    }

    #[test]
    fn scores_under_the_default_confidence_are_dropped() {
        // sigmoid(-0.66) * sigmoid(0) = 0.3407 * 0.5 = 0.1704: under the
        // default of 0.18, over 0.16.
        let levels = [map(&[(0, [0.0; 4], -0.66, 0, 0.0)])];
        let defaults = DecodeOptions::default();
        let faces = decode(&levels, (32, 32), &IDENTITY, &defaults).unwrap();
        assert!(faces.is_empty(), "{faces:?}");
        let lower = DecodeOptions {
            confidence: 0.16,
            ..defaults
        };
        let faces = decode(&levels, (32, 32), &IDENTITY, &lower).unwrap();
        assert_eq!(faces.len(), 1);
        assert!((faces[0].score - 0.1704).abs() < 1e-3, "{}", faces[0].score);
    }
}
