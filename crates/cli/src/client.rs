//! Talking to the server: where it is, the token, and errors with exit codes.

use std::path::PathBuf;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use weft_manage::error::{Detail, ErrorBody};

use crate::config::Config;

/// Where the server listens unless told otherwise.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:7070";

/// Exit statuses scripts can rely on (also in `weft --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `weft diff` found differences; `weft audit verify` found a broken chain.
    Differs = 1,
    Invalid = 3,
    Conflict = 4,
    Denied = 5,
    NotFound = 6,
    Unreachable = 7,
    Failed = 8,
}

/// A failure to report: a message, optional details and hint, an exit code.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
    pub details: Vec<Detail>,
    /// Labels (`file.yaml#2`) of the documents details point at by index.
    pub sources: Vec<String>,
    pub hint: Option<String>,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
            details: Vec::new(),
            sources: Vec::new(),
            hint: None,
        }
    }

    /// Names the documents of a bulk request in the details.
    pub fn with_sources(mut self, sources: &[String]) -> CliError {
        self.sources = sources.to_vec();
        self
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> CliError {
        self.hint = Some(hint.into());
        self
    }

    /// Prints the error to stderr the same way for every command.
    pub fn report(&self) {
        match self.details.as_slice() {
            // One detail says it all, and names the file it is about.
            [only] => eprintln!("error: {}", describe(only, &self.sources)),
            details => {
                eprintln!("error: {}", self.message);
                for detail in details {
                    eprintln!("  - {}", describe(detail, &self.sources));
                }
            }
        }
        if let Some(hint) = &self.hint {
            eprintln!("hint: {hint}");
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::new(Exit::Failed, e.to_string())
    }
}

/// Server and credential as the user gave them (flags, environment).
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's URL [default: from `weft login`, else http://127.0.0.1:7070]
    #[arg(long, env = "WEFT_SERVER", global = true)]
    pub server: Option<String>,
    /// An API token [default: from `weft login`]
    #[arg(long, env = "WEFT_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// The client configuration file written by `weft login`
    /// [default: $XDG_CONFIG_HOME/weft/config.yaml]
    #[arg(long, env = "WEFT_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

pub struct Client {
    http: reqwest::Client,
    pub server: String,
    token: Option<String>,
}

impl Client {
    /// Flags and environment win over the configuration file.
    pub fn new(connection: &Connection) -> Result<Client, CliError> {
        let saved = Config::load(connection.config.as_deref())?;
        let server = connection
            .server
            .clone()
            .or(saved.server)
            .unwrap_or_else(|| DEFAULT_SERVER.to_string());
        Ok(Client::to(
            &server,
            connection.token.clone().or(saved.token),
        ))
    }

    pub fn to(server: &str, token: Option<String>) -> Client {
        Client {
            http: reqwest::Client::new(),
            server: server.trim_end_matches('/').to_string(),
            token,
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(Method::GET, path, None::<&()>).await
    }

    /// A GET with query parameters.
    pub async fn get_with<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, CliError> {
        self.request(Method::GET, path, query, None::<&()>).await
    }

    /// Sends a request to `/v1/{path}` and decodes the answer, or turns the
    /// server's error into a [`CliError`] with the right exit code.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        self.request(method, path, &[], body).await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&impl Serialize>,
    ) -> Result<T, CliError> {
        let url = format!("{}/v1/{path}", self.server);
        let mut request = self.http.request(method, &url).query(query);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| {
            CliError::new(
                Exit::Unreachable,
                format!("cannot reach the server at {}: {e}", self.server),
            )
            .with_hint("start it with 'weft server', or point --server / WEFT_SERVER at it")
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| {
            CliError::new(
                Exit::Unreachable,
                format!("the server's answer was cut off: {e}"),
            )
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| {
                CliError::new(Exit::Failed, format!("unexpected answer from {url}: {e}"))
            });
        }
        let exit = match status {
            StatusCode::BAD_REQUEST
            | StatusCode::PAYLOAD_TOO_LARGE
            | StatusCode::UNPROCESSABLE_ENTITY => Exit::Invalid,
            StatusCode::CONFLICT => Exit::Conflict,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Exit::Denied,
            StatusCode::NOT_FOUND => Exit::NotFound,
            _ => Exit::Failed,
        };
        Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => CliError {
                exit,
                message: body.message,
                details: body.details,
                sources: Vec::new(),
                hint: body.hint,
            },
            Err(_) => CliError::new(
                exit,
                format!("{status}: {}", String::from_utf8_lossy(&bytes).trim()),
            ),
        })
    }
}

/// One detail line; `sources` names the documents of a bulk request.
pub fn describe(detail: &Detail, sources: &[String]) -> String {
    let mut line = String::new();
    if let Some(source) = detail.document.and_then(|i| sources.get(i)) {
        line.push_str(source);
        line.push_str(": ");
    } else if !detail.path.is_empty() {
        line.push_str(&detail.path);
        line.push_str(": ");
    }
    if !detail.field.is_empty() {
        line.push_str(&detail.field);
        line.push_str(": ");
    }
    line.push_str(&detail.message);
    line
}
