//! Command-line front end (clap). `anyhow` lives here only.

mod bench;
mod convert;
mod inspect;
mod register;
mod serve;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "faceall",
    version,
    about = "Convert TensorFlow face-recognition models to Caffe, Core ML and safetensors; prove parity; serve"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Summarise a frozen TensorFlow graph: ops, inputs, outputs, parameters, FLOPs, unsupported ops.
    Inspect(inspect::Args),
    /// Convert a frozen TensorFlow graph (batch norms folded) to Caffe and/or Core ML.
    ConvertTf(Box<convert::Args>),
    /// Run the TF graph and converted models on the same inputs and compare them layer by layer.
    VerifyParity(Box<verify::Args>),
    /// Time faceall's engine on a model (ms per image, images per second).
    Bench(bench::Args),
    /// Serve face register and retrieve over HTTP (JSON API and web pages).
    Serve(Box<serve::Args>),
    /// Register a folder tree of photos (one subfolder per person) into a server or a store.
    Register(Box<register::Args>),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Inspect(a) => inspect::run(a),
        Cmd::ConvertTf(a) => convert::run(*a),
        Cmd::VerifyParity(a) => verify::run(*a),
        Cmd::Bench(a) => bench::run(a),
        Cmd::Serve(a) => serve::run(*a),
        Cmd::Register(a) => register::run(*a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}

/// The error and its causes on one line.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = vec![];
    for c in e.chain() {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

/// A `--no-pass` name, checked against the pass table.
pub fn pass_name(s: &str) -> Result<String, String> {
    if faceall::passes::PASSES.iter().any(|p| p.name == s) {
        Ok(s.to_string())
    } else {
        let names: Vec<&str> = faceall::passes::PASSES.iter().map(|p| p.name).collect();
        Err(format!(
            "no pass named '{s}' (passes: {})",
            names.join(", ")
        ))
    }
}

/// The passes, in order, with what each does: `convert-tf --help`'s list
/// for `--no-pass`, generated from the pass table.
pub fn passes_help() -> String {
    let mut o = String::from("Passes (in order; switch one off with --no-pass NAME):\n");
    for p in faceall::passes::PASSES {
        o.push_str(&format!("  {:<18} {}\n", p.name, p.what));
    }
    o
}

/// `NAME=D0,D1,...` for `--input-shape`.
pub fn parse_input_shape(s: &str) -> Result<(String, Vec<usize>), String> {
    let (name, dims) = s
        .rsplit_once('=')
        .ok_or_else(|| format!("expected NAME=D0,D1,..., got '{s}'"))?;
    let dims = dims
        .split(',')
        .map(|d| {
            d.trim()
                .parse::<usize>()
                .map_err(|_| format!("bad dimension '{d}' in '{s}'"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((name.to_string(), dims))
}

/// The token of `--token` or, when given, the first line of `--token-file`
/// (which keeps it out of the process list); an empty file is an error.
pub fn token_from(
    token: Option<String>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<Option<String>> {
    let Some(p) = file else {
        return Ok(token.filter(|t| !t.is_empty()));
    };
    let t = std::fs::read_to_string(p)
        .map_err(|e| anyhow::anyhow!("--token-file {}: {e}", p.display()))?;
    let t = t.lines().next().unwrap_or("").trim().to_string();
    if t.is_empty() {
        anyhow::bail!("--token-file {}: the file holds no token", p.display());
    }
    Ok(Some(t))
}

/// Print to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// A model path as given, or the one NAME.graph.json inside a directory.
pub fn resolve_bundle(path: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    // A directory that is a model itself (an ML Program package).
    if !path.is_dir() || faceall::formats::by_path(path).is_some() {
        return Ok(path.to_path_buf());
    }
    let mut found = vec![];
    for e in std::fs::read_dir(path)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        .flatten()
    {
        if e.file_name().to_string_lossy().ends_with(".graph.json") {
            found.push(e.path());
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!(
            "{}: no NAME.graph.json here (convert with `faceall convert-tf MODEL.pb --to safetensors`)",
            path.display()
        ),
        _ => anyhow::bail!(
            "{}: several .graph.json files; name one of them",
            path.display()
        ),
    }
}

/// Which part of a SavedModel or TF1 checkpoint to read (ignored for a
/// frozen graph).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SourceArgs {
    /// SavedModel: the signature whose inputs and outputs the model takes
    /// (default serving_default)
    #[arg(long)]
    pub signature: Option<String>,
    /// SavedModel: the meta graph's tags, comma-separated (default serve)
    #[arg(long = "tag-set")]
    pub tag_set: Option<String>,
    /// model.meta: the checkpoint prefix (PREFIX.index, PREFIX.data-*);
    /// default: the one beside the .meta file
    #[arg(long)]
    pub checkpoint: Option<std::path::PathBuf>,
}

impl SourceArgs {
    pub fn options(&self) -> faceall::frontend::tf::SourceOptions {
        faceall::frontend::tf::SourceOptions {
            signature: self.signature.clone(),
            tag_set: self.tag_set.clone(),
            checkpoint: self.checkpoint.clone(),
            outputs: vec![],
        }
    }
}
