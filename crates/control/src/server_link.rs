//! The edge's one link to the server's edge port: mutual TLS with the
//! cluster CA's serving certificate (the server must be `weft-server`
//! under the bundle), the edge credential on every request, and the edge
//! protocol version in a header. Every call the edge makes to the server
//! is a method here, and every failure a [`LinkError`].

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use weft_api::edge::{
    DirectoryEntry, DirectoryUpdate, EdgeConfig, EdgeStatus, IntermediateCertificate,
    IntermediateRequest,
};
use weft_api::traffic_stats::TrafficRollup;
use weft_identity::SpiffeId;

use crate::ca::EdgeCa;

/// How long a call that does not wait for a change may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How much longer than its wait a long poll may take.
const POLL_SLACK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("the server connection cannot be set up: {0}")]
    Setup(String),
    #[error("server unreachable: {0}")]
    Unreachable(String),
    #[error("server answered {status}: {body}{hint}")]
    Refused {
        status: StatusCode,
        body: String,
        /// What the operator can do, for a refused credential.
        hint: String,
    },
    #[error("unreadable {what} from the server: {reason}")]
    Unreadable { what: &'static str, reason: String },
}

/// The link to the server. Cheap to clone.
#[derive(Clone)]
pub struct ServerLink {
    client: reqwest::Client,
    /// The edge port's base URL, without a trailing slash.
    server: Arc<str>,
    credential: Arc<str>,
    cluster: Arc<str>,
}

impl ServerLink {
    /// A new connection per request: one made before the edge had its
    /// certificate would otherwise keep being reused without it.
    pub fn new(
        ca: &EdgeCa,
        server: &str,
        credential: &str,
        cluster: &str,
    ) -> Result<ServerLink, LinkError> {
        let tls = weft_identity::tls::client_config(
            ca.trust_store.clone(),
            |bundle| {
                SpiffeId::server(bundle.trust_domain())
                    .map(|id| id.to_string())
                    .unwrap_or_default()
            },
            Some(ca.serving.clone()),
        )
        .map_err(|e| LinkError::Setup(e.to_string()))?;
        let mut protocol = reqwest::header::HeaderMap::new();
        protocol.insert(
            weft_api::edge::PROTOCOL_HEADER,
            reqwest::header::HeaderValue::from(weft_api::edge::PROTOCOL),
        );
        let client = reqwest::Client::builder()
            .default_headers(protocol)
            .use_preconfigured_tls(tls)
            .pool_max_idle_per_host(0)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| LinkError::Setup(e.to_string()))?;
        Ok(ServerLink {
            client,
            server: server.trim_end_matches('/').into(),
            credential: credential.into(),
            cluster: cluster.into(),
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.server))
            .bearer_auth(&*self.credential)
            .timeout(CALL_TIMEOUT)
    }

    /// Sends `request`; a success, or why not.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, LinkError> {
        let response = request
            .send()
            .await
            .map_err(|e| LinkError::Unreachable(e.to_string()))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default().trim().to_string();
        let hint = if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            format!(
                "; check the edge credential (issue one with `weft token create --cluster {}`)",
                self.cluster
            )
        } else {
            String::new()
        };
        Err(LinkError::Refused { status, body, hint })
    }

    async fn read<T: DeserializeOwned>(
        response: reqwest::Response,
        what: &'static str,
    ) -> Result<T, LinkError> {
        response.json().await.map_err(|e| LinkError::Unreadable {
            what,
            reason: e.to_string(),
        })
    }

    /// This cluster's configuration if it is not `version`, waiting up to
    /// `wait` for a change; None: the server confirmed `version`.
    pub async fn config(
        &self,
        version: &str,
        wait: Duration,
    ) -> Result<Option<EdgeConfig>, LinkError> {
        let request = self
            .request(reqwest::Method::GET, "/v1/edge/config")
            .query(&[("version", version), ("wait", &wait.as_secs().to_string())])
            .timeout(wait + POLL_SLACK);
        let response = self.send(request).await?;
        if response.status() == StatusCode::NOT_MODIFIED {
            return Ok(None);
        }
        Self::read(response, "configuration").await.map(Some)
    }

    /// Reports the edge's status.
    pub async fn report(&self, status: &EdgeStatus) -> Result<(), LinkError> {
        let request = self
            .request(reqwest::Method::PUT, "/v1/edge/status")
            .json(status);
        self.send(request).await.map(drop)
    }

    /// Sends the traffic this cluster's proxies counted since the last
    /// rollup.
    pub async fn send_traffic(&self, rollup: &TrafficRollup) -> Result<(), LinkError> {
        let request = self
            .request(reqwest::Method::PUT, "/v1/edge/traffic")
            .json(rollup);
        self.send(request).await.map(drop)
    }

    /// Publishes this cluster's whole directory entry; the server keeps
    /// what changed.
    pub async fn publish(&self, entry: &DirectoryEntry) -> Result<(), LinkError> {
        let request = self
            .request(reqwest::Method::PUT, "/v1/edge/directory")
            .json(entry);
        self.send(request).await.map(drop)
    }

    /// The other clusters' directory changes after `since`, waiting up to
    /// `wait` for one.
    pub async fn follow(&self, since: i64, wait: Duration) -> Result<DirectoryUpdate, LinkError> {
        let request = self
            .request(reqwest::Method::GET, "/v1/edge/directory")
            .query(&[
                ("since", since.to_string()),
                ("wait", wait.as_secs().to_string()),
            ])
            .timeout(wait + POLL_SLACK);
        let response = self.send(request).await?;
        Self::read(response, "directory update").await
    }

    /// Asks the server to sign the cluster CA's CSR.
    pub async fn sign_intermediate(
        &self,
        request: &IntermediateRequest,
    ) -> Result<IntermediateCertificate, LinkError> {
        let response = self
            .send(
                self.request(reqwest::Method::POST, "/v1/edge/ca")
                    .json(request),
            )
            .await?;
        Self::read(response, "signed cluster CA").await
    }
}
