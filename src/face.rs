//! The typed result of detection: a face box with its expression.

use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// The 7 expressions, in the model's class order (MODEL.md, the SFEW list).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expression {
    Anger,
    Disgust,
    Fear,
    Happiness,
    Neutral,
    Sadness,
    Surprise,
}

impl Expression {
    /// Number of expression classes the model predicts.
    pub const COUNT: usize = 7;

    /// All expressions in class-index order.
    pub const ALL: [Expression; Self::COUNT] = [
        Expression::Anger,
        Expression::Disgust,
        Expression::Fear,
        Expression::Happiness,
        Expression::Neutral,
        Expression::Sadness,
        Expression::Surprise,
    ];

    /// The expression of class index `index`, if it is one.
    pub fn from_index(index: usize) -> Option<Expression> {
        Self::ALL.get(index).copied()
    }

    /// The class index of this expression.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, as used in JSON output and config files.
    pub fn name(self) -> &'static str {
        match self {
            Expression::Anger => "anger",
            Expression::Disgust => "disgust",
            Expression::Fear => "fear",
            Expression::Happiness => "happiness",
            Expression::Neutral => "neutral",
            Expression::Sadness => "sadness",
            Expression::Surprise => "surprise",
        }
    }
}

impl std::fmt::Display for Expression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-expression scores, serialised as a map from expression name to score.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct ExpressionScores(pub [f32; Expression::COUNT]);

impl ExpressionScores {
    /// The expression with the highest score and that score.
    pub fn best(&self) -> (Expression, f32) {
        let (index, score) =
            self.0
                .iter()
                .copied()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, s)| {
                    if s > best.1 {
                        (i, s)
                    } else {
                        best
                    }
                });
        (Expression::ALL[index], score)
    }

    /// Score of one expression.
    pub fn get(&self, expression: Expression) -> f32 {
        self.0[expression.index()]
    }
}

impl Serialize for ExpressionScores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(Expression::COUNT))?;
        for expression in Expression::ALL {
            map.serialize_entry(expression.name(), &self.get(expression))?;
        }
        map.end()
    }
}

/// One detected face, in the pixel coordinates of the original image.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Face {
    /// `[x1, y1, x2, y2]`: top-left and bottom-right corners.
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    /// The most likely expression.
    pub expression: Expression,
    /// Detection confidence of this box with its expression:
    /// `sigmoid(objectness) * sigmoid(class logit)`, the maximum of `scores`.
    pub score: f32,
    /// The same confidence for each of the 7 expressions.
    pub scores: ExpressionScores,
}

impl Face {
    /// Intersection over union of two `[x1, y1, x2, y2]` boxes.
    pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
        let inter_w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
        let inter_h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
        let inter = inter_w * inter_h;
        let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
        let union = area(a) + area(b) - inter;
        if union > 0.0 {
            inter / union
        } else {
            0.0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_the_documented_json() {
        let mut scores = [0.01; 7];
        scores[3] = 0.9;
        let face = Face {
            bbox: [1.0, 2.0, 30.0, 40.0],
            expression: Expression::Happiness,
            score: 0.9,
            scores: ExpressionScores(scores),
        };
        let json = serde_json::to_value(&face).unwrap();
        assert_eq!(json["box"], serde_json::json!([1.0, 2.0, 30.0, 40.0]));
        assert_eq!(json["expression"], "happiness");
        let names: Vec<&str> = json["scores"]
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        assert_eq!(names.len(), 7);
        assert!(names.contains(&"surprise") && names.contains(&"anger"));
        assert!((json["scores"]["happiness"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    }

    #[test]
    fn class_indices_follow_model_order() {
        assert_eq!(Expression::from_index(0), Some(Expression::Anger));
        assert_eq!(Expression::from_index(6), Some(Expression::Surprise));
        assert_eq!(Expression::from_index(7), None);
        for e in Expression::ALL {
            assert_eq!(Expression::from_index(e.index()), Some(e));
        }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert_eq!(Face::iou(&a, &a), 1.0);
        assert_eq!(Face::iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        let half = Face::iou(&a, &[5.0, 0.0, 15.0, 10.0]);
        assert!((half - 50.0 / 150.0).abs() < 1e-6);
    }
}
