//! The library's error type. Every error about a model names the node and op.

use std::path::PathBuf;

/// One node that faceall cannot handle, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    pub node: String,
    pub op: String,
    pub reason: String,
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node '{}' ({}): {}", self.node, self.op, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A problem with one node of a model.
    #[error("node '{node}' ({op}): {msg}")]
    Node {
        node: String,
        op: String,
        msg: String,
    },

    /// Every node that cannot be handled, collected before giving up.
    #[error("{} unsupported node(s): {}", .0.len(), join_unsupported(.0))]
    Unsupported(Vec<Unsupported>),

    /// The file is not something faceall can read (with the reason).
    #[error("{0}")]
    Format(String),

    /// A structural problem of the graph as a whole (cycle, missing input...).
    #[error("{0}")]
    Graph(String),

    /// A caller asked for something that does not fit (bad feed, unknown name).
    #[error("{0}")]
    Usage(String),

    /// The reference runtime (real TensorFlow through Python) is missing or
    /// failed: not the model's fault nor the caller's.
    #[error("{0}")]
    Reference(String),

    /// Files that should belong together do not: a converted model and the
    /// TF graph it is checked against, or a format's companion files.
    #[error("{0}")]
    Mismatch(String),

    #[error(transparent)]
    Io(#[from] std::io::Error),

    /// Any of the above, about a named file.
    #[error("{}: {source}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

fn join_unsupported(list: &[Unsupported]) -> String {
    list.iter()
        .map(|u| u.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn node(node: impl Into<String>, op: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Node {
            node: node.into(),
            op: op.into(),
            msg: msg.into(),
        }
    }

    /// Attach the file this error is about.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        match self {
            e @ Error::File { .. } => e,
            e => Error::File {
                path: path.into(),
                source: Box::new(e),
            },
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
