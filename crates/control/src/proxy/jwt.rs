//! End-user JWT checks → Envoy's `jwt_authn` filter, the header
//! mutation that drops forwarded-claim headers callers sent, and the local
//! replies that make every invalid token a 401.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::{DataSource, data_source::Specifier as DataSpecifier};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as HttpFilterConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::util::pack_any;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::HeaderMutation as HeaderMutationRule;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as HeaderMutationAction;
use envoy_types::pb::envoy::config::core::v3::HttpUri;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::{
    HeaderMutation as HeaderMutationFilter, Mutations,
};
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_provider::JwksSourceSpecifier as JwksSource;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::jwt_requirement::RequiresType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::requirement_rule::RequirementType;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    JwksAsyncFetch, JwtAuthentication, JwtClaimToHeader, JwtProvider as XdsJwtProvider,
    JwtRequirement, JwtRequirementOrList, RemoteJwks, RequirementRule,
};
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::PathSegment as MetadataPath;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment as MetadataSegment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{
    MetadataMatcher, ValueMatcher,
};
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier as LogFilter;
use envoy_types::pb::envoy::config::accesslog::v3::{
    AccessLogFilter, MetadataFilter as LogMetadataFilter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::DoubleMatcher;
use envoy_types::pb::envoy::r#type::matcher::v3::double_matcher::MatchPattern as DoublePattern;
use envoy_types::pb::envoy::r#type::v3::DoubleRange;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    LocalReplyConfig, ResponseMapper,
};

use super::convert::{duration, uint};
use super::{HeaderCondition, HeaderTest, Jwks, JwtCheck, JwtProvider, RouteMatch, ScopedJwt};

/// Where the JWT filter leaves a valid token's claims for authorization,
/// and why it refused one.
pub(super) const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
pub(super) const JWT_PAYLOAD: &str = "payload";
pub(super) const JWT_FAILURE: &str = "failure";
/// The failure's code when a request carries no token (Envoy's
/// `Status::JwtMissed`, "Jwt is missing").
const JWT_MISSING: u16 = 1;

impl JwtProvider {
    pub(super) fn to_xds(&self) -> XdsJwtProvider {
        // The name is the key of the provider map, set by the caller.
        let JwtProvider {
            name: _,
            issuer,
            audiences,
            jwks,
            clock_skew_s,
            forward_claims,
            forward_token,
        } = self;
        let jwks = match &jwks {
            Jwks::Inline(doc) => JwksSource::LocalJwks(DataSource {
                specifier: Some(DataSpecifier::InlineString(doc.clone())),
                ..Default::default()
            }),
            Jwks::Remote {
                uri,
                cluster,
                refresh_ms,
            } => JwksSource::RemoteJwks(RemoteJwks {
                http_uri: Some(HttpUri {
                    uri: uri.clone(),
                    timeout: Some(duration(5_000)),
                    http_upstream_type: Some(HttpUpstreamType::Cluster(cluster.clone())),
                }),
                cache_duration: Some(duration(*refresh_ms)),
                // Fetched once per proxy before the listener takes
                // requests (rather than by each worker, holding requests),
                // and again when the cache expires; a failed fetch is
                // retried after a second rather than after `refresh_ms`.
                async_fetch: Some(JwksAsyncFetch {
                    fast_listener: false,
                    failed_refetch_duration: Some(duration(1_000)),
                }),
                ..Default::default()
            }),
        };
        XdsJwtProvider {
            issuer: issuer.clone(),
            audiences: audiences.clone(),
            forward: *forward_token,
            payload_in_metadata: JWT_PAYLOAD.into(),
            failed_status_in_metadata: JWT_FAILURE.into(),
            clock_skew_seconds: *clock_skew_s,
            claim_to_headers: forward_claims
                .iter()
                .map(|(claim, header)| JwtClaimToHeader {
                    header_name: header.clone(),
                    claim_name: claim.clone(),
                    ..Default::default()
                })
                .collect(),
            jwks_source_specifier: Some(jwks),
            ..Default::default()
        }
    }
}

impl JwtCheck {
    /// Any provider's valid token will do.
    pub(super) fn requirement(&self, allow_missing: bool) -> JwtRequirement {
        let mut any: Vec<JwtRequirement> = self
            .providers
            .iter()
            .map(|p| JwtRequirement {
                requires_type: Some(RequiresType::ProviderName(p.name.clone())),
            })
            .collect();
        if allow_missing {
            any.push(JwtRequirement {
                requires_type: Some(RequiresType::AllowMissing(Default::default())),
            });
        }
        // One requirement stands alone; Envoy wants two or more in a list.
        // (None at all only comes of an invalid setting: Envoy refuses it.)
        if any.len() == 1 {
            return any.remove(0);
        }
        JwtRequirement {
            requires_type: Some(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: any,
            })),
        }
    }

    /// The headers claims are forwarded in: removed from requests before
    /// the check, so only a valid token can set them.
    pub(super) fn claim_headers(&self) -> BTreeSet<&str> {
        self.providers
            .iter()
            .flat_map(|p| p.forward_claims.values().map(String::as_str))
            .collect()
    }

    /// Envoy answers a token for another audience with 403; for the
    /// caller it is as invalid as any other (RFC 6750): 401. A missing
    /// token where none is required also leaves a failure behind (the
    /// provider's alternative to "missing is fine" failed): a refusal
    /// after it (authorization's 403, a rate limit's 429) stays as it is.
    pub(super) fn local_replies() -> LocalReplyConfig {
        let failure = |key: Option<&str>, value: ValuePattern| AccessLogFilter {
            filter_specifier: Some(LogFilter::MetadataFilter(LogMetadataFilter {
                matcher: Some(MetadataMatcher {
                    filter: JWT_FILTER.into(),
                    path: std::iter::once(JWT_FAILURE)
                        .chain(key)
                        .map(|key| MetadataPath {
                            segment: Some(MetadataSegment::Key(key.into())),
                        })
                        .collect(),
                    value: Some(ValueMatcher {
                        match_pattern: Some(value),
                    }),
                    invert: false,
                }),
                match_if_key_not_found: Some(BoolValue { value: false }),
            })),
        };
        // Envoy's metadata log filter ignores a matcher's `invert`: the
        // failures other than "missing" are the codes above it.
        let not_missing = ValuePattern::DoubleMatch(DoubleMatcher {
            match_pattern: Some(DoublePattern::Range(DoubleRange {
                start: f64::from(JWT_MISSING + 1),
                end: f64::from(u16::MAX),
            })),
        });
        let failed = failure(Some("code"), not_missing);
        LocalReplyConfig {
            mappers: vec![ResponseMapper {
                filter: Some(failed),
                status_code: Some(uint(401)),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    pub(super) fn filters(&self) -> Vec<HttpFilter> {
        jwt_filters([(&[][..], self)])
    }

    /// The requirement rules, first match wins: each `required_for` match
    /// needs a valid token, and everything else is checked if it carries
    /// one. With `scope`, only requests that also meet it.
    fn rules(&self, scope: &[HeaderCondition]) -> Vec<RequirementRule> {
        let everything = RouteMatch::default();
        let rules = if self.required_for.is_empty() {
            vec![(&everything, self.requirement(false))]
        } else {
            self.required_for
                .iter()
                .map(|m| (m, self.requirement(false)))
                .chain([(&everything, self.requirement(true))])
                .collect()
        };
        rules
            .into_iter()
            .map(|(m, requires)| {
                let mut m = m.clone();
                m.headers.extend(scope.iter().cloned());
                RequirementRule {
                    r#match: Some(m.to_xds()),
                    requirement_type: Some(RequirementType::Requires(requires)),
                }
            })
            .collect()
    }
}

impl ScopedJwt {
    /// Requests whose Host is the hostname (matched as Envoy matches
    /// virtual hosts: any case, `*.` for one or more labels) and none of
    /// the exceptions.
    fn scope(&self) -> Vec<HeaderCondition> {
        let Some(hostname) = self.hostname.as_deref() else {
            return Vec::new();
        };
        let authority = |test| HeaderCondition {
            name: ":authority".into(),
            test,
        };
        std::iter::once(authority(HeaderTest::Regex(host_pattern(hostname))))
            .chain(
                self.except
                    .iter()
                    .map(|h| authority(HeaderTest::NotRegex(host_pattern(h)))),
            )
            .collect()
    }
}

/// An RE2 expression for the Hosts a virtual host domain takes.
fn host_pattern(hostname: &str) -> String {
    match hostname.strip_prefix("*.") {
        Some(domain) => format!("(?i).+\\.{}", domain.replace('.', "\\.")),
        None => format!("(?i){}", hostname.replace('.', "\\.")),
    }
}

/// One JWT filter for several checks, each scoped (or not): their
/// providers together, their rules in order.
pub(super) fn scoped_jwt_filters(checks: &[ScopedJwt]) -> Vec<HttpFilter> {
    let scopes: Vec<Vec<HeaderCondition>> = checks.iter().map(ScopedJwt::scope).collect();
    jwt_filters(
        scopes
            .iter()
            .zip(checks)
            .map(|(scope, check)| (scope.as_slice(), &check.check)),
    )
}

fn jwt_filters<'a>(
    checks: impl IntoIterator<Item = (&'a [HeaderCondition], &'a JwtCheck)>,
) -> Vec<HttpFilter> {
    let mut providers = std::collections::HashMap::new();
    let mut rules = Vec::new();
    let mut strip = BTreeSet::new();
    for (scope, check) in checks {
        for p in &check.providers {
            providers.insert(p.name.clone(), p.to_xds());
        }
        rules.extend(check.rules(scope));
        strip.extend(check.claim_headers());
    }
    let jwt = JwtAuthentication {
        providers,
        rules,
        ..Default::default()
    };
    let strip_filter = (!strip.is_empty()).then(|| HttpFilter {
        name: "weft.jwt.strip-claim-headers".into(),
        config_type: Some(HttpFilterConfig::TypedConfig(pack_any(
            HeaderMutationFilter {
                mutations: Some(Mutations {
                    request_mutations: strip
                        .into_iter()
                        .map(|header| HeaderMutationRule {
                            action: Some(HeaderMutationAction::Remove(header.into())),
                        })
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))),
        ..Default::default()
    });
    strip_filter
        .into_iter()
        .chain([HttpFilter {
            name: JWT_FILTER.into(),
            config_type: Some(HttpFilterConfig::TypedConfig(pack_any(jwt))),
            ..Default::default()
        }])
        .collect()
}
