//! End-user token checks (Envoy's `jwt_authn` filter) as weft's
//! translation writes them: providers by issuer with their audiences,
//! keys inline or fetched from a JWKS URI through a cluster, claims
//! copied into headers, the payload kept for authorization; rules that
//! say, by path, which providers a request's token may come from and
//! whether it may come without one.

use std::collections::BTreeMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier as DataSpecifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwtAuthentication, JwtProvider, JwtRequirement, RemoteJwks,
};

use super::route::{RouteMatch, route_match};
use super::{Refusals, at, duration};

/// The filter's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenCheck {
    pub providers: BTreeMap<String, Provider>,
    /// In order; the first whose match holds decides.
    pub rules: Vec<TokenRule>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenRule {
    pub matcher: RouteMatch,
    /// A token from any of these providers is accepted.
    pub providers: Vec<String>,
    /// A request without a token passes (one with a bad token does not).
    pub allow_missing: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub keys: Keys,
    pub clock_skew: Duration,
    /// Claims copied into request headers: (claim, header).
    pub claim_to_headers: Vec<(String, String)>,
    /// The token stays in the request (else its header is removed).
    pub forward: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Keys {
    /// A JWKS document given in the configuration.
    Inline(String),
    /// Fetched from `uri` through `cluster`, again every `refresh`, and
    /// after `retry` when a fetch fails.
    Remote {
        uri: String,
        cluster: String,
        timeout: Duration,
        refresh: Duration,
        retry: Duration,
    },
}

/// Envoy's default JWKS cache duration and its fetch timeout.
const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) fn token_check(
    config: &JwtAuthentication,
    here: &str,
    r: &mut Refusals,
) -> Option<TokenCheck> {
    let JwtAuthentication {
        providers,
        rules,
        filter_state_rules,
        bypass_cors_preflight,
        requirement_map,
        strip_failure_response,
        stat_prefix,
    } = config;
    r.unset(&at(here, "filter_state_rules"), filter_state_rules);
    r.unset(&at(here, "bypass_cors_preflight"), bypass_cors_preflight);
    r.unset(&at(here, "requirement_map"), requirement_map);
    r.unset(&at(here, "strip_failure_response"), strip_failure_response);
    r.unset(&at(here, "stat_prefix"), stat_prefix);
    let providers: BTreeMap<String, Provider> = providers
        .iter()
        .filter_map(|(name, p)| {
            provider(p, &format!("{here}.providers[{name:?}]"), r).map(|p| (name.clone(), p))
        })
        .collect();
    let rules = rules
        .iter()
        .enumerate()
        .filter_map(|(i, rule)| {
            let rule_at = format!("{here}.rules[{i}]");
            let matcher = route_match(rule.r#match.as_ref(), &format!("{rule_at}.match"), r);
            let Some(RequirementType::Requires(requires)) = &rule.requirement_type else {
                r.refuse(&rule_at, "only requires");
                return None;
            };
            let (providers_of, allow_missing) =
                requirement(requires, &format!("{rule_at}.requires"), r)?;
            for name in &providers_of {
                if !providers.contains_key(name) {
                    r.refuse(&rule_at, format!("no provider {name:?}"));
                }
            }
            Some(TokenRule {
                matcher,
                providers: providers_of,
                allow_missing,
            })
        })
        .collect();
    Some(TokenCheck { providers, rules })
}

/// A provider, or any of several, optionally with a missing token allowed.
fn requirement(
    requires: &JwtRequirement,
    here: &str,
    r: &mut Refusals,
) -> Option<(Vec<String>, bool)> {
    match &requires.requires_type {
        Some(RequiresType::ProviderName(name)) => Some((vec![name.clone()], false)),
        Some(RequiresType::RequiresAny(any)) => {
            let mut names = Vec::new();
            let mut allow_missing = false;
            for (i, one) in any.requirements.iter().enumerate() {
                match &one.requires_type {
                    Some(RequiresType::ProviderName(name)) => names.push(name.clone()),
                    Some(RequiresType::AllowMissing(_)) => allow_missing = true,
                    _ => r.refuse(
                        format!("{here}.requires_any.requirements[{i}]"),
                        "only a provider name or allow_missing",
                    ),
                }
            }
            Some((names, allow_missing))
        }
        _ => {
            r.refuse(here, "only a provider name, or requires_any of them");
            None
        }
    }
}

#[allow(deprecated)]
fn provider(p: &JwtProvider, here: &str, r: &mut Refusals) -> Option<Provider> {
    let JwtProvider {
        issuer,
        audiences,
        subjects,
        require_expiration,
        max_lifetime,
        forward,
        from_headers,
        from_params,
        from_cookies,
        forward_payload_header,
        pad_forward_payload_header,
        payload_in_metadata: _,
        normalize_payload_in_metadata,
        header_in_metadata,
        failed_status_in_metadata: _,
        clock_skew_seconds,
        jwt_cache_config,
        claim_to_headers,
        clear_route_cache,
        jwks_source_specifier,
    } = p;
    r.unset(&at(here, "subjects"), subjects);
    r.unset(&at(here, "require_expiration"), require_expiration);
    r.unset(&at(here, "max_lifetime"), max_lifetime);
    r.unset(&at(here, "from_headers"), from_headers);
    r.unset(&at(here, "from_params"), from_params);
    r.unset(&at(here, "from_cookies"), from_cookies);
    r.unset(&at(here, "forward_payload_header"), forward_payload_header);
    r.unset(
        &at(here, "pad_forward_payload_header"),
        pad_forward_payload_header,
    );
    r.unset(
        &at(here, "normalize_payload_in_metadata"),
        normalize_payload_in_metadata,
    );
    r.unset(&at(here, "header_in_metadata"), header_in_metadata);
    r.unset(&at(here, "jwt_cache_config"), jwt_cache_config);
    r.unset(&at(here, "clear_route_cache"), clear_route_cache);
    let claim_to_headers = claim_to_headers
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            if !c.claim_path.is_empty() {
                r.refuse(
                    format!("{here}.claim_to_headers[{i}].claim_path"),
                    "only a top-level claim_name",
                );
                return None;
            }
            Some((c.claim_name.clone(), c.header_name.to_ascii_lowercase()))
        })
        .collect();
    let keys = match jwks_source_specifier {
        Some(JwksSourceSpecifier::LocalJwks(source)) => match &source.specifier {
            Some(DataSpecifier::InlineString(text)) => Keys::Inline(text.clone()),
            Some(DataSpecifier::InlineBytes(bytes)) => {
                Keys::Inline(String::from_utf8_lossy(bytes).into_owned())
            }
            _ => {
                r.refuse(at(here, "local_jwks"), "only inline keys");
                return None;
            }
        },
        Some(JwksSourceSpecifier::RemoteJwks(remote)) => {
            remote_keys(remote, &at(here, "remote_jwks"), r)?
        }
        None => {
            r.refuse(here, "name the keys (local_jwks or remote_jwks)");
            return None;
        }
    };
    Some(Provider {
        issuer: issuer.clone(),
        audiences: audiences.clone(),
        keys,
        clock_skew: Duration::from_secs(u64::from(*clock_skew_seconds)),
        claim_to_headers,
        forward: *forward,
    })
}

fn remote_keys(remote: &RemoteJwks, here: &str, r: &mut Refusals) -> Option<Keys> {
    let RemoteJwks {
        http_uri,
        cache_duration,
        async_fetch,
        retry_policy,
    } = remote;
    r.unset(&at(here, "retry_policy"), retry_policy);
    let Some(uri) = http_uri else {
        r.refuse(at(here, "http_uri"), "missing");
        return None;
    };
    let cluster = match &uri.http_upstream_type {
        Some(HttpUpstreamType::Cluster(cluster)) => cluster.clone(),
        _ => {
            r.refuse(at(here, "http_uri"), "only a cluster");
            return None;
        }
    };
    let timeout =
        duration(uri.timeout.as_ref(), &at(here, "http_uri.timeout"), r).unwrap_or(DEFAULT_TIMEOUT);
    let refresh = duration(cache_duration.as_ref(), &at(here, "cache_duration"), r)
        .unwrap_or(DEFAULT_REFRESH);
    let retry = async_fetch
        .as_ref()
        .and_then(|f| {
            duration(
                f.failed_refetch_duration.as_ref(),
                &at(here, "async_fetch.failed_refetch_duration"),
                r,
            )
        })
        .unwrap_or(Duration::from_secs(1));
    Some(Keys::Remote {
        uri: uri.uri.clone(),
        cluster,
        timeout,
        refresh,
        retry,
    })
}
