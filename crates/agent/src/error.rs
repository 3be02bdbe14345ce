//! What can stop an agent, each with what the operator can do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file or directory the agent reads or writes.
    #[error("{what} {}: {source}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The credential file is not one `weft token create` wrote.
    #[error("the credential file {}: {problem}; hint: write it with `weft token create --cluster C ... > FILE`", path.display())]
    Credential { path: PathBuf, problem: String },
    /// The edge refused the workload credential.
    #[error(
        "the edge refused the workload credential: {0}; hint: issue one with `weft token create --cluster C --namespace N --service-account S`"
    )]
    Refused(String),
    /// The runtime directory cannot be used, or another run holds it.
    #[error("{0}")]
    RuntimeDir(String),
    /// A process the agent starts (Envoy, the app).
    #[error("cannot start {what} ({program}): {source}")]
    Start {
        what: &'static str,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Identity(#[from] weft_identity::IdentityError),
    #[error("the SDS secrets: {0}")]
    Secrets(String),
    #[error("the client for the edge: {0}")]
    Client(String),
    #[error("Envoy exited with status {0}; see its log above")]
    EnvoyExited(i32),
}

impl AgentError {
    pub(crate) fn file(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        AgentError::File {
            what,
            path: path.to_path_buf(),
            source,
        }
    }
}
