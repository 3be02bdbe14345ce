//! Load balancing: which endpoint of a cluster takes a request. First the
//! priority, as Envoy shares load between them: each priority's health
//! is its healthy share of weight times the overprovisioning factor
//! (1.4), capped at 100 %; priorities take load in order, each as much as
//! its health (scaled up when the health of all falls short of 100 %),
//! so priority 1 takes only what priority 0 cannot. Then the endpoint
//! within it, by the cluster's policy. With no healthy endpoint anywhere,
//! every endpoint of the first priority is used (Envoy's panic mode).

use std::hash::{Hash, Hasher};

use crate::config::{Assignment, Balancer, Endpoint, Target};

/// Envoy's default overprovisioning factor, in percent.
const OVERPROVISIONING: u64 = 140;
/// Points per unit of weight on a hash ring.
const RING_POINTS: u64 = 64;

/// What a choice may draw on.
pub struct Draw<'a> {
    /// A fresh random number each call.
    pub random: &'a mut dyn FnMut() -> u64,
    /// A counter that moves on with each request (round robin).
    pub turn: u64,
    /// The request's hash (ring hash, sticky sessions).
    pub hash: Option<u64>,
    /// Requests in flight to an endpoint (least request).
    pub active: &'a dyn Fn(&Endpoint) -> usize,
    /// The cluster's hash ring, built once for its endpoints (ring hash).
    pub ring: Option<&'a Ring>,
}

/// A hash ring over a set of endpoints: points for each (by its address
/// and weight), sorted. A pick walks from the request's hash
/// to the first point of an endpoint it may use, which is what a ring
/// built of those endpoints alone would give, since an endpoint's points
/// do not depend on the others.
pub struct Ring(Vec<(u64, Target)>);

impl Ring {
    /// The ring of every endpoint of `assignment`.
    pub fn new(assignment: &Assignment) -> Ring {
        Ring::of(assignment.groups.iter().flat_map(|g| &g.endpoints))
    }

    fn of<'a>(endpoints: impl Iterator<Item = &'a Endpoint>) -> Ring {
        let mut points: Vec<(u64, Target)> = endpoints
            .flat_map(|e| {
                (0..RING_POINTS * u64::from(e.weight.max(1)))
                    .map(move |i| (hash_of((format!("{:?}", e.address), i)), e.address.clone()))
            })
            .collect();
        points.sort_by_key(|(point, _)| *point);
        Ring(points)
    }

    fn pick<'a>(&self, members: &[&'a Endpoint], hash: u64) -> Option<&'a Endpoint> {
        let at = self.0.partition_point(|(point, _)| *point < hash);
        self.0[at..]
            .iter()
            .chain(&self.0[..at])
            .find_map(|(_, target)| members.iter().find(|e| e.address == *target))
            .copied()
    }
}

/// Each priority's share of the load, in percent, by Envoy's rule.
pub fn priority_loads(health: &[(u64, u64)]) -> Vec<u64> {
    let healths: Vec<u64> = health
        .iter()
        .map(|&(healthy, total)| {
            (OVERPROVISIONING * healthy)
                .checked_div(total)
                .map_or(0, |h| h.min(100))
        })
        .collect();
    let total: u64 = healths.iter().sum::<u64>().min(100);
    let mut loads = vec![0; healths.len()];
    if total == 0 {
        if let Some(first) = loads.first_mut() {
            *first = 100;
        }
        return loads;
    }
    let mut remaining = 100;
    for (load, health) in loads.iter_mut().zip(&healths) {
        *load = (health * 100 / total).min(remaining);
        remaining -= *load;
    }
    // Rounding leaves a point or two: the first with health takes them.
    if remaining > 0
        && let Some(i) = healths.iter().position(|h| *h > 0)
    {
        loads[i] += remaining;
    }
    loads
}

/// The endpoint of `assignment` that takes a request, among those
/// `healthy` says are.
pub fn choose<'a>(
    assignment: &'a Assignment,
    healthy: &dyn Fn(&Endpoint) -> bool,
    policy: Balancer,
    draw: &mut Draw,
) -> Option<&'a Endpoint> {
    // Priorities in order, each with its endpoints.
    let mut priorities: Vec<(u32, Vec<&Endpoint>)> = Vec::new();
    for group in &assignment.groups {
        match priorities.iter_mut().find(|(p, _)| *p == group.priority) {
            Some((_, members)) => members.extend(&group.endpoints),
            None => priorities.push((group.priority, group.endpoints.iter().collect())),
        }
    }
    priorities.sort_by_key(|(p, _)| *p);
    let weight = |members: &[&Endpoint], f: &dyn Fn(&Endpoint) -> bool| -> u64 {
        members
            .iter()
            .filter(|e| f(e))
            .map(|e| u64::from(e.weight))
            .sum()
    };
    let health: Vec<(u64, u64)> = priorities
        .iter()
        .map(|(_, m)| (weight(m, healthy), weight(m, &|_| true)))
        .collect();
    let loads = priority_loads(&health);
    let panic = health.iter().all(|(h, _)| *h == 0);
    let mut point = (draw.random)() % 100;
    let level = loads
        .iter()
        .position(|load| {
            if point < *load {
                true
            } else {
                point -= load;
                false
            }
        })
        .unwrap_or(0);
    let members: Vec<&Endpoint> = priorities
        .get(level)?
        .1
        .iter()
        .copied()
        .filter(|e| panic || healthy(e))
        .collect();
    pick(&members, policy, draw)
}

fn by_weight<'a>(members: &[&'a Endpoint], point: u64) -> Option<&'a Endpoint> {
    let total: u64 = members.iter().map(|e| u64::from(e.weight.max(1))).sum();
    if total == 0 {
        return None;
    }
    let mut at = point % total;
    for e in members {
        let w = u64::from(e.weight.max(1));
        if at < w {
            return Some(e);
        }
        at -= w;
    }
    None
}

fn pick<'a>(members: &[&'a Endpoint], policy: Balancer, draw: &mut Draw) -> Option<&'a Endpoint> {
    match policy {
        Balancer::RoundRobin => by_weight(members, draw.turn),
        Balancer::Random => by_weight(members, (draw.random)()),
        Balancer::LeastRequest => {
            // Two random choices; the one with fewer requests in flight.
            let a = by_weight(members, (draw.random)())?;
            let b = by_weight(members, (draw.random)())?;
            Some(if (draw.active)(b) < (draw.active)(a) {
                b
            } else {
                a
            })
        }
        Balancer::RingHash => {
            let Some(hash) = draw.hash else {
                return by_weight(members, (draw.random)());
            };
            match draw.ring {
                Some(ring) => ring.pick(members, hash),
                None => Ring::of(members.iter().copied()).pick(members, hash),
            }
        }
    }
}

fn hash_of(value: impl Hash) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Locality, LocalityGroup, Target};

    fn endpoint(port: u16) -> Endpoint {
        Endpoint {
            address: Target::Ip(([127, 0, 0, 1], port).into()),
            hostname: String::new(),
            weight: 1,
        }
    }

    fn assignment(groups: &[(u32, &[u16])]) -> Assignment {
        Assignment {
            cluster: "c".into(),
            groups: groups
                .iter()
                .map(|(priority, ports)| LocalityGroup {
                    priority: *priority,
                    locality: Locality::default(),
                    endpoints: ports.iter().map(|p| endpoint(*p)).collect(),
                })
                .collect(),
        }
    }

    fn port(e: &Endpoint) -> u16 {
        match e.address {
            Target::Ip(a) => a.port(),
            Target::Host(_, p) => p,
        }
    }

    #[test]
    fn priorities_share_load_as_envoy_shares_it() {
        assert_eq!(priority_loads(&[(4, 4), (2, 2)]), [100, 0]);
        // Half of priority 0 healthy: 70 % there, the rest next.
        assert_eq!(priority_loads(&[(2, 4), (2, 2)]), [70, 30]);
        assert_eq!(priority_loads(&[(0, 4), (2, 2)]), [0, 100]);
        // Everything degraded: scaled up to 100 %.
        assert_eq!(priority_loads(&[(1, 4), (1, 4)]), [50, 50]);
        assert_eq!(priority_loads(&[(0, 2), (0, 2)]), [100, 0]);
    }

    #[test]
    fn endpoints_are_chosen_by_policy_among_the_healthy() {
        let set = assignment(&[(0, &[1, 2]), (1, &[9])]);
        let mut seed = 7u64;
        let mut random = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            seed >> 11
        };
        let none = |_: &Endpoint| 0;
        let mut chosen = |healthy: &dyn Fn(&Endpoint) -> bool, policy, turn, hash| {
            let mut draw = Draw {
                random: &mut random,
                turn,
                hash,
                active: &none,
                ring: None,
            };
            choose(&set, healthy, policy, &mut draw).map(port)
        };
        let all = |_: &Endpoint| true;
        let turns: Vec<_> = (0..4)
            .map(|t| chosen(&all, Balancer::RoundRobin, t, None))
            .collect();
        assert_eq!(turns, [Some(1), Some(2), Some(1), Some(2)]);
        // Priority 0 down: priority 1 takes everything.
        let only_nine = |e: &Endpoint| port(e) == 9;
        assert!((0..20).all(|t| chosen(&only_nine, Balancer::Random, t, None) == Some(9)));
        // A ring sends one key to one endpoint, every time.
        let first = chosen(&all, Balancer::RingHash, 0, Some(42));
        assert!((0..20).all(|t| chosen(&all, Balancer::RingHash, t, Some(42)) == first));
        // The cluster's ring built once picks as a ring of the members
        // alone, the unhealthy skipped.
        let ring = Ring::new(&set);
        let only_two = |e: &Endpoint| port(e) == 2;
        for hash in [1, 42, 1 << 40, u64::MAX - 7] {
            let members: Vec<&Endpoint> = set.groups[0].endpoints.iter().collect();
            let alone: Vec<&Endpoint> = members.iter().copied().filter(|e| only_two(e)).collect();
            assert_eq!(
                ring.pick(&members, hash),
                Ring::new(&set).pick(&members, hash)
            );
            assert_eq!(ring.pick(&alone, hash).map(port), Some(2));
        }
        // Nothing healthy: priority 0 still serves (panic mode).
        let nothing = |_: &Endpoint| false;
        assert!(matches!(
            chosen(&nothing, Balancer::RoundRobin, 0, None),
            Some(1 | 2)
        ));
    }

    #[test]
    fn least_request_prefers_the_idle() {
        let set = assignment(&[(0, &[1, 2])]);
        let busy = |e: &Endpoint| if port(e) == 1 { 10 } else { 0 };
        let mut n = 0u64;
        let mut alternate = move || {
            n += 1;
            n
        };
        let mut draw = Draw {
            random: &mut alternate,
            turn: 0,
            hash: None,
            active: &busy,
            ring: None,
        };
        let picks: Vec<u16> = (0..10)
            .filter_map(|_| choose(&set, &|_| true, Balancer::LeastRequest, &mut draw).map(port))
            .collect();
        assert!(picks.iter().all(|p| *p == 2), "{picks:?}");
    }
}
