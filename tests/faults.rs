//! Fault injection: the real `fer-edge` binary fed what a hostile user or a
//! careless operator gives it. Hostile images (size bombs, progressive,
//! truncated, CMYK, 16-bit) through `detect` and through the service's
//! image-directory source, with the child's peak RSS; generated configs,
//! where whatever `check-config` accepts must start and stop cleanly under
//! `run` and whatever it refuses `run` refuses with the same words; a second
//! SIGTERM; SIGHUP reloads; the int8 model run 200 times at 2 threads.
//! (The broker faults are in tests/signal_mqtt.rs.)
//! Skipped, loudly, under qemu: the RSS would be qemu's, and one frame of
//! the network takes seconds there.

#[path = "common/broker.rs"]
mod broker;
mod common;

use broker::TempDir;
use common::{emulated, repo};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The goal: peak RSS of `run` and `detect`, whatever the input.
const MAX_RSS_KB: i64 = 150 * 1024;

macro_rules! require_native {
    () => {
        if emulated() {
            common::skip("fault injection runs natively only (RSS would be qemu's)");
            return;
        }
    };
}

fn fer_edge() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fer-edge"));
    command.env("RUST_LOG", "info").env_remove("TRACT_CPU_ISA");
    command
}

/// int8 at 2 threads once crashed (SIGSEGV in tract's AMX int8 kernel) in a
/// quarter of the runs on Sapphire Rapids: `device::avoid_faulty_cpu_kernels`.
/// 200 frames over 10 fresh processes, so that buffers land at new addresses.
#[test]
fn the_int8_model_runs_200_frames_at_two_threads_without_a_crash() {
    require_native!();
    let int8 = repo("models/fer-yolo-mamba-nano-int8.onnx");
    for process in 0..10 {
        let output = fer_edge()
            .args([
                "bench",
                "--threads",
                "2",
                "--frames",
                "20",
                "--warmup",
                "0",
                "--model",
            ])
            .arg(&int8)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "process {process}: {:?}\n{stderr}",
            output.status
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let isa = stdout.lines().find(|l| l.contains("tract ISA")).unwrap();
        assert!(!isa.contains("amx-int8"), "{isa}");
    }
}

/// Waits for `child`; its exit status and peak RSS in KiB (`wait4`).
fn wait_with_peak_rss(child: &mut Child) -> (ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    // SAFETY: `status` and `usage` are valid for writes; the pid is our child's.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4: {}", std::io::Error::last_os_error());
    (ExitStatus::from_raw(status), usage.ru_maxrss)
}

/// JPEG `jpeg` with its frame header claiming `width` x `height`.
fn with_claimed_size(mut jpeg: Vec<u8>, width: u16, height: u16) -> Vec<u8> {
    let sof = (2..jpeg.len() - 1)
        .find(|&i| jpeg[i] == 0xFF && matches!(jpeg[i + 1], 0xC0 | 0xC2))
        .expect("a frame header");
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// The hostile images, written into `dir`: name -> whether it must be refused.
fn hostile_images(dir: &Path) -> Vec<(PathBuf, bool)> {
    let data = |name: &str| std::fs::read(repo(&format!("tests/data/hostile/{name}"))).unwrap();
    let obama = std::fs::read(repo("samples/obama.jpg")).unwrap();
    let images: Vec<(&str, Vec<u8>, bool)> = vec![
        // 75 KB that claim 805 MB of RGB.
        (
            "bomb-baseline.jpg",
            with_claimed_size(obama.clone(), 16384, 16384),
            true,
        ),
        (
            "bomb-progressive.jpg",
            with_claimed_size(data("progressive.jpg"), 16384, 16384),
            true,
        ),
        // 33 KB of 1-bit PNG that decode to 805 MB of RGB.
        ("bomb.png", data("bomb-16384-1bit.png"), true),
        ("truncated.jpg", obama[..obama.len() / 2].to_vec(), true),
        ("not-an-image.jpg", b"GIF89a, but named .jpg".to_vec(), true),
        ("progressive.jpg", data("progressive.jpg"), false),
        ("cmyk.jpg", data("cmyk.jpg"), false),
        ("grey16.png", data("grey16.png"), false),
        ("z-obama.jpg", obama, false),
    ];
    images
        .into_iter()
        .map(|(name, bytes, refused)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            (path, refused)
        })
        .collect()
}

#[test]
fn detect_refuses_hostile_images_by_name_within_the_memory_bound() {
    require_native!();
    let dir = TempDir::new();
    for (path, refused) in hostile_images(&dir.0) {
        let mut child = fer_edge()
            .arg("detect")
            .arg(&path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
        let (status, rss) = wait_with_peak_rss(&mut child);
        let name = path.file_name().unwrap().to_string_lossy();
        let line: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(status.success(), !refused, "{name}: {line}");
        if refused {
            let error = line["error"].as_str().unwrap();
            assert!(!error.contains('\n'), "{name}: {error}");
            let said = ["megapixels", "truncated", "not a JPEG or PNG"];
            assert!(said.iter().any(|s| error.contains(s)), "{name}: {error}");
        } else {
            assert!(line["faces"].is_array(), "{name}: {line}");
        }
        assert!(rss <= MAX_RSS_KB, "{name}: peak RSS {rss} KiB");
    }
}

#[test]
fn the_image_directory_source_skips_hostile_images_and_counts_them() {
    require_native!();
    let dir = TempDir::new();
    let images = TempDir::new();
    let hostile = hostile_images(&images.0);
    let refused = hostile.iter().filter(|(_, refused)| *refused).count();
    let status = dir.file("status.json");
    let config = write_config(
        &dir,
        &format!(
            "[capture]\nsource = \"image_dir\"\npath = \"{}\"\nfps = 5.0\n\
             [service]\nstatus_file = \"{}\"\n",
            images.0.display(),
            status.display()
        ),
    );
    let mut child = fer_edge()
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (exit, rss) = wait_with_peak_rss(&mut child);
    assert!(exit.success(), "{exit:?}");
    assert!(rss <= MAX_RSS_KB, "peak RSS {rss} KiB");
    let status: Value = serde_json::from_str(&std::fs::read_to_string(status).unwrap()).unwrap();
    assert_eq!(status["state"], "stopped");
    assert_eq!(status["stats"]["corrupt_frames"], refused, "{status}");
    // Paced at 5 fps, the detector keeps up: no frame is replaced unseen.
    let stats = &status["stats"];
    let seen = stats["frames"].as_u64().unwrap() + stats["dropped_frames"].as_u64().unwrap();
    assert_eq!(seen as usize, hostile.len() - refused, "{status}");
}

fn write_config(dir: &TempDir, text: &str) -> PathBuf {
    let path = dir.file("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A value for a numeric key: a plausible one, or one of the extremes that
/// broke `run` before every key had a range.
fn numeric_value(rng: &mut StdRng, integer: bool) -> String {
    const EXTREMES: [&str; 9] = [
        "0",
        "1",
        "-1",
        "100",
        "3000",
        "1e300",
        "5e-324",
        "1e-300",
        "9223372036854775808.0",
    ];
    match rng.gen_range(0..3) {
        0 => EXTREMES[rng.gen_range(0..EXTREMES.len())].to_string(),
        1 if integer => rng.gen_range(0..100_000u64).to_string(),
        1 => format!("{:?}", rng.gen_range(0.0..2.0f64)),
        _ if integer => rng.gen_range(0..10u64).to_string(),
        _ => format!("{:?}", rng.gen_range(0.0..0.5f64)),
    }
}

/// The numeric keys (table, key, integer?), every table's.
const NUMERIC_KEYS: [(&str, &str, bool); 24] = [
    ("detector", "threads", true),
    ("detector", "confidence", false),
    ("detector", "nms_iou", false),
    ("capture", "fps", false),
    ("capture", "frame_timeout_ms", true),
    ("capture", "max_frame_pixels", true),
    ("capture.reconnect", "initial_delay_ms", true),
    ("capture.reconnect", "max_delay_ms", true),
    ("tracker", "match_iou", false),
    ("tracker", "min_hits", true),
    ("tracker", "lost_after_s", false),
    ("tracker", "smoothing", false),
    ("tracker", "switch_margin", false),
    ("mqtt", "qos", true),
    ("mqtt", "keep_alive_s", true),
    ("mqtt", "buffer", true),
    ("mqtt", "reconnect_max_ms", true),
    ("mqtt", "shutdown_timeout_ms", true),
    ("gpio", "min_hold_ms", true),
    ("service", "stats_interval_s", false),
    ("snapshot", "min_interval_s", false),
    ("snapshot", "keep", true),
    ("capture", "width", true),
    ("capture", "height", true),
];

/// A config of the image-directory source (so `run` needs no hardware),
/// with 1 to 4 numeric keys set from [`numeric_value`].
fn generated_config(rng: &mut StdRng, dir: &TempDir) -> String {
    let mut tables: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    tables.entry("capture").or_default().extend([
        "source = \"image_dir\"".to_string(),
        format!("path = \"{}\"", repo("samples/sequence").display()),
        "repeat = true".into(),
    ]);
    tables.entry("service").or_default().push(format!(
        "status_file = \"{}\"",
        dir.file("status.json").display()
    ));
    for _ in 0..rng.gen_range(1..=4) {
        let (table, key, integer) = NUMERIC_KEYS[rng.gen_range(0..NUMERIC_KEYS.len())];
        let entries = tables.entry(table).or_default();
        if !entries.iter().any(|e| e.starts_with(&format!("{key} ="))) {
            entries.push(format!("{key} = {}", numeric_value(rng, integer)));
        }
    }
    tables
        .iter()
        .map(|(table, entries)| format!("[{table}]\n{}\n", entries.join("\n")))
        .collect()
}

/// Property: for generated configs, `check-config` and `run` agree. An
/// accepted config runs, takes frames, stops on SIGTERM with status 0 and
/// never panics; a refused one is refused by `run` with the same message.
#[test]
fn whatever_check_config_accepts_runs_and_stops_cleanly() {
    require_native!();
    let seed = std::env::var("FER_EDGE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2026);
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..60 {
        let dir = TempDir::new();
        let text = generated_config(&mut rng, &dir);
        let config = write_config(&dir, &text);
        let checked = fer_edge()
            .arg("check-config")
            .arg(&config)
            .output()
            .unwrap();
        let verdict = String::from_utf8_lossy(&checked.stderr).to_string();
        let context = format!("case {case} (seed {seed}):\n{text}\n{verdict}");
        assert!(matches!(checked.status.code(), Some(0 | 2)), "{context}");
        let mut child = fer_edge()
            .args(["run", "--config"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if checked.status.success() {
            accepted += 1;
            let log = StderrLog::read(&mut child);
            assert!(
                log.wait_for("capture: reading", Duration::from_secs(10)),
                "{context}\n{}",
                log.text()
            );
            std::thread::sleep(Duration::from_millis(300));
            signal(&child, libc::SIGTERM);
            let status = wait_within(&mut child, Duration::from_secs(12));
            assert_eq!(
                status.map(|s| s.code()),
                Some(Some(0)),
                "{context}\n{}",
                log.text()
            );
            assert!(
                !log.text().contains("panicked"),
                "{context}\n{}",
                log.text()
            );
        } else {
            refused += 1;
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(2), "{context}\n{stderr}");
            let reason = verdict.lines().last().unwrap_or_default();
            let reason = reason.split("ERROR").last().unwrap().trim();
            assert!(stderr.contains(reason), "{context}\nrun said: {stderr}");
        }
    }
    // Both verdicts must have been exercised for the property to mean anything.
    assert!(
        accepted >= 10 && refused >= 10,
        "{accepted} accepted, {refused} refused"
    );
}

/// A config of the recorded sequence, looped at 5 fps, with the status file
/// in `dir` and `extra` tables.
fn sequence_config(dir: &TempDir, extra: &str) -> String {
    format!(
        "[detector]\nthreads = 1\n\
         [capture]\nsource = \"image_dir\"\npath = \"{}\"\nrepeat = true\nfps = 5.0\n\
         [service]\nstats_interval_s = 0.5\nstatus_file = \"{}\"\n{extra}",
        repo("samples/sequence").display(),
        dir.file("status.json").display()
    )
}

fn frames_in_status(dir: &TempDir) -> u64 {
    std::fs::read_to_string(dir.file("status.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|status| status["stats"]["frames"].as_u64())
        .unwrap_or(0)
}

/// The first SIGTERM waits up to `mqtt.shutdown_timeout_ms` for a broker
/// that accepts the connection and never answers; a second one cuts that
/// short: the process exits at once, with 128 + 15.
#[test]
fn a_second_sigterm_exits_at_once() {
    require_native!();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = TempDir::new();
    let mqtt = format!(
        "[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {port}\nshutdown_timeout_ms = 5000\n"
    );
    let config = write_config(&dir, &sequence_config(&dir, &mqtt));
    let (mut child, log) = start_service(&config);
    assert!(
        log.wait_for("capture: reading", Duration::from_secs(20)),
        "{}",
        log.text()
    );
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(800));
    assert!(child.try_wait().unwrap().is_none(), "{}", log.text());
    let second = Instant::now();
    signal(&child, libc::SIGTERM);
    let status = wait_within(&mut child, Duration::from_secs(2));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(128 + libc::SIGTERM),
        "{}",
        log.text()
    );
    assert!(
        second.elapsed() < Duration::from_secs(1),
        "{:?}",
        second.elapsed()
    );
}

/// SIGHUP reads the config again: a change applies without a new MQTT
/// connection (the broker logs one connect for the whole run), a config that
/// does not check is refused while the old one keeps running, and the
/// service still stops cleanly.
#[test]
fn sighup_reloads_the_config_and_keeps_the_mqtt_session() {
    require_native!();
    require_mosquitto!();
    let broker = broker::Broker::start();
    let dir = TempDir::new();
    let mqtt = format!(
        "[mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {}\ndevice_id = \"reload\"\n",
        broker.port
    );
    let config = write_config(&dir, &sequence_config(&dir, &mqtt));
    let (mut child, log) = start_service(&config);
    assert!(
        log.wait_for("MQTT: connected", Duration::from_secs(20)),
        "{}",
        log.text()
    );

    let changed = sequence_config(&dir, &format!("{mqtt}[tracker]\nmin_hits = 2\n"));
    std::fs::write(&config, changed).unwrap();
    signal(&child, libc::SIGHUP);
    assert!(
        log.wait_for("restarted: tracker", Duration::from_secs(20)),
        "{}",
        log.text()
    );

    std::fs::write(&config, "[capture]\nfps = 1e300\n").unwrap();
    signal(&child, libc::SIGHUP);
    assert!(
        log.wait_for("reload refused", Duration::from_secs(10)),
        "{}",
        log.text()
    );
    assert!(log.text().contains("`capture.fps`"), "{}", log.text());
    let frames = frames_in_status(&dir);
    broker::wait_until("frames go on after the refused reload", || {
        frames_in_status(&dir) > frames + 2
    });

    signal(&child, libc::SIGTERM);
    let status = wait_within(&mut child, Duration::from_secs(15));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", log.text());
    let connects = broker.log().matches("as fer-edge-reload").count();
    assert_eq!(connects, 1, "{}", broker.log());
}

/// A missing camera and an unreachable broker show in the status file (and
/// the stats topic it copies): not open, since when, the last error; the
/// camera's warning is logged once, not at every retry.
#[test]
fn the_status_shows_a_missing_camera_and_an_unreachable_broker() {
    require_native!();
    let dir = TempDir::new();
    let closed = broker::free_port();
    let config = write_config(
        &dir,
        &format!(
            "[capture]\ndevice = \"/dev/video-fer-edge-missing\"\n\
             [capture.reconnect]\ninitial_delay_ms = 100\nmax_delay_ms = 200\n\
             [mqtt]\nenabled = true\nhost = \"127.0.0.1\"\nport = {closed}\n\
             reconnect_max_ms = 250\nshutdown_timeout_ms = 100\n\
             [service]\nstats_interval_s = 0.5\nstatus_file = \"{}\"\n",
            dir.file("status.json").display()
        ),
    );
    let (mut child, log) = start_service(&config);
    let read_status = || -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.file("status.json")).ok()?).ok()
    };
    broker::wait_until("the status file reports both outages", || {
        read_status().is_some_and(|s| !s["stats"]["mqtt"]["last_error"].is_null())
    });
    std::thread::sleep(Duration::from_secs(2));
    let status = read_status().unwrap();
    signal(&child, libc::SIGTERM);
    assert_eq!(
        wait_within(&mut child, Duration::from_secs(10)).and_then(|s| s.code()),
        Some(0)
    );

    assert_eq!(status["capture_alive"], false, "{status}");
    let capture = &status["stats"]["capture"];
    assert_eq!(capture["open"], false, "{status}");
    assert!(
        capture["failing_since"].as_f64().unwrap() > 1.7e9,
        "{status}"
    );
    let error = capture["last_error"].as_str().unwrap();
    assert!(error.contains("/dev/video-fer-edge-missing"), "{error}");
    let mqtt = &status["stats"]["mqtt"];
    assert_eq!(mqtt["connected"], false, "{status}");
    assert!(mqtt["pending"].as_u64().unwrap() > 0, "{status}");
    let camera_warnings = log
        .text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("video-fer-edge-missing"))
        .count();
    assert_eq!(
        camera_warnings,
        1,
        "one warning a minute at most:\n{}",
        log.text()
    );
}

/// `fer-edge run --config config`, its stderr read as it comes.
fn start_service(config: &Path) -> (Child, StderrLog) {
    let mut child = fer_edge()
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLog::read(&mut child);
    (child, log)
}

fn signal(child: &Child, signal: libc::c_int) {
    // SAFETY: kill has no memory-safety preconditions.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// The child's exit status; `None` (and the child killed) if it takes
/// longer than `limit`.
fn wait_within(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A child's stderr, read to the end by a thread of its own (so a chatty
/// child never blocks on a full pipe).
struct StderrLog(Arc<Mutex<String>>);

impl StderrLog {
    fn read(child: &mut Child) -> StderrLog {
        let text = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().expect("stderr piped"));
        let sink = Arc::clone(&text);
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        StderrLog(text)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Whether `needle` appears within `limit`.
    fn wait_for(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.text().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}
