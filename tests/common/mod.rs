//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod mutate;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn faceall(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faceall"))
        .args(args)
        .output()
        .expect("run faceall")
}

/// The project's Python with the reference runtimes (scripts/setup).
pub fn python() -> PathBuf {
    let p = root().join(".cache/venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/setup", p.display());
    p
}

pub fn shared() -> PathBuf {
    let p = root().join("../shared");
    assert!(
        p.join("models/mtcnn").exists(),
        "{} missing: the tests read ../shared (models, images)",
        p.display()
    );
    p
}

pub const FIXTURES: &[&str] = &[
    "inception_resnet_v1_switch",
    "inception_resnet_v1_fused",
    "decomposed_bn",
    "same_conv_stride2",
    "depthwise_relu6",
    "matmul_bn",
    "pool_floor",
    "misc_ops",
    "flatten_output",
    "keras_ops",
    "leaky_relu",
    "exp_log",
    "layer_norm",
    "gelu_erf",
    "crop_slice",
    "split",
    "nchw_inside",
    "nchw_graph",
    "mirror_pad",
    "upsample",
    "resize_any",
    "space_depth",
    "deconv",
    "resize_corners",
];

/// Fixtures with an op that has no form in Caffe (neither BVLC nor OpenCV
/// has erf): tests/caffe.rs checks that they are refused, naming the op.
pub const NO_CAFFE_FORM: &[(&str, &str)] = &[
    ("gelu_erf", "erf"),
    ("resize_any", "ResizeBilinear"),
    ("resize_corners", "ResizeBilinear"),
];

/// Fixtures with an op that has no form in Core ML's NeuralNetwork:
/// tests/coreml.rs checks that they are refused, naming the op and why.
pub const NO_COREML_FORM: &[(&str, &str)] = &[("resize_any", "ResizeBilinear")];

/// Fixtures with an op that has no ML Program form faceall writes:
/// tests/mlprogram.rs checks that they are refused, naming the op and why.
pub const NO_MLPROGRAM_FORM: &[(&str, &str)] = &[("resize_any", "ResizeBilinear")];

/// A fixture directory, or the real FaceNet reference for "facenet".
pub fn case_dir(name: &str) -> PathBuf {
    if name == "facenet" {
        let d = root().join(".cache/facenet_ref");
        assert!(
            d.join("manifest.json").exists(),
            "{} missing: run scripts/setup",
            d.display()
        );
        d
    } else {
        root().join("fixtures").join(name)
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The real FaceNet converted to a safetensors bundle `facenet` in `dir`.
pub fn convert_facenet_bundle(dir: &Path) {
    let model = root().join(".cache/models/graph_final.pb");
    assert!(
        model.exists(),
        "{} missing: run scripts/setup",
        model.display()
    );
    std::fs::create_dir_all(dir).unwrap();
    let o = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        "safetensors",
        "--out-dir",
        dir.to_str().unwrap(),
        "--name",
        "facenet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real PostgreSQL 16 with pgvector (PyPI pgserver, through
/// scripts/pg_serve.py) in a directory of its own; stopped on drop.
pub struct Pg {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    pub uri: String,
    _dir: tempfile::TempDir,
}

impl Pg {
    pub fn start(password: Option<&str>) -> Pg {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        // pgserver runs postgres as its own user, which must reach the directory.
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(dir.path()).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut cmd = Command::new(python());
        cmd.arg(root().join("scripts/pg_serve.py"))
            .arg(dir.path().join("pg"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null());
        if let Some(p) = password {
            cmd.args(["--password", p]);
        }
        let mut child = cmd.spawn().expect("start scripts/pg_serve.py");
        let stdin = child.stdin.take();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut uri = String::new();
        stdout.read_line(&mut uri).unwrap();
        let uri = uri.trim().to_string();
        assert!(
            uri.starts_with("postgresql://"),
            "pgserver did not start (scripts/setup installs it): {uri:?}"
        );
        Pg {
            child,
            stdin,
            stdout,
            uri,
            _dir: dir,
        }
    }

    fn command(&mut self, cmd: &str) {
        use std::io::{BufRead, Write};
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{cmd}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
    }

    /// Stop the database (fast shutdown), as if it went away.
    pub fn stop_db(&mut self) {
        self.command("stop");
    }

    pub fn start_db(&mut self) {
        self.command("start");
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

/// Where a test server keeps its faces: an embedded store in a temporary
/// directory, or a PostgreSQL of its own.
pub enum Store {
    Embedded(tempfile::TempDir),
    Postgres(Pg),
}

impl Store {
    pub fn embedded() -> Store {
        Store::Embedded(tempfile::tempdir().unwrap())
    }

    pub fn postgres() -> Store {
        Store::Postgres(Pg::start(None))
    }

    /// The `faceall serve` arguments that select it.
    pub fn args(&self) -> Vec<String> {
        match self {
            Store::Embedded(d) => vec!["--data".into(), d.path().display().to_string()],
            Store::Postgres(pg) => vec!["--database-url".into(), pg.uri.clone()],
        }
    }
}

/// `mod NAME { embedded, postgres }`: the test function NAME(store) run on
/// both backends.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn embedded() {
                super::$name(super::common::Store::embedded())
            }
            #[test]
            fn postgres() {
                super::$name(super::common::Store::postgres())
            }
        }
    };
}

// --- faceall serve through the real binary ---

use serde_json::Value;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The FaceNet bundle, converted once per test run.
pub fn bundle() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("faceall-serve-model-{}", std::process::id()));
        convert_facenet_bundle(&dir);
        dir
    })
    .clone()
}

pub struct Server {
    pub child: std::process::Child,
    pub url: String,
    /// The server's stderr (its log).
    pub log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start(store: &Store, extra: &[&str]) -> Server {
    let port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_faceall"));
    cmd.args([
        "serve",
        "--model",
        bundle().to_str().unwrap(),
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .args(store.args())
    .args(extra)
    .env_remove("FACEALL_TOKEN")
    .env_remove("FACEALL_DATABASE_URL")
    .stdout(Stdio::null());
    let log = std::env::temp_dir().join(format!("faceall-serve-{port}.log"));
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let child = cmd.spawn().expect("start faceall serve");
    let s = Server {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    };
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if curl(&s, &["/api/v1/health"]).0 == 200 {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "server did not come up: {}",
        std::fs::read_to_string(&s.log).unwrap_or_default()
    );
}

/// (status, JSON body) of `curl URL ARGS...`; the path is the first arg.
pub fn curl(s: &Server, args: &[&str]) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-m", "120", "-w", "\n%{http_code}"])
        .arg(format!("{}{}", s.url, args[0]))
        .args(&args[1..]);
    let o = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&o.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// (status, JSON) of a JSON POST (the body goes through a file: embedding
/// batches are megabytes), with a bearer token when given.
pub fn post_json(s: &Server, path: &str, body: &Value, token: Option<&str>) -> (u16, Value) {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), serde_json::to_vec(body).unwrap()).unwrap();
    let data = format!("@{}", f.path().display());
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        path,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "--data-binary",
        &data,
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    curl(s, &args)
}

/// A synthetic identity gallery as in scripts/bench_index: `people`
/// random unit centres, each with 5 gallery vectors and 1 held-back query
/// (centre + Gaussian noise of norm about 0.35, renormalised).
pub fn identity_gallery(people: usize, dim: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E3779B97F4A7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut normal = move || {
        let (u, v) = (next().max(1e-300), next());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    };
    let unit = |v: Vec<f32>| {
        let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
    };
    let sigma = 0.35 / (dim as f32).sqrt();
    let (mut gallery, mut queries) = (vec![], vec![]);
    for _ in 0..people {
        let c = unit((0..dim).map(|_| normal()).collect());
        for j in 0..6 {
            let v = unit(c.iter().map(|x| x + sigma * normal()).collect());
            if j < 5 {
                gallery.push(v);
            } else {
                queries.push(v);
            }
        }
    }
    (gallery, queries)
}

/// Run one of the project's checker scripts (`scripts/NAME`): it prints JSON
/// lines, one summary object under `key` and one per compared tensor.
/// Panics with its output when it fails.
pub fn run_checker(script: &str, args: &[&std::ffi::OsStr], key: &str) -> (Value, Vec<Value>) {
    let out = Command::new(python())
        .arg(root().join("scripts").join(script))
        .args(args)
        .output()
        .expect("run the checker");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} {args:?}:\n{text}\n{}",
        stderr(&out)
    );
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let summary = lines
        .iter()
        .find_map(|v| v.get(key).cloned())
        .unwrap_or_else(|| panic!("{script}: no '{key}' summary in:\n{text}"));
    let tensors = lines
        .into_iter()
        .filter(|v| v.get("tensor").is_some())
        .collect();
    (summary, tensors)
}

/// Convert fixture `name` to `format` and ONNX: the run must exit 1 with one
/// line naming the format, the node and `op`, write the ONNX file and not
/// `refused_file` (the format's main file).
pub fn assert_refused_for_one_format(name: &str, op: &str, format: &str, refused_file: &str) {
    let model = case_dir(name).join("model.pb");
    let d = tempfile::tempdir().unwrap();
    let to = format!("{format},onnx");
    let o = faceall(&[
        "convert-tf",
        model.to_str().unwrap(),
        "--to",
        &to,
        "--out-dir",
        d.path().to_str().unwrap(),
        "--quiet",
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{name}: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{name}: {err}");
    assert!(
        lines[0].starts_with(&format!("error: --to {format}:"))
            && lines[0].contains(op)
            && lines[0].contains("node '"),
        "{name}: {err}"
    );
    assert!(
        d.path().join("model.onnx").exists(),
        "{name}: ONNX not written"
    );
    assert!(
        !d.path().join(refused_file).exists(),
        "{name}: {refused_file} was written"
    );
}
