//! What each proxy reports: its listeners' side of a call, and the stamp
//! a caller puts on its calls so the callee counts it by service, version
//! and cluster (the caller's SPIFFE ID alone names only its namespace and
//! service account).

use weft_agent::workload::Workload;

use super::Config;
use crate::proxy::{Side, Telemetry};

/// The label of a workload's version.
const VERSION_LABEL: &str = "version";

/// `CLUSTER/NAMESPACE/SERVICE/VERSION`: who `w` is, as callees count it.
pub fn source_stamp(cluster: &str, w: &Workload) -> String {
    format!(
        "{cluster}/{}/{}/{}",
        w.namespace,
        w.service,
        w.labels.get(VERSION_LABEL).map_or("", String::as_str)
    )
}

/// A listener `w` calls out through.
pub(super) fn caller(config: &Config, w: &Workload) -> Telemetry {
    Telemetry {
        side: Side::Outbound,
        source: Some(source_stamp(&config.cluster, w)),
    }
}

/// A listener that receives `w`'s calls.
pub(super) fn callee() -> Telemetry {
    Telemetry {
        side: Side::Inbound,
        source: None,
    }
}
