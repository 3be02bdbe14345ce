//! Locality: which other clusters back a service up, and at which
//! priority, ranked against this cluster's locality.

use weft_api::edge::{Locality, Site};
use weft_api::traffic::LocalityPolicy;

use super::{
    parse::Config,
    plan::{Policy, ServiceKey},
};
use crate::directory::Directory;
use crate::proxy::{RemoteEndpoints, SocketAddr};

/// Whether two localities agree on `attribute` (`region`, `zone`,
/// `network` or `label:KEY`); unset never agrees.
pub(super) fn same_at(attribute: &str, a: &Locality, b: &Locality) -> bool {
    let pick = |l: &'_ Locality| -> Option<String> {
        match attribute {
            "region" => Some(l.region.clone()),
            "zone" => Some(l.zone.clone()),
            "network" => Some(l.network.clone()),
            other => other
                .strip_prefix("label:")
                .and_then(|key| l.labels.get(key).cloned()),
        }
    };
    matches!((pick(a), pick(b)), (Some(x), Some(y)) if !x.is_empty() && x == y)
}

/// Where another cluster's east-west gateways are (`IP:PORT`s it
/// published that parse).
pub(super) fn gateway_addresses(site: &Site) -> Vec<SocketAddr> {
    site.gateways
        .iter()
        .filter_map(|g| g.parse::<std::net::SocketAddr>().ok())
        .map(|g| SocketAddr {
            address: g.ip().to_string(),
            port: g.port(),
        })
        .collect()
}

/// How many leading attributes of `order` another cluster at `there`
/// shares with this one at `here`: the more, the nearer.
pub(super) fn agreement(order: &[&str], here: &Locality, there: &Locality) -> usize {
    order
        .iter()
        .take_while(|attribute| same_at(attribute, here, there))
        .count()
}

/// The other clusters that run `key` for callers of `workspace`, with
/// their gateways at a priority each: clusters that agree with this one
/// on more leading attributes of the failover priority come first, all
/// behind the local instances (if there are any).
pub(super) fn remote_endpoints(
    config: &Config,
    directory: &Directory,
    key: &ServiceKey,
    workspace: Option<&str>,
    policy: &Policy,
    local: bool,
) -> Vec<RemoteEndpoints> {
    let locality = policy.locality.as_ref();
    if workspace.is_none() || locality.and_then(|l| l.cross_cluster) == Some(false) {
        return Vec::new();
    }
    let order: Vec<&str> = match locality {
        Some(l) if !l.failover_priority.is_empty() => {
            l.failover_priority.iter().map(String::as_str).collect()
        }
        _ => LocalityPolicy::DEFAULT_PRIORITY.to_vec(),
    };
    let item = format!("{}/{}", key.namespace, key.name);
    let mut ranked = Vec::new();
    for (name, remote) in &directory.clusters {
        let (Some(site), Some(service)) = (&remote.site, remote.services.get(&item)) else {
            continue;
        };
        let gateways = gateway_addresses(site);
        // Only the same service: in the same workspace there as here.
        let same_workspace = config
            .workspace_at(name, &key.namespace)
            .map(|w| w.path.as_str())
            == workspace;
        if *name == config.cluster || gateways.is_empty() || service.healthy == 0 || !same_workspace
        {
            continue;
        }
        let agreeing = agreement(&order, &config.locality, &site.locality);
        let weight = service.healthy.div_ceil(gateways.len() as u32);
        ranked.push((
            order.len() - agreeing,
            RemoteEndpoints {
                cluster: name.clone(),
                region: site.locality.region.clone(),
                zone: site.locality.zone.clone(),
                priority: 0,
                weight,
                gateways,
            },
        ));
    }
    let mut ranks: Vec<usize> = ranked.iter().map(|(rank, _)| *rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let first = u32::from(local);
    let mut remote: Vec<RemoteEndpoints> = ranked
        .into_iter()
        .map(|(rank, mut endpoints)| {
            let level = ranks.iter().position(|r| *r == rank).unwrap_or_default();
            endpoints.priority = first + level as u32;
            endpoints
        })
        .collect();
    remote.sort_by(|a, b| (a.priority, &a.cluster).cmp(&(b.priority, &b.cluster)));
    remote
}
