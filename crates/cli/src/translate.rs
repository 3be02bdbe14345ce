//! `weft x translate`: the edge's translation, offline.

use std::path::PathBuf;

use weft_agent::workload::Workload;
use weft_api::Resource;
use weft_api::edge::Locality;
use weft_control::directory::Directory;
use weft_control::translate::{Config, translate};

use crate::client::{CliError, Exit};
use crate::manifests;
use crate::output;

#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    /// Manifest files or directories; - for stdin
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// A YAML list of workloads, as their proxies would announce them
    #[arg(long)]
    pub registry: PathBuf,
    /// The cluster to translate for
    #[arg(long)]
    pub cluster: String,
    /// Print only this proxy's resources
    #[arg(long)]
    pub node: Option<String>,
    /// The trust domain of workload certificates (the edge has it from the
    /// server): traffic between proxies is mutual TLS
    #[arg(long, default_value = "weft")]
    pub trust_domain: String,
    /// The other clusters, as an edge keeps them (`EDGE-DATA/directory.json`)
    #[arg(long)]
    pub directory: Option<PathBuf>,
    /// This cluster's region (other clusters are ranked against it)
    #[arg(long, default_value = "")]
    pub region: String,
    /// This cluster's zone
    #[arg(long, default_value = "")]
    pub zone: String,
    /// `readable`: weft's proxy model, as YAML; `envoy`: per proxy, the
    /// exact xDS resources the edge would send, as JSON in the shape of
    /// Envoy's config dump
    #[arg(long, value_enum, default_value_t = Format::Readable)]
    pub format: Format,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Readable,
    Envoy,
}

pub fn run(args: TranslateArgs) -> Result<bool, CliError> {
    let documents = manifests::read(&args.files)?;
    let mut resources = Vec::new();
    for doc in documents {
        let resource: Resource = serde_json::from_value(doc.value).map_err(|e| {
            CliError::new(
                Exit::Invalid,
                format!("{}: not a resource: {e}", doc.source),
            )
        })?;
        resources.push(resource);
    }
    let text = std::fs::read_to_string(&args.registry)
        .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", args.registry.display())))?;
    let workloads: Vec<Workload> = serde_norway::from_str(&text)
        .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", args.registry.display())))?;
    let directory: Directory = match &args.directory {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))?;
            serde_json::from_str(&text)
                .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))?
        }
        None => Directory::default(),
    };
    let config = Config::parse(&args.cluster, &resources)
        .with_trust_domain(Some(args.trust_domain))
        .with_locality(Locality {
            region: args.region,
            zone: args.zone,
            ..Locality::default()
        });
    let mut translation = translate(&config, &workloads, &directory).per_proxy();
    if let Some(node) = &args.node {
        if !translation.proxies.contains_key(node) {
            return Err(CliError::new(
                Exit::NotFound,
                format!(
                    "no workload in {} has node {node:?}",
                    args.registry.display()
                ),
            ));
        }
        translation.proxies.retain(|n, _| n == node);
    }
    let mut dumps = serde_json::Map::new();
    for (node, proxy) in &translation.proxies {
        let snapshot = proxy
            .to_snapshot()
            .map_err(|e| CliError::new(Exit::Failed, format!("proxy {node}: {e}")))?;
        if args.format == Format::Envoy {
            let dump = weft_xds::json::config_dump(&snapshot)
                .map_err(|e| CliError::new(Exit::Failed, format!("proxy {node}: {e}")))?;
            dumps.insert(node.clone(), dump);
        }
    }
    match args.format {
        Format::Readable => print!("{}", output::yaml(&translation)),
        Format::Envoy => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"proxies": dumps}))
                .expect("JSON serializes")
        ),
    }
    for e in &translation.errors {
        eprintln!("error: {} {}: {}", e.path, e.field, e.message);
    }
    Ok(translation.errors.is_empty())
}
