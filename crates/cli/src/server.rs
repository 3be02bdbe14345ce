//! `weft server`: opens the store, bootstraps on first start, serves the API.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use weft_manage::bootstrap::{TOKEN_FILE, bootstrap};
use weft_manage::ca::{ensure_root, organization_trust_domain};
use weft_manage::{AppState, serve};
use weft_store::{SchemaVersion, Store, StoreError, redact};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Address for the API (port 0 picks a free one; the chosen address is printed)
    #[arg(long, env = "WEFT_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Address for edges (mutual TLS; port 0 picks a free one, printed)
    #[arg(long, env = "WEFT_EDGE_LISTEN", default_value = "127.0.0.1:7071")]
    pub edge_listen: String,
    /// Directory for the embedded store and the first admin token
    /// [default: $XDG_DATA_HOME/weft, else ~/.local/share/weft]
    #[arg(long, env = "WEFT_DATA")]
    pub data: Option<PathBuf>,
    /// Store URL: sqlite:///path/weft.db, or postgres://user:password@host/db to share one store
    /// between replicas [default: sqlite in --data]
    #[arg(long, env = "WEFT_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// The organization's name, used on first start
    #[arg(long, env = "WEFT_ORGANIZATION", default_value = "weft")]
    pub organization: String,
    /// The SPIFFE trust domain of workload identities, set on the
    /// Organization at first start [default: the organization's name]
    #[arg(long, env = "WEFT_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Bring your own root CA: its certificate (PEM). It is added to the
    /// store's roots; on a new store it becomes the signing root
    #[arg(long, env = "WEFT_CA_CERT", requires = "ca_key")]
    pub ca_cert: Option<PathBuf>,
    /// The key of --ca-cert (PEM)
    #[arg(long, env = "WEFT_CA_KEY", requires = "ca_cert")]
    pub ca_key: Option<PathBuf>,
    /// Open the store, bring its schema up to this release's, and exit
    /// (every start does this too; this is for an upgrade step of its own)
    #[arg(long)]
    pub migrate_only: bool,
}

fn describe(schema: SchemaVersion) -> String {
    match schema.found {
        Some(found) if found == schema.now => {
            format!(
                "the store's schema is at version {}, this release's",
                schema.now
            )
        }
        Some(found) => format!(
            "migrated the store's schema from version {found} to {}",
            schema.now
        ),
        None => format!(
            "the store's schema is now at version {} (a new store, or one from before schema versions)",
            schema.now
        ),
    }
}

/// `$XDG_DATA_HOME`, else `~/.local/share`.
pub fn data_home() -> Result<PathBuf> {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local").join("share")))
        .context("neither XDG_DATA_HOME nor HOME is set: pass --data DIR")
}

pub fn default_data_dir() -> Result<PathBuf> {
    Ok(data_home()?.join("weft"))
}

pub async fn run(args: ServerArgs) -> Result<()> {
    let data = match args.data {
        Some(dir) => dir,
        None => default_data_dir()?,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).with_context(|| {
        format!(
            "cannot restrict the data directory {} to its owner",
            data.display()
        )
    })?;
    let data = data.canonicalize().unwrap_or(data);
    let store_url = args
        .store
        .unwrap_or_else(|| format!("sqlite://{}", data.join("weft.db").display()));

    tracing::info!(store = %redact(&store_url), "opening the store");
    let hint = if store_url.starts_with("sqlite:") {
        "is the data directory writable?"
    } else {
        "is the database server running and reachable, and are the credentials and database name in the URL right?"
    };
    let store = match Store::open(&store_url).await {
        Ok(store) => store,
        Err(e @ StoreError::Open { .. }) => {
            return Err(anyhow::Error::new(e).context(format!("cannot open the store ({hint})")));
        }
        Err(e) => return Err(anyhow::Error::new(e).context("cannot open the store")),
    };
    if args.migrate_only {
        println!("weft server: {}", describe(store.schema()));
        store.close().await;
        return Ok(());
    }
    let token_file = bootstrap(
        &store,
        &data,
        &args.organization,
        args.trust_domain.as_deref(),
    )
    .await
    .context("first-start bootstrap failed")?;
    let import = match (&args.ca_cert, &args.ca_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read_to_string(cert)
                .with_context(|| format!("cannot read --ca-cert {}", cert.display()))?,
            std::fs::read_to_string(key)
                .with_context(|| format!("cannot read --ca-key {}", key.display()))?,
        )),
        _ => None,
    };
    let trust_domain = organization_trust_domain(&store)
        .await
        .context("cannot read the organization")?;
    if let Some(asked) = args
        .trust_domain
        .as_deref()
        .filter(|td| *td != trust_domain)
    {
        tracing::warn!(
            asked,
            organization = %trust_domain,
            "--trust-domain only applies at the first start; the Organization's trustDomain decides (change it there, then rotate the root with weft ca)"
        );
    }
    let trust_domain = ensure_root(
        &store,
        &trust_domain,
        import.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
    )
    .await
    .context("cannot set up the root CA")?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    let url = format!("http://{address}");
    let edge_listener = TcpListener::bind(&args.edge_listen)
        .await
        .with_context(|| format!("cannot listen for edges on {}", args.edge_listen))?;
    let edge_url = format!("https://{}", edge_listener.local_addr()?);

    println!(
        "weft server: API listening on {url} (store: {})",
        redact(&store_url)
    );
    match token_file {
        Some(path) => {
            println!(
                "weft server: first start: admin token written to {} (readable by its owner only)",
                path.display()
            );
            println!(
                "weft server: log in with: weft login --server {url} --token-file {}",
                path.display()
            );
        }
        None if data.join(TOKEN_FILE).exists() => {
            println!(
                "weft server: admin token from the first start: {}",
                data.join(TOKEN_FILE).display()
            );
        }
        None => println!("weft server: store already set up; use a token from 'weft token create'"),
    }
    println!("weft server: edges connect to {edge_url} (weft edge --server {edge_url})");
    tracing::info!(%url, %edge_url, store = %redact(&store_url), data = %data.display(), %trust_domain, "weft server started");

    let state = AppState::new(store);
    let edges = tokio::spawn(weft_manage::edge_port::serve(edge_listener, state.clone()));
    serve(listener, state, shutdown_signal()).await?;
    edges.abort();
    tracing::info!("weft server stopped");
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM, so in-flight requests can finish.
pub async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler works on Unix");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
