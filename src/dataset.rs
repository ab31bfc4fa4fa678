//! Labelled image sets for `fer-edge eval`, in the formats the training code
//! reads too (`training/fer_edge_training/datasets.py`):
//!
//! * `lines`: the paper's annotation file, one image a line,
//!   `path x1,y1,x2,y2,class ...` (pixels; class index in model order; paths
//!   relative to the file); `#` starts a comment line.
//! * `yolo`: a folder with `images/<name>.<ext>` and `labels/<name>.txt`
//!   holding `class cx cy w h` lines normalised to the image size (no label
//!   file: an image without faces).

use crate::evaluate::LabelledFace;
use crate::face::Expression;
use std::path::{Path, PathBuf};

/// The dataset layouts `fer-edge eval` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DatasetFormat {
    Lines,
    Yolo,
}

/// A problem reading a dataset; names the file and line.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("cannot read the size of image {path}: {message}")]
    Image { path: PathBuf, message: String },
}

/// One image and its labelled faces.
#[derive(Clone, Debug, PartialEq)]
pub struct LabelledImage {
    pub path: PathBuf,
    pub faces: Vec<LabelledFace>,
}

/// Reads a dataset in `format` at `path` (the lines file, or the YOLO folder).
pub fn read_dataset(
    path: &Path,
    format: DatasetFormat,
) -> Result<Vec<LabelledImage>, DatasetError> {
    match format {
        DatasetFormat::Lines => read_lines(path),
        DatasetFormat::Yolo => read_yolo(path),
    }
}

fn read_text(path: &Path) -> Result<String, DatasetError> {
    std::fs::read_to_string(path).map_err(|source| DatasetError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn expression(class: &str) -> Option<Expression> {
    class.parse::<usize>().ok().and_then(Expression::from_index)
}

/// The paper's `path x1,y1,x2,y2,class ...` lines.
pub fn read_lines(file: &Path) -> Result<Vec<LabelledImage>, DatasetError> {
    let base = file.parent().unwrap_or(Path::new("."));
    let mut images = Vec::new();
    for (number, line) in read_text(file)?.lines().enumerate() {
        let mut parts = line.split_whitespace();
        let Some(name) = parts.next().filter(|p| !p.starts_with('#')) else {
            continue;
        };
        let faces = parts
            .map(|item| {
                parse_box(item).ok_or_else(|| DatasetError::Syntax {
                    path: file.to_path_buf(),
                    line: number + 1,
                    message: format!(
                        "bad box {item:?} (want x1,y1,x2,y2,class with x2>x1, y2>y1, class 0-{})",
                        Expression::COUNT - 1
                    ),
                })
            })
            .collect::<Result<_, _>>()?;
        images.push(LabelledImage {
            path: base.join(name),
            faces,
        });
    }
    Ok(images)
}

fn parse_box(item: &str) -> Option<LabelledFace> {
    let fields: Vec<&str> = item.split(',').collect();
    let [x1, y1, x2, y2, class] = fields[..] else {
        return None;
    };
    let coords: Vec<f32> = [x1, y1, x2, y2]
        .iter()
        .map(|v| v.parse::<f32>().ok().filter(|v| v.is_finite()))
        .collect::<Option<_>>()?;
    let bbox = [coords[0], coords[1], coords[2], coords[3]];
    (bbox[2] > bbox[0] && bbox[3] > bbox[1]).then_some(())?;
    Some(LabelledFace {
        bbox,
        expression: expression(class)?,
    })
}

/// A YOLO-txt folder (`images/`, `labels/`).
pub fn read_yolo(root: &Path) -> Result<Vec<LabelledImage>, DatasetError> {
    let image_dir = root.join("images");
    let mut paths = Vec::new();
    collect_images(&image_dir, &mut paths)?;
    paths.sort();
    let mut images = Vec::new();
    for path in paths {
        let relative = path.strip_prefix(&image_dir).unwrap_or(&path);
        let label_file = root.join("labels").join(relative).with_extension("txt");
        let mut faces = Vec::new();
        if label_file.exists() {
            let (width, height) =
                image::image_dimensions(&path).map_err(|e| DatasetError::Image {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            for (number, line) in read_text(&label_file)?.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                let face = parse_yolo(line, width as f32, height as f32).ok_or_else(|| {
                    DatasetError::Syntax {
                        path: label_file.clone(),
                        line: number + 1,
                        message: format!(
                            "expected 'class cx cy w h' with class 0-{}: {line:?}",
                            Expression::COUNT - 1
                        ),
                    }
                })?;
                faces.push(face);
            }
        }
        images.push(LabelledImage { path, faces });
    }
    Ok(images)
}

fn parse_yolo(line: &str, width: f32, height: f32) -> Option<LabelledFace> {
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [class, rest @ ..] = &parts[..] else {
        return None;
    };
    let values: Vec<f32> = rest.iter().map(|v| v.parse().ok()).collect::<Option<_>>()?;
    let [cx, cy, w, h] = values[..] else {
        return None;
    };
    Some(LabelledFace {
        bbox: [
            (cx - w / 2.0) * width,
            (cy - h / 2.0) * height,
            (cx + w / 2.0) * width,
            (cy + h / 2.0) * height,
        ],
        expression: expression(class)?,
    })
}

fn collect_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let entries = std::fs::read_dir(dir).map_err(|source| DatasetError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries {
        let path = entry
            .map_err(|source| DatasetError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .path();
        if path.is_dir() {
            collect_images(&path, out)?;
        } else if matches!(
            path.extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("jpg" | "jpeg" | "png" | "bmp" | "webp")
        ) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fer-edge-dataset-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn paper_lines() {
        let dir = temp_dir("lines");
        let file = dir.join("test.txt");
        std::fs::write(
            &file,
            "img/a.jpg 1,2,30,40,3 10,10,20,20,0\n# note\nimg/b.jpg\n",
        )
        .unwrap();
        let images = read_lines(&file).unwrap();
        assert_eq!(images.len(), 2);
        assert_eq!(images[0].path, dir.join("img/a.jpg"));
        assert_eq!(
            images[0].faces,
            vec![
                LabelledFace {
                    bbox: [1.0, 2.0, 30.0, 40.0],
                    expression: Expression::Happiness
                },
                LabelledFace {
                    bbox: [10.0, 10.0, 20.0, 20.0],
                    expression: Expression::Anger
                },
            ]
        );
        assert!(images[1].faces.is_empty());
        for bad in [
            "a.jpg 1,2,30,40",
            "a.jpg 1,2,30,40,7",
            "a.jpg 30,2,1,40,1",
            "a.jpg x,2,30,40,1",
        ] {
            std::fs::write(&file, format!("ok.jpg\n{bad}\n")).unwrap();
            let err = read_lines(&file).unwrap_err().to_string();
            assert!(err.contains("test.txt:2: bad box"), "{err}");
        }
    }

    #[test]
    fn yolo_folder() {
        let dir = temp_dir("yolo");
        std::fs::create_dir_all(dir.join("images")).unwrap();
        std::fs::create_dir_all(dir.join("labels")).unwrap();
        for name in ["f1.png", "f2.png"] {
            image::RgbImage::new(100, 50)
                .save(dir.join("images").join(name))
                .unwrap();
        }
        std::fs::write(dir.join("labels/f1.txt"), "3 0.5 0.5 0.2 0.4\n").unwrap();
        let images = read_yolo(&dir).unwrap();
        assert_eq!(images.len(), 2);
        let bbox = images[0].faces[0].bbox;
        for (got, want) in bbox.iter().zip([40.0, 15.0, 60.0, 35.0]) {
            assert!((got - want).abs() < 1e-4, "{bbox:?}");
        }
        assert_eq!(images[0].faces[0].expression, Expression::Happiness);
        assert!(images[1].faces.is_empty());
        std::fs::write(dir.join("labels/f2.txt"), "9 0.5 0.5 0.1 0.1\n").unwrap();
        let err = read_yolo(&dir).unwrap_err().to_string();
        assert!(
            err.contains("f2.txt:1: expected 'class cx cy w h'"),
            "{err}"
        );
        let err = read_dataset(&dir.join("missing"), DatasetFormat::Yolo)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read") && err.contains("missing/images"),
            "{err}"
        );
    }
}
