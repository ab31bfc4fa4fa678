//! The `fer-edge` command line: the service (`run`, `check-config`,
//! `status`) and the tools (`detect`, `eval`, `bench`, `preview`).

use crate::annotate::{draw_faces, save_annotated};
use crate::capture::{still, DEFAULT_MAX_FRAME_PIXELS};
use crate::config::{Config, DEFAULT_CONFIG};
use crate::dataset::{read_dataset, DatasetFormat};
use crate::decode::DecodeOptions;
use crate::detector::{Detector, StageTimings};
use crate::device::Device;
use crate::evaluate::{evaluate, format_report};
use crate::face::Face;
use crate::infer::{set_threads, Model, ModelSource, OpProfile};
use crate::preprocess::{Frame, PixelFormat, Preprocessor};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The frame `bench` times when no `--image` is given.
static BENCH_IMAGE: &[u8] = include_bytes!("../samples/obama.jpg");

#[derive(Parser, Debug)]
#[command(
    name = "fer-edge",
    version = concat!(
        env!("CARGO_PKG_VERSION"),
        " (built-in model fer-yolo-mamba-nano.onnx, sha256 ",
        env!("FER_EDGE_BUILT_IN_MODEL_SHA256"),
        ")"
    ),
    about = "On-device facial-expression detection"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the kiosk service: capture, detect, track and signal until
    /// SIGTERM/SIGINT (or the end of a file source).
    Run(RunArgs),
    /// Check a config file: parse it, name any bad key and its line, check
    /// values and paths (without opening the camera, broker or pins).
    CheckConfig(CheckConfigArgs),
    /// Print the running service's counters (from its status file).
    Status(StatusArgs),
    /// Detect faces and expressions in images; print one JSON line per image.
    Detect(DetectArgs),
    /// Measure accuracy on a labelled dataset: per-expression AP, mAP@0.5 and
    /// expression accuracy; the last line printed is `mAP50 <value>`.
    Eval(EvalArgs),
    /// Time each pipeline stage over repeated frames and print median and p90.
    Bench(BenchArgs),
    /// Aim the camera: detect on a few frames of the configured source and
    /// write them annotated (boxes, expressions, fps) to a directory.
    Preview(PreviewArgs),
}

#[derive(Args, Debug)]
struct ModelArgs {
    /// ONNX model file exported by `training/` (with fer_edge::SelectiveScan
    /// nodes); without it, the model built into the binary.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Worker threads for inference (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to run the network: `auto` takes a CUDA GPU when this build has
    /// the `cuda` feature and one is usable, else the CPU.
    #[arg(long, value_enum, default_value_t = Device::Auto)]
    device: Device,
}

impl ModelArgs {
    fn thread_count(&self) -> usize {
        self.threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
    }

    fn load(&self) -> anyhow::Result<Model> {
        set_threads(self.thread_count());
        let source = ModelSource::from_file(self.model.as_deref());
        Ok(Model::load_on(&source, self.device)?)
    }
}

#[derive(Args, Debug)]
struct ConfigArgs {
    /// The config file; without it, /etc/fer-edge/config.toml if it exists,
    /// else the built-in defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Override a config key, e.g. `--set capture.fps=5` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl ConfigArgs {
    /// The config file named, or the default one if it exists.
    fn path(&self) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()))
    }

    /// The config with the `--set` overrides, then `adjust` (other flags)
    /// applied, checked; and where it came from.
    fn load(&self, adjust: impl Fn(&mut Config)) -> anyhow::Result<(Config, String)> {
        let (mut config, source) = match self.path() {
            Some(path) => (Config::read(&path, &self.overrides)?, path),
            None => {
                let source = PathBuf::from("(built-in defaults)");
                (
                    Config::default().with_overrides(&self.overrides, &source)?,
                    source,
                )
            }
        };
        adjust(&mut config);
        config.check(&source)?;
        Ok((config, source.display().to_string()))
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Overrides `detector.model`.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Overrides `detector.device`.
    #[arg(long, value_enum)]
    device: Option<Device>,
    /// Overrides `detector.threads`.
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct CheckConfigArgs {
    /// The config file to check.
    path: PathBuf,
}

#[derive(Args, Debug)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The status file to read (default: the config's `service.status_file`).
    #[arg(long)]
    file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct DetectArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Write each image with boxes and labels drawn into this directory.
    #[arg(long)]
    annotate: Option<PathBuf>,
    /// Minimum face score to report (default: the model file's own
    /// threshold, else 0.18).
    #[arg(long)]
    confidence: Option<f32>,
    /// IoU above which overlapping boxes are merged into one face.
    #[arg(long, default_value_t = DecodeOptions::default().nms_iou)]
    nms_iou: f32,
    /// Merge overlapping boxes only when they have the same expression (the
    /// YOLO convention; a face may then be reported once per expression).
    #[arg(long)]
    per_class_nms: bool,
    /// Largest image decoded, in pixels (width x height); a larger one is
    /// refused from its header, before any decoding.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_PIXELS)]
    max_pixels: u64,
    /// Images (JPEG or PNG).
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

#[derive(Args, Debug)]
struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The dataset: a lines file (`path x1,y1,x2,y2,class ...`) or a YOLO folder.
    #[arg(long)]
    dataset: PathBuf,
    /// Layout of `--dataset`.
    #[arg(long, value_enum, default_value = "lines")]
    format: DatasetFormat,
    /// Minimum face score kept (low, so the precision/recall curve is complete).
    #[arg(long, default_value_t = 0.01)]
    confidence: f32,
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Frames to time, after warm-up.
    #[arg(long, default_value_t = 30)]
    frames: usize,
    /// Untimed frames run first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// JPEG image used as the frame (decoded as an MJPEG camera frame each
    /// time); without it, a built-in portrait (`samples/obama.jpg`).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Start a frame every this many milliseconds, as the service paced by
    /// `capture.fps` does (0: back to back).
    #[arg(long, default_value_t = 0)]
    pace_ms: u64,
    /// Then time every op of the network over as many more frames, and
    /// print the time per kind of op (tract's op names).
    #[arg(long)]
    profile: bool,
}

#[derive(Args, Debug)]
struct PreviewArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Frames to write.
    #[arg(long, default_value_t = 10)]
    frames: usize,
    /// Directory of the annotated frames (`preview-0001.png`, ...).
    #[arg(long)]
    annotate: PathBuf,
}

/// Runs the command line; returns the process exit code.
pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Run(args) => run_service(args),
        Command::CheckConfig(args) => check_config(args),
        Command::Status(args) => status(args),
        Command::Detect(args) => detect(args),
        Command::Eval(args) => eval(args),
        Command::Bench(args) => bench(args),
        Command::Preview(args) => preview(args),
    }
}

fn run_service(args: RunArgs) -> anyhow::Result<i32> {
    // The flags win over the file, at start and at every reload.
    let flags = |config: &mut Config| {
        let detector = &mut config.detector;
        if let Some(model) = &args.model {
            detector.model = Some(model.clone());
        }
        if let Some(device) = args.device {
            detector.device = device;
        }
        if let Some(threads) = args.threads {
            detector.threads = threads;
        }
    };
    let (config, source) = args.config.load(flags)?;
    log::info!(
        "fer-edge {} starting, config {source}",
        env!("CARGO_PKG_VERSION")
    );
    crate::service::run(config, &|| Ok(args.config.load(flags)?.0))?;
    Ok(0)
}

fn check_config(args: CheckConfigArgs) -> anyhow::Result<i32> {
    let config = Config::load(&args.path, &[])?;
    let sinks: Vec<&str> = [
        (config.log.enabled, "log"),
        (config.mqtt.enabled, "mqtt"),
        (config.gpio.enabled, "gpio"),
    ]
    .iter()
    .filter_map(|&(on, name)| on.then_some(name))
    .collect();
    println!(
        "{}: OK ({}, source {}, sinks: {}, snapshots {})",
        args.path.display(),
        config.detector.model_source(),
        crate::service::source_name(&config.capture),
        if sinks.is_empty() {
            "none".into()
        } else {
            sinks.join(", ")
        },
        if config.snapshot.enabled { "on" } else { "off" }
    );
    Ok(0)
}

fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let file = match args.file {
        Some(file) => file,
        None => args.config.load(|_| {})?.0.service.status_file,
    };
    let status = crate::service::status::read(&file)?;
    println!("{}", serde_json::to_string_pretty(&status)?);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    let age = now - status.updated_at;
    if status.state != "running" {
        eprintln!("fer-edge status: the service has {}", status.state);
        return Ok(1);
    }
    eprintln!("fer-edge status: updated {age:.0} s ago");
    Ok(0)
}

#[derive(Serialize)]
struct ImageResult<'a> {
    image: &'a str,
    faces: &'a [Face],
}

#[derive(Serialize)]
struct ImageFailure<'a> {
    image: &'a str,
    error: String,
}

fn detect(args: DetectArgs) -> anyhow::Result<i32> {
    let model = args.model.load()?;
    let options = DecodeOptions {
        confidence: args
            .confidence
            .unwrap_or(DecodeOptions::for_model(&model).confidence),
        nms_iou: args.nms_iou,
        class_agnostic: !args.per_class_nms,
    };
    let mut detector = Detector::new(model, options);
    let mut failures = 0;
    for path in &args.images {
        let name = path.to_string_lossy();
        match detect_image(
            &mut detector,
            path,
            args.max_pixels,
            args.annotate.as_deref(),
        ) {
            Ok(faces) => println!(
                "{}",
                serde_json::to_string(&ImageResult {
                    image: &name,
                    faces: &faces
                })?
            ),
            Err(e) => {
                failures += 1;
                log::error!("{name}: {e:#}");
                let failure = ImageFailure {
                    image: &name,
                    // One line, as every other line of this JSON stream.
                    error: format!("{e:#}").replace('\n', " "),
                };
                println!("{}", serde_json::to_string(&failure)?);
            }
        }
    }
    Ok(if failures == 0 { 0 } else { 1 })
}

fn detect_image(
    detector: &mut Detector,
    path: &Path,
    max_pixels: u64,
    annotate: Option<&Path>,
) -> anyhow::Result<Vec<Face>> {
    let mut image = still::read_image_file(path, max_pixels)
        .and_then(|bytes| still::decode_image(&bytes, max_pixels))
        .map_err(anyhow::Error::msg)?;
    let faces = detector.detect_rgb(&image)?;
    if let Some(dir) = annotate {
        draw_faces(&mut image, &faces);
        let written = save_annotated(&image, dir, path)?;
        log::info!("wrote {}", written.display());
    }
    Ok(faces)
}

fn eval(args: EvalArgs) -> anyhow::Result<i32> {
    let images = read_dataset(&args.dataset, args.format)?;
    let options = DecodeOptions::for_evaluation(args.confidence);
    let mut detector = Detector::new(args.model.load()?, options);
    let detections = images
        .iter()
        .map(|image| {
            detect_image(&mut detector, &image.path, DEFAULT_MAX_FRAME_PIXELS, None)
                .with_context(|| format!("image {}", image.path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let labels: Vec<_> = images.into_iter().map(|image| image.faces).collect();
    let report = evaluate(&detections, &labels);
    println!(
        "{}, dataset {} ({} images)",
        detector.model().source(),
        args.dataset.display(),
        labels.len()
    );
    println!("{}", format_report(&report, labels.len()));
    Ok(0)
}

fn preview(args: PreviewArgs) -> anyhow::Result<i32> {
    let (config, source) = args.config.load(|_| {})?;
    let mut detector = Detector::from_config(&config.detector)?;
    log::info!(
        "preview of {} (config {source}) into {}",
        crate::service::source_name(&config.capture),
        args.annotate.display()
    );
    for frame in crate::preview::run(&config, &mut detector, args.frames, &args.annotate)? {
        let faces = crate::preview::count_faces(frame.faces);
        println!("{} ({faces})", frame.path.display());
    }
    Ok(0)
}

fn bench(args: BenchArgs) -> anyhow::Result<i32> {
    let jpeg = match &args.image {
        Some(path) => std::fs::read(path)
            .with_context(|| format!("cannot read bench image {}", path.display()))?,
        None => BENCH_IMAGE.to_vec(),
    };
    let model = args.model.load()?;
    let options = DecodeOptions::for_model(&model);
    let mut detector = Detector::new(model, options);
    let frame = Frame {
        format: PixelFormat::Mjpeg,
        width: 0,
        height: 0,
        data: &jpeg,
    };
    for _ in 0..args.warmup {
        detector.detect(&frame)?;
    }
    let pace = std::time::Duration::from_millis(args.pace_ms);
    let mut next_frame = std::time::Instant::now();
    let mut samples: Vec<StageTimings> = Vec::with_capacity(args.frames);
    for _ in 0..args.frames {
        std::thread::sleep(next_frame.saturating_duration_since(std::time::Instant::now()));
        next_frame += pace;
        samples.push(detector.detect_timed(&frame)?.1);
    }
    let (h, w) = detector.model().input_size();
    println!(
        "fer-edge {}, {} ({w}x{h}), {} threads, {} frames after {} warm-up, one every {} ms",
        env!("CARGO_PKG_VERSION"),
        detector.model().source(),
        args.model.thread_count(),
        args.frames,
        args.warmup,
        args.pace_ms
    );
    let isa = tract_linalg::isa::native();
    println!(
        "cpu: {}; scan kernel: {}; direct convolutions: {}; tract ISA: {} ({isa:?})",
        crate::device::cpu_description(),
        crate::scan::kernel::best().name(),
        crate::conv::Kernel::best().map_or("none (tract's)", |k| k.name()),
        isa.nickname()
    );
    println!(
        "{:<12} {:>10} {:>10} {:>10}",
        "stage", "median ms", "p90 ms", "mean ms"
    );
    for (stage, name) in StageTimings::NAMES.iter().enumerate() {
        let mut ms: Vec<f64> = samples
            .iter()
            .map(|s| s.durations()[stage].as_secs_f64() * 1e3)
            .collect();
        ms.sort_by(f64::total_cmp);
        println!(
            "{name:<12} {:>10.2} {:>10.2} {:>10.2}",
            percentile(&ms, 0.5),
            percentile(&ms, 0.9),
            ms.iter().sum::<f64>() / ms.len().max(1) as f64
        );
    }
    if args.profile {
        print_op_profile(detector.model(), &frame, args.frames)?;
    }
    Ok(0)
}

/// The network's time per kind of op over `frames` runs on `frame`, most
/// expensive first.
fn print_op_profile(model: &Model, frame: &Frame, frames: usize) -> anyhow::Result<()> {
    let (height, width) = model.input_size();
    let (input, _) = Preprocessor::new(height, width).run(frame)?;
    let mut profile = OpProfile::default();
    for _ in 0..frames {
        model.run_profiled(input.clone(), &mut profile)?;
    }
    let total: f64 = profile.ops.values().map(|s| s.time.as_secs_f64()).sum();
    let mut ops: Vec<_> = profile.ops.iter().collect();
    ops.sort_by_key(|(_, stats)| std::cmp::Reverse(stats.time));
    let per_frame = frames.max(1) as f64;
    println!(
        "\nnetwork per op, {frames} frames ({:.2} ms a frame in ops):",
        total * 1e3 / per_frame
    );
    println!(
        "{:<24} {:>6} {:>10} {:>7} {:>12}",
        "op", "nodes", "ms/frame", "share", "MB out/frame"
    );
    for (name, stats) in ops {
        println!(
            "{name:<24} {:>6} {:>10.2} {:>6.1}% {:>12.2}",
            stats.calls / frames.max(1),
            stats.time.as_secs_f64() * 1e3 / per_frame,
            100.0 * stats.time.as_secs_f64() / total.max(f64::MIN_POSITIVE),
            stats.output_bytes as f64 / 1e6 / per_frame
        );
    }
    Ok(())
}

/// The `q` quantile of sorted values (nearest rank).
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}
