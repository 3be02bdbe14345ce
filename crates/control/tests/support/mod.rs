//! What the golden inputs (`testdata/in/NAME.yaml`) hold, for the tests
//! that translate them.

use serde::Deserialize;
use weft_agent::workload::Workload;
use weft_api::Resource;
use weft_api::edge::Locality;
use weft_control::directory::Directory;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    pub cluster: String,
    /// With a trust domain, traffic between proxies is mutual TLS.
    #[serde(default)]
    pub trust_domain: Option<String>,
    pub workloads: Vec<Workload>,
    pub manifests: Vec<Resource>,
    /// Where this cluster is, and what the other clusters run.
    #[serde(default)]
    pub locality: Locality,
    #[serde(default)]
    pub directory: Directory,
}
