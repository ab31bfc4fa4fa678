//! The detection pipeline for one frame: preprocess -> infer -> decode, with
//! per-stage timings for `fer-edge bench`.

use crate::config::DetectorConfig;
use crate::decode::{decode, DecodeError, DecodeOptions};
use crate::face::Face;
use crate::infer::{set_threads, Model, ModelError};
use crate::preprocess::{Frame, PixelFormat, PreprocessError, Preprocessor};
use std::time::{Duration, Instant};

/// Any failure while detecting faces in one frame.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Wall time spent in each stage for one frame.
#[derive(Clone, Copy, Debug, Default)]
pub struct StageTimings {
    pub preprocess: Duration,
    pub infer: Duration,
    pub decode: Duration,
}

impl StageTimings {
    /// Names of the values of [`StageTimings::durations`].
    pub const NAMES: [&'static str; 4] = ["preprocess", "infer", "decode", "total"];

    /// Each stage, then their sum.
    pub fn durations(&self) -> [Duration; 4] {
        let total = self.preprocess + self.infer + self.decode;
        [self.preprocess, self.infer, self.decode, total]
    }
}

/// A loaded model with its preprocessing and decoding settings.
#[derive(Debug)]
pub struct Detector {
    model: Model,
    preprocessor: Preprocessor,
    options: DecodeOptions,
}

impl Detector {
    pub fn new(model: Model, options: DecodeOptions) -> Self {
        let (height, width) = model.input_size();
        Detector {
            model,
            preprocessor: Preprocessor::new(height, width),
            options,
        }
    }

    /// Loads the `[detector]` table's model on its threads and device (and
    /// logs which model it is).
    pub fn from_config(config: &DetectorConfig) -> Result<Self, ModelError> {
        set_threads(config.thread_count());
        let source = config.model_source();
        let model = Model::load_on(&source, config.device)?;
        let (height, width) = model.input_size();
        let options = config.decode_options(&model);
        let threshold = match (config.confidence, model.confidence()) {
            (Some(_), _) => "the config's",
            (None, Some(_)) => "the model's own",
            (None, None) => "the default",
        };
        log::info!(
            "{source} (sha256 {}, {width}x{height} input), device {:?}, {} threads, \
             faces from score {} ({threshold})",
            model.sha256(),
            config.device,
            config.thread_count(),
            options.confidence,
        );
        Ok(Detector::new(model, options))
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Faces in `frame`, highest score first.
    pub fn detect(&mut self, frame: &Frame) -> Result<Vec<Face>, DetectError> {
        self.detect_timed(frame).map(|(faces, _)| faces)
    }

    /// Faces in a decoded RGB image (a photo, a dataset image).
    pub fn detect_rgb(&mut self, image: &image::RgbImage) -> Result<Vec<Face>, DetectError> {
        self.detect(&Frame {
            format: PixelFormat::Rgb8,
            width: image.width() as usize,
            height: image.height() as usize,
            data: image.as_raw(),
        })
    }

    /// Faces in `frame` and the time each stage took.
    pub fn detect_timed(
        &mut self,
        frame: &Frame,
    ) -> Result<(Vec<Face>, StageTimings), DetectError> {
        let start = Instant::now();
        let (input, letterbox) = self.preprocessor.run(frame)?;
        let preprocessed = Instant::now();
        let outputs = self.model.run(input)?;
        let inferred = Instant::now();
        let faces = decode(&outputs, self.model.input_size(), &letterbox, &self.options)?;
        let timings = StageTimings {
            preprocess: preprocessed - start,
            infer: inferred - preprocessed,
            decode: inferred.elapsed(),
        };
        Ok((faces, timings))
    }
}
