//! `weft authservice`: browser sign-in (OpenID Connect) for gateway
//! servers, as Envoy's external authorization service.
//!
//! Data flows: the service gets a workload identity from its edge and
//! announces itself on an ADS stream ([`weft_agent::addon`]); the edge
//! sends every gateway server with sign-in and tells the gateways where
//! the service listens. A gateway asks it about each request to such a
//! server (`envoy.service.auth.v3.Authorization/Check`, the server named
//! in the check's context) and gets an answer ([`check`]): go on, with the
//! tokens in headers, or answer the browser (a redirect to the provider,
//! a session cookie after the callback, a page). Tokens stay here, in
//! memory or Redis ([`store`]); the browser holds only an opaque id.

mod check;
mod provider;
mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use prost::Name;
use weft_agent::addon::Addon;
use weft_agent::workload::{Role, Workload};
use weft_xds::authservice::{LoginServer, LoginServers, SERVER_KEY};

use crate::redis_client::Redis;
use crate::serve::{AddonError, serve};
use check::{Decision, Request};
use provider::Providers;
use store::{Memory, Store};

#[derive(Debug, Clone)]
pub struct Options {
    /// Where gateways call it (mutual TLS, gRPC).
    pub listen: SocketAddr,
    /// Plain HTTP: `/metrics`, `/healthz`, `/readyz`.
    pub admin: SocketAddr,
    /// The Redis for servers whose sessions live there.
    pub redis: Option<String>,
    /// The directory of client secrets, one file per name.
    pub secrets: PathBuf,
    pub edge: SocketAddr,
    pub credential_file: PathBuf,
    pub node_id: Option<String>,
}

/// How a check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A live session: on to the app.
    Allowed,
    /// A live session whose tokens were refreshed first.
    Refreshed,
    /// Sent to the provider.
    SignInStarted,
    /// Back from the provider with a new session.
    SignedIn,
    SignedOut,
    /// No session, and not a browser: 401.
    Unauthenticated,
    /// A page saying what went wrong.
    Refused,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Refreshed => "refreshed",
            Outcome::SignInStarted => "sign_in_started",
            Outcome::SignedIn => "signed_in",
            Outcome::SignedOut => "signed_out",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Refused => "refused",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone)]
struct Metrics {
    checks: Family<OutcomeLabel, Counter>,
    seconds: Histogram,
    servers: Gauge,
}

impl Metrics {
    fn new(registry: &mut Registry) -> Metrics {
        let metrics = Metrics {
            checks: Family::default(),
            // 100 µs to about 3 s (a callback waits for the provider).
            seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            servers: Gauge::default(),
        };
        registry.register(
            "weft_authservice_checks",
            "Requests checked, by outcome",
            metrics.checks.clone(),
        );
        registry.register(
            "weft_authservice_check_seconds",
            "How long a check took (a sign-in's callback includes the provider)",
            metrics.seconds.clone(),
        );
        registry.register(
            "weft_authservice_servers",
            "Gateway servers with sign-in, from the edge",
            metrics.servers.clone(),
        );
        metrics
    }
}

/// The service's state, shared by every check.
pub struct Service {
    servers: RwLock<Arc<BTreeMap<String, LoginServer>>>,
    providers: Providers,
    memory: Memory,
    redis: Option<Redis>,
    secrets: PathBuf,
    metrics: Metrics,
}

impl Service {
    fn store(&self, server: &LoginServer) -> Store<'_> {
        if server.redis {
            Store::Redis(self.redis.as_ref())
        } else {
            Store::Memory(&self.memory)
        }
    }

    fn apply(&self, resources: &[Any]) -> Result<usize, String> {
        let servers: BTreeMap<String, LoginServer> =
            crate::serve::decode::<LoginServers>(resources)?
                .into_iter()
                .flat_map(|decoded| decoded.servers)
                .map(|server| (server.id.clone(), server))
                .collect();
        let count = servers.len();
        *self.servers.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(servers);
        self.metrics.servers.set(count as i64);
        Ok(count)
    }
}

fn header(name: &str, value: &str, append: bool) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value: value.to_string(),
            ..Default::default()
        }),
        append_action: if append {
            HeaderAppendAction::AppendIfExistsOrAdd
        } else {
            HeaderAppendAction::OverwriteIfExistsOrAdd
        } as i32,
        ..Default::default()
    }
}

fn response(decision: Decision) -> CheckResponse {
    match decision {
        Decision::Allow(headers) => CheckResponse {
            status: Some(RpcStatus {
                code: tonic::Code::Ok as i32,
                ..Default::default()
            }),
            // Set, never appended: what the client sent in these headers
            // is replaced.
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: headers.iter().map(|(k, v)| header(k, v, false)).collect(),
                ..Default::default()
            })),
            ..Default::default()
        },
        Decision::Answer {
            status,
            headers,
            body,
        } => CheckResponse {
            status: Some(RpcStatus {
                code: tonic::Code::Unauthenticated as i32,
                ..Default::default()
            }),
            http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus {
                    code: i32::from(status),
                }),
                headers: headers
                    .iter()
                    .map(|(k, v)| header(k, v, k == "set-cookie"))
                    .collect(),
                body,
            })),
            ..Default::default()
        },
    }
}

struct Checks(Arc<Service>);

#[tonic::async_trait]
impl Authorization for Checks {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let service = &self.0;
        let attributes = request.into_inner().attributes.unwrap_or_default();
        let server_id = attributes
            .context_extensions
            .get(SERVER_KEY)
            .cloned()
            .unwrap_or_default();
        let servers = service
            .servers
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some(server) = servers.get(&server_id) else {
            // The gateway's configuration is ahead of this service's (or
            // names a server it was never sent): no session can be checked.
            tracing::warn!(server = %server_id, "a check for a server this service does not know");
            return Err(tonic::Status::unavailable(format!(
                "weft authservice: no server {server_id:?} (yet)"
            )));
        };
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let get = |name: &str| http.headers.get(name).map(String::as_str);
        let request = Request {
            method: &http.method,
            scheme: if http.scheme.is_empty() {
                "https"
            } else {
                &http.scheme
            },
            host: http.host.split(':').next().unwrap_or_default(),
            port: get("x-forwarded-port"),
            path: &http.path,
            cookie: get("cookie"),
            accept: get("accept"),
        };
        let (decision, outcome) = service.decide(server, &request).await;
        service
            .metrics
            .checks
            .get_or_create(&OutcomeLabel {
                outcome: outcome.as_str(),
            })
            .inc();
        service
            .metrics
            .seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(tonic::Response::new(response(decision)))
    }
}

pub use crate::serve::Listening;

/// How long a check waits for Redis: a session's read, a sign-in's write.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs the service until `shutdown` completes; `announce` is told where
/// it listens once it has its certificate.
pub async fn run(
    options: Options,
    announce: impl FnOnce(&Listening),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AddonError> {
    let redis = match &options.redis {
        Some(url) => Some(Redis::new(url, REDIS_TIMEOUT).map_err(|e| {
            AddonError::Config(format!(
                "the Redis address {url:?}: {e}; hint: give --redis redis://HOST:PORT"
            ))
        })?),
        None => None,
    };
    let mut registry = Registry::default();
    let service = Arc::new(Service {
        servers: RwLock::default(),
        providers: Providers::new().map_err(|e| AddonError::Config(e.to_string()))?,
        memory: Memory::default(),
        redis,
        secrets: options.secrets.clone(),
        metrics: Metrics::new(&mut registry),
    });
    let workload = |address: SocketAddr| Workload {
        node: options.node_id.clone().unwrap_or_default(),
        service: weft_identity::AUTHSERVICE_ACCOUNT.into(),
        namespace: weft_identity::RESERVED_NAMESPACE.into(),
        service_account: weft_identity::AUTHSERVICE_ACCOUNT.into(),
        labels: Default::default(),
        address: address.ip().to_string(),
        port: address.port(),
        app_port: None,
        outbound_port: None,
        role: Role::Authservice,
        calls: Vec::new(),
    };
    let applied = service.clone();
    serve(
        crate::serve::Options {
            what: "sign-in service",
            listen: options.listen,
            admin: options.admin,
            edge: options.edge,
            credential_file: options.credential_file,
            type_url: LoginServers::type_url(),
        },
        workload,
        move |resources| {
            let count = applied.apply(resources)?;
            tracing::info!(servers = count, "servers with sign-in from the edge");
            Ok(())
        },
        |_: &Addon| tonic::service::Routes::new(AuthorizationServer::new(Checks(service))),
        registry,
        announce,
        shutdown,
    )
    .await
}
