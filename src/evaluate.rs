//! Accuracy of detections against labelled faces: per-class AP and mAP at IoU
//! 0.5 (VOC all-point), and expression accuracy on matched faces. The same
//! definitions as `training/fer_edge_training/evaluate.py`:
//!
//! * AP of an expression: its detections over all images by score, descending;
//!   a detection is a true positive when its best-IoU face of that expression
//!   in its image has IoU >= 0.5 and is not matched yet. AP is the area under
//!   the precision envelope over the recall steps; mAP is the mean over the
//!   expressions that have labelled faces.
//! * Each labelled face is matched to the highest-scoring detection of any
//!   expression with IoU >= 0.5; accuracy = right expressions / matched faces,
//!   recall = matched faces / faces.

use crate::face::{Expression, Face};

/// IoU at which a detection counts as finding a face.
pub const IOU_THRESHOLD: f32 = 0.5;

/// One labelled face.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledFace {
    pub bbox: [f32; 4],
    pub expression: Expression,
}

/// Accuracy figures over a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// AP per expression (`None`: no labelled face of it).
    pub ap: [Option<f64>; Expression::COUNT],
    /// Labelled faces per expression.
    pub faces: [usize; Expression::COUNT],
    pub matched: usize,
    pub correct: usize,
    /// `confusion[labelled][detected]` over matched faces.
    pub confusion: [[usize; Expression::COUNT]; Expression::COUNT],
}

impl Report {
    pub fn map50(&self) -> f64 {
        let values: Vec<f64> = self.ap.iter().flatten().copied().collect();
        if values.is_empty() {
            0.0
        } else {
            values.iter().sum::<f64>() / values.len() as f64
        }
    }

    pub fn accuracy(&self) -> f64 {
        ratio(self.correct, self.matched)
    }

    pub fn recall(&self) -> f64 {
        ratio(self.matched, self.faces.iter().sum())
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// VOC all-point AP of a precision/recall curve given in detection order.
pub fn average_precision(recall: &[f64], precision: &[f64]) -> f64 {
    let mut r = vec![0.0];
    r.extend_from_slice(recall);
    r.push(1.0);
    let mut p = vec![0.0];
    p.extend_from_slice(precision);
    p.push(0.0);
    for i in (0..p.len() - 1).rev() {
        p[i] = p[i].max(p[i + 1]);
    }
    (0..r.len() - 1)
        .filter(|&i| r[i + 1] != r[i])
        .map(|i| (r[i + 1] - r[i]) * p[i + 1])
        .sum()
}

/// Evaluates `detections[i]` against `labels[i]` for every image i.
pub fn evaluate(detections: &[Vec<Face>], labels: &[Vec<LabelledFace>]) -> Report {
    assert_eq!(
        detections.len(),
        labels.len(),
        "one detection list per image"
    );
    let mut ap = [None; Expression::COUNT];
    let mut faces = [0; Expression::COUNT];
    for expression in Expression::ALL {
        let c = expression.index();
        let truth: Vec<Vec<[f32; 4]>> = labels
            .iter()
            .map(|l| {
                l.iter()
                    .filter(|f| f.expression == expression)
                    .map(|f| f.bbox)
                    .collect()
            })
            .collect();
        faces[c] = truth.iter().map(Vec::len).sum();
        if faces[c] == 0 {
            continue;
        }
        let mut found: Vec<(f32, usize, [f32; 4])> = detections
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                d.iter()
                    .filter(|f| f.expression == expression)
                    .map(move |f| (f.score, i, f.bbox))
            })
            .collect();
        found.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut used: Vec<Vec<bool>> = truth.iter().map(|t| vec![false; t.len()]).collect();
        let (mut hits, mut recall, mut precision) = (0usize, vec![], vec![]);
        for (rank, (_, image, bbox)) in found.iter().enumerate() {
            let best = truth[*image]
                .iter()
                .enumerate()
                .map(|(j, t)| (j, Face::iou(bbox, t)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            if let Some((j, iou)) = best {
                if iou >= IOU_THRESHOLD && !used[*image][j] {
                    used[*image][j] = true;
                    hits += 1;
                }
            }
            recall.push(hits as f64 / faces[c] as f64);
            precision.push(hits as f64 / (rank + 1) as f64);
        }
        ap[c] = Some(average_precision(&recall, &precision));
    }
    let mut report = Report {
        ap,
        faces,
        matched: 0,
        correct: 0,
        confusion: [[0; Expression::COUNT]; Expression::COUNT],
    };
    for (found, truth) in detections.iter().zip(labels) {
        for face in truth {
            let best = found
                .iter()
                .filter(|f| Face::iou(&f.bbox, &face.bbox) >= IOU_THRESHOLD)
                .max_by(|a, b| a.score.total_cmp(&b.score));
            if let Some(f) = best {
                report.matched += 1;
                report.correct += usize::from(f.expression == face.expression);
                report.confusion[face.expression.index()][f.expression.index()] += 1;
            }
        }
    }
    report
}

/// The report as a table; the last line is `mAP50 <value>`.
pub fn format_report(report: &Report, images: usize) -> String {
    let mut out = format!("{:<10} {:>6} {:>8}\n", "expression", "faces", "AP50");
    for expression in Expression::ALL {
        let c = expression.index();
        let ap = report.ap[c].map_or("-".to_string(), |a| format!("{a:.4}"));
        out += &format!(
            "{:<10} {:>6} {:>8}\n",
            expression.name(),
            report.faces[c],
            ap
        );
    }
    out += &format!(
        "images {images}, faces {}, matched {} (recall {:.4}), expression accuracy {:.4}\n",
        report.faces.iter().sum::<usize>(),
        report.matched,
        report.recall(),
        report.accuracy()
    );
    out += "confusion (rows: labelled, columns: detected, order as above)\n";
    for row in &report.confusion {
        let cells: Vec<String> = row.iter().map(|n| format!("{n:>5}")).collect();
        out += &format!("{}\n", cells.join(""));
    }
    out += &format!("mAP50 {:.4}", report.map50());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::face::ExpressionScores;

    fn face(bbox: [f32; 4], expression: Expression, score: f32) -> Face {
        Face {
            bbox,
            expression,
            score,
            scores: ExpressionScores([0.0; Expression::COUNT]),
        }
    }

    fn label(bbox: [f32; 4], expression: Expression) -> LabelledFace {
        LabelledFace { bbox, expression }
    }

    #[test]
    fn all_point_average_precision() {
        let ap = average_precision(&[0.5, 0.5, 1.0], &[1.0, 0.5, 2.0 / 3.0]);
        assert!((ap - (0.5 + 0.5 * 2.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn perfect_and_imperfect_detections() {
        use Expression::*;
        let truth = vec![vec![
            label([0.0, 0.0, 10.0, 10.0], Anger),
            label([20.0, 20.0, 40.0, 40.0], Disgust),
        ]];
        let perfect = vec![vec![
            face([0.0, 0.0, 10.0, 10.0], Anger, 0.9),
            face([20.0, 20.0, 40.0, 40.0], Disgust, 0.8),
        ]];
        let report = evaluate(&perfect, &truth);
        assert_eq!(report.map50(), 1.0);
        assert_eq!((report.accuracy(), report.recall()), (1.0, 1.0));
        assert_eq!(report.ap[Fear.index()], None);

        let found = vec![vec![
            face([0.0, 0.0, 10.0, 10.0], Anger, 0.9),
            face([21.0, 21.0, 40.0, 40.0], Anger, 0.6),
            face([50.0, 50.0, 60.0, 60.0], Anger, 0.95),
        ]];
        let report = evaluate(&found, &truth);
        assert!((report.ap[Anger.index()].unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(report.ap[Disgust.index()], Some(0.0));
        assert_eq!((report.matched, report.correct), (2, 1));
        assert_eq!(report.confusion[Disgust.index()][Anger.index()], 1);
        let table = format_report(&report, 1);
        assert!(table.ends_with("mAP50 0.2500"), "{table}");
    }
}
