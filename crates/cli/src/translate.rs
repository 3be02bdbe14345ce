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

/// What translation reads, from files: what an edge has from the
/// server, its registry and its directory.
#[derive(Debug, clap::Args)]
pub struct Inputs {
    /// Manifest files or directories; - for stdin
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// A YAML list of workloads, as their proxies would announce them
    #[arg(long)]
    pub registry: Option<PathBuf>,
    /// The cluster to translate for
    #[arg(long)]
    pub cluster: String,
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
}

/// The inputs, read and parsed.
pub struct Loaded {
    pub config: Config,
    pub resources: Vec<Resource>,
    pub workloads: Vec<Workload>,
    pub directory: Directory,
}

fn read(path: &std::path::Path) -> Result<String, CliError> {
    std::fs::read_to_string(path)
        .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))
}

impl Inputs {
    pub fn load(&self) -> Result<Loaded, CliError> {
        if self.files.is_empty() {
            return Err(CliError::new(Exit::Invalid, "give the manifests with -f"));
        }
        let mut resources = Vec::new();
        for doc in manifests::read(&self.files)? {
            let resource: Resource = serde_json::from_value(doc.value).map_err(|e| {
                CliError::new(
                    Exit::Invalid,
                    format!("{}: not a resource: {e}", doc.source),
                )
            })?;
            resources.push(resource);
        }
        let workloads: Vec<Workload> = match &self.registry {
            Some(path) => serde_norway::from_str(&read(path)?)
                .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))?,
            None => Vec::new(),
        };
        let directory: Directory = match &self.directory {
            Some(path) => serde_json::from_str(&read(path)?)
                .map_err(|e| CliError::new(Exit::Invalid, format!("{}: {e}", path.display())))?,
            None => Directory::default(),
        };
        let config = Config::parse(&self.cluster, &resources)
            .with_trust_domain(Some(self.trust_domain.clone()))
            .with_locality(Locality {
                region: self.region.clone(),
                zone: self.zone.clone(),
                ..Locality::default()
            });
        Ok(Loaded {
            config,
            resources,
            workloads,
            directory,
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    pub inputs: Inputs,
    /// Print only this proxy's resources
    #[arg(long)]
    pub node: Option<String>,
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
    let Loaded {
        config,
        workloads,
        directory,
        ..
    } = args.inputs.load()?;
    let mut translation = translate(&config, &workloads, &directory).per_proxy();
    if let Some(node) = &args.node {
        if !translation.proxies.contains_key(node) {
            return Err(CliError::new(
                Exit::NotFound,
                format!("no workload in the registry has node {node:?}"),
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
