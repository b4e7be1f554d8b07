//! Why a command failed, and the exit code that says so: 1 bad input data, 2 bad configuration
//! or usage (a database newer than this build included), 3 database or system failure, 4 a
//! source not ready (`status`).

use crate::import::ImportError;
use crate::store::StoreError;

/// Why a command failed, which decides the exit code.
#[derive(Debug)]
pub enum Failure {
    /// The input data is bad (a document or record error): exit 1.
    Data(anyhow::Error),
    /// The configuration or the command line is wrong: exit 2.
    Config(anyhow::Error),
    /// The database or the system failed: exit 3.
    Runtime(anyhow::Error),
    /// `status`: a configured source is not ready (the rule of `/readyz`): exit 4.
    NotReady(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Data(_) => 1,
            Failure::Config(_) => 2,
            Failure::Runtime(_) => 3,
            Failure::NotReady(_) => 4,
        }
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Data(e) | Failure::Config(e) | Failure::Runtime(e) | Failure::NotReady(e) => e,
        }
    }
}

impl From<ImportError> for Failure {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Document(_) => Failure::Data(e.into()),
            ImportError::Store(e) => Failure::from(e),
            ImportError::Parser(_) => Failure::Runtime(e.into()),
        }
    }
}

/// The one line printed for a failure: the message and its causes, each said once.
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::error::chain(self.error().as_ref()))
    }
}

/// A refused state change (a rewind forwards, a role that does not exist) and a database newer
/// than this build are the operator's to fix (exit 2); a document error found while writing is
/// bad input (exit 1); anything else from the database is a runtime failure (exit 3).
impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Refused(_)
            | StoreError::NewerSchema { .. }
            | StoreError::UnsupportedUrl(_)
            | StoreError::InvalidSchema { .. } => Failure::Config(e.into()),
            StoreError::Document(_) => Failure::Data(e.into()),
            StoreError::Connect { .. }
            | StoreError::Migrate(_)
            | StoreError::Query { .. }
            | StoreError::Corrupt(_)
            | StoreError::Cancelled
            | StoreError::WatermarkMoved { .. } => Failure::Runtime(e.into()),
        }
    }
}

/// Output that could not be written (a closed pipe, a full disk).
pub(crate) fn io_failure(e: std::io::Error) -> Failure {
    Failure::Runtime(anyhow::Error::new(e).context("writing output"))
}
