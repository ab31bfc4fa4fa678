//! onnxruntime's peer of `fer-edge bench` for scripts/arm-insn-count.sh:
//! loads libonnxruntime at run time, runs an ONNX model on one fixed input
//! (a float32 .npy file) `--warmup` times untimed, then `--frames` times, on
//! `--threads` intra-op threads, and prints the median ms a frame.
//!
//!   ort-peer --lib libonnxruntime.so.1 --model M.onnx --input X.npy \
//!       [--frames 30] [--warmup 3] [--threads 1]

use std::time::Instant;

use ort::session::Session;
use ort::value::Tensor;

struct Args {
    lib: String,
    model: String,
    input: String,
    frames: usize,
    warmup: usize,
    threads: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        lib: String::new(),
        model: String::new(),
        input: String::new(),
        frames: 30,
        warmup: 3,
        threads: 1,
    };
    let mut words = std::env::args().skip(1);
    while let Some(flag) = words.next() {
        let value = words.next().ok_or(format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse()
                .map_err(|_| format!("{flag} {value}: not a count"))
        };
        match flag.as_str() {
            "--lib" => args.lib = value,
            "--model" => args.model = value,
            "--input" => args.input = value,
            "--frames" => args.frames = number()?,
            "--warmup" => args.warmup = number()?,
            "--threads" => args.threads = number()?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if args.lib.is_empty() || args.model.is_empty() || args.input.is_empty() {
        return Err("--lib, --model and --input are required".into());
    }
    Ok(args)
}

/// The shape and values of a little-endian float32, C-order .npy file.
fn read_npy(path: &str) -> Result<(Vec<i64>, Vec<f32>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let bad = |what: &str| format!("{path}: {what}");
    if !bytes.starts_with(b"\x93NUMPY") || bytes.len() < 10 {
        return Err(bad("not a .npy file"));
    }
    // version 1 has a 2-byte header length, versions 2 and 3 a 4-byte one
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
    };
    let header = std::str::from_utf8(&bytes[start..start + len]).map_err(|_| bad("bad header"))?;
    if !header.contains("'descr': '<f4'") || !header.contains("'fortran_order': False") {
        return Err(bad("not a float32 C-order array"));
    }
    let dims = header
        .split_once("'shape': (")
        .and_then(|(_, rest)| rest.split_once(')'))
        .ok_or(bad("no shape"))?
        .0;
    let shape = dims
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.parse().map_err(|_| bad("bad shape")))
        .collect::<Result<Vec<i64>, _>>()?;
    let values: Vec<f32> = bytes[start + len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    if values.len() as i64 != shape.iter().product::<i64>() {
        return Err(bad("size does not match the shape"));
    }
    Ok((shape, values))
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    // onnxruntime's Linux builds (1.30 at least) send usage telemetry to
    // Microsoft by default, from threads spawned at each run; this variable,
    // read when the library initializes, turns it off for good (and keeps it
    // out of the instruction counts).
    std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    let environment = ort::init_from(&args.lib)?.with_telemetry(false).build()?;
    // As the Python peer (peer_worker.py): default graph optimizations (all),
    // `--threads` intra-op threads, one inter-op thread.
    let mut session = Session::builder(&environment)?
        .with_intra_threads(args.threads)?
        .with_inter_threads(1)?
        .commit_from_file(&args.model)?;
    let input = Tensor::from_array(read_npy(&args.input)?)?;
    let name = session.inputs()[0].name().to_string();
    for _ in 0..args.warmup {
        session.run(ort::inputs![name.as_str() => &input])?;
    }
    let mut ms = Vec::with_capacity(args.frames);
    for _ in 0..args.frames {
        let start = Instant::now();
        session.run(ort::inputs![name.as_str() => &input])?;
        ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!("{}", ort::info());
    println!(
        "{} frames after {} warm-up, {} threads: median {:.2} ms",
        args.frames,
        args.warmup,
        args.threads,
        ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

fn main() {
    let result = parse_args().map_err(Into::into).and_then(|args| run(&args));
    if let Err(e) = result {
        eprintln!("ort-peer: {e}");
        std::process::exit(1);
    }
}
