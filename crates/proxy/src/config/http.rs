//! What an HTTP connection manager runs on each request: its filters (the
//! caller's stamp set or read, authorization, the router) and what each
//! finished request is written to (a JSON line, counted stats).

use envoy_types::pb::envoy::config::accesslog::v3::AccessLog as XdsAccessLog;
use envoy_types::pb::envoy::config::accesslog::v3::access_log::ConfigType as LogConfig;
use envoy_types::pb::envoy::config::accesslog::v3::access_log_filter::FilterSpecifier;
use envoy_types::pb::envoy::config::common::mutation_rules::v3::header_mutation::Action as MutationAction;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format as XdsFormat;
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action as RbacAction;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::Config as StatsLog;
use envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::histogram::Unit;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StderrAccessLog;
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stderr_access_log::AccessLogFormat;
use envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::HeaderMutation;
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::Config as HeaderToMetadata;
use envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::config::ValueType;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as RbacFilter;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter as XdsHttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::LocalReplyConfig;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_filter::ConfigType as FilterConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::double_matcher::MatchPattern as DoublePattern;
use envoy_types::pb::envoy::r#type::matcher::v3::metadata_matcher::path_segment::Segment;
use envoy_types::pb::envoy::r#type::matcher::v3::value_matcher::MatchPattern as ValuePattern;
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::protobuf::value::Kind;
use prost::Message;

use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::JwtAuthentication;

use super::format::Format;
use super::jwt::{TokenCheck, token_check};
use super::{Refusals, at};

#[derive(Debug, Clone, PartialEq)]
pub enum HttpFilter {
    /// Sets request headers, replacing any the client sent (the caller's
    /// stamp on the way out), and removes others (claim headers only a
    /// valid token may set).
    RequestHeaders {
        set: Vec<(String, String)>,
        remove: Vec<String>,
    },
    /// Moves a request header into the request's metadata (the caller's
    /// stamp on the way in), and drops it.
    HeaderToMetadata {
        header: String,
        namespace: String,
        key: String,
        remove: bool,
    },
    /// Authorization by the rules each virtual host gives this filter
    /// (by its name): refuse what a deny rule matches, or what no allow
    /// rule matches.
    Rbac { name: String, deny: bool },
    /// End-user tokens checked by the rules (Envoy's `jwt_authn`).
    TokenCheck(std::sync::Arc<TokenCheck>),
    /// Forwards by the route table; always last. `envoy_headers`: the
    /// request's expected timeout and the response's upstream time are
    /// told in `x-envoy-*` headers (unless `suppress_envoy_headers`).
    Router { envoy_headers: bool },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AccessLog {
    /// One JSON object per request on standard error: field → format.
    JsonLine(Vec<(String, Format)>),
    /// Counts each finished request, and times it.
    Stats(CountedStats),
}

/// Envoy's stats access logger, as weft uses it: one counter and one
/// histogram (microseconds), tagged by formats.
#[derive(Debug, Clone, PartialEq)]
pub struct CountedStats {
    pub prefix: String,
    pub max_series: Option<u32>,
    pub counter: String,
    pub counter_tags: Vec<(String, Format)>,
    pub histogram: String,
    pub histogram_tags: Vec<(String, Format)>,
    pub histogram_value: Format,
}

const ROUTER: &str = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
const RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
const HEADER_MUTATION: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation";
const HEADER_TO_METADATA: &str =
    "type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config";
const STDERR_LOG: &str =
    "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
const STATS_LOG: &str = "type.googleapis.com/envoy.extensions.access_loggers.stats.v3.Config";
const JWT_FILTER: &str = "envoy.filters.http.jwt_authn";
const JWT_AUTHN: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";

fn decode<T: Message + Default>(any: &Any, here: &str, r: &mut Refusals) -> Option<T> {
    match T::decode(any.value.as_slice()) {
        Ok(t) => Some(t),
        Err(e) => {
            r.refuse(here, format!("does not decode: {e}"));
            None
        }
    }
}

#[allow(deprecated)]
pub(crate) fn http_filter(
    filter: &XdsHttpFilter,
    here: &str,
    r: &mut Refusals,
) -> Option<HttpFilter> {
    r.unset(&at(here, "is_optional"), &filter.is_optional);
    r.unset(&at(here, "disabled"), &filter.disabled);
    let Some(FilterConfig::TypedConfig(any)) = &filter.config_type else {
        r.refuse(here, "only a typed_config");
        return None;
    };
    let config_at = at(here, "typed_config");
    match any.type_url.as_str() {
        ROUTER => {
            let Router {
                dynamic_stats,
                start_child_span,
                upstream_log,
                upstream_log_options,
                suppress_envoy_headers,
                strict_check_headers,
                respect_expected_rq_timeout,
                suppress_grpc_request_failure_code_stats,
                upstream_http_filters,
                reject_connect_request_early_data,
            } = decode(any, &config_at, r)?;
            let field = |name: &str| at(&config_at, name);
            r.unset(&field("dynamic_stats"), &dynamic_stats);
            r.unset(&field("start_child_span"), &start_child_span);
            r.unset(&field("upstream_log"), &upstream_log);
            r.unset(&field("upstream_log_options"), &upstream_log_options);
            r.unset(&field("strict_check_headers"), &strict_check_headers);
            r.unset(
                &field("respect_expected_rq_timeout"),
                &respect_expected_rq_timeout,
            );
            r.unset(
                &field("suppress_grpc_request_failure_code_stats"),
                &suppress_grpc_request_failure_code_stats,
            );
            r.unset(&field("upstream_http_filters"), &upstream_http_filters);
            r.unset(
                &field("reject_connect_request_early_data"),
                &reject_connect_request_early_data,
            );
            Some(HttpFilter::Router {
                envoy_headers: !suppress_envoy_headers,
            })
        }
        RBAC => {
            let rbac: RbacFilter = decode(any, &config_at, r)?;
            let rules = rbac.rules.clone().unwrap_or_default();
            let empty = RbacFilter {
                rules: rbac.rules.clone(),
                ..Default::default()
            };
            if rbac != empty || !rules.policies.is_empty() {
                r.refuse(
                    &config_at,
                    "only rules given per virtual host (a listener's own rules are not supported yet)",
                );
            }
            let deny = match RbacAction::try_from(rules.action) {
                Ok(RbacAction::Allow) => false,
                Ok(RbacAction::Deny) => true,
                _ => {
                    r.refuse(at(&config_at, "rules.action"), "only ALLOW and DENY");
                    false
                }
            };
            Some(HttpFilter::Rbac {
                name: filter.name.clone(),
                deny,
            })
        }
        HEADER_MUTATION => {
            let mutation: HeaderMutation = decode(any, &config_at, r)?;
            let requests = mutation
                .mutations
                .clone()
                .unwrap_or_default()
                .request_mutations;
            let only_requests = HeaderMutation {
                mutations: mutation.mutations.clone().map(|m| {
                    envoy_types::pb::envoy::extensions::filters::http::header_mutation::v3::Mutations {
                        request_mutations: m.request_mutations,
                        ..Default::default()
                    }
                }),
                ..Default::default()
            };
            if mutation != only_requests {
                r.refuse(&config_at, "only request header mutations");
            }
            let (mut set, mut remove) = (Vec::new(), Vec::new());
            for (i, rule) in requests.iter().enumerate() {
                match &rule.action {
                    Some(MutationAction::Append(option))
                        if option.append_action
                            == HeaderAppendAction::OverwriteIfExistsOrAdd as i32
                            && !option.keep_empty_value
                            && option.append.is_none() =>
                    {
                        let header = option.header.clone().unwrap_or_default();
                        set.push((header.key.to_ascii_lowercase(), header.value));
                    }
                    Some(MutationAction::Remove(name)) => remove.push(name.to_ascii_lowercase()),
                    _ => r.refuse(
                        format!("{config_at}.mutations.request_mutations[{i}]"),
                        "only a header set (overwritten or added) or removed",
                    ),
                }
            }
            Some(HttpFilter::RequestHeaders { set, remove })
        }
        HEADER_TO_METADATA => {
            let read: HeaderToMetadata = decode(any, &config_at, r)?;
            let only = HeaderToMetadata {
                request_rules: read.request_rules.clone(),
                ..Default::default()
            };
            let rule = match read.request_rules.as_slice() {
                [rule] if read == only => rule,
                _ => {
                    r.refuse(&config_at, "only one request rule");
                    return None;
                }
            };
            let pair = rule.on_header_present.clone().unwrap_or_default();
            let supported = envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::config::Rule {
                header: rule.header.clone(),
                on_header_present: rule.on_header_present.clone(),
                remove: rule.remove,
                ..Default::default()
            };
            let plain_pair = envoy_types::pb::envoy::extensions::filters::http::header_to_metadata::v3::config::KeyValuePair {
                metadata_namespace: pair.metadata_namespace.clone(),
                key: pair.key.clone(),
                r#type: ValueType::String as i32,
                ..Default::default()
            };
            if *rule != supported || pair != plain_pair {
                r.refuse(
                    at(&config_at, "request_rules[0]"),
                    "only a header's value copied as a string when present",
                );
            }
            Some(HttpFilter::HeaderToMetadata {
                header: rule.header.to_ascii_lowercase(),
                namespace: pair.metadata_namespace,
                key: pair.key,
                remove: rule.remove,
            })
        }
        JWT_AUTHN if filter.name == JWT_FILTER => {
            let config: JwtAuthentication = decode(any, &config_at, r)?;
            token_check(&config, &config_at, r).map(|c| HttpFilter::TokenCheck(c.into()))
        }
        other => {
            r.refuse(&config_at, format!("{other} is not supported yet"));
            None
        }
    }
}

#[allow(deprecated)]
pub(crate) fn access_log(log: &XdsAccessLog, here: &str, r: &mut Refusals) -> Option<AccessLog> {
    r.unset(&at(here, "filter"), &log.filter);
    let Some(LogConfig::TypedConfig(any)) = &log.config_type else {
        r.refuse(here, "only a typed_config");
        return None;
    };
    let config_at = at(here, "typed_config");
    let parse = |field: &str, text: &str, r: &mut Refusals| match Format::parse(text) {
        Ok(f) => Some(f),
        Err(e) => {
            r.refuse(field, e);
            None
        }
    };
    match any.type_url.as_str() {
        STDERR_LOG => {
            let stderr: StderrAccessLog = decode(any, &config_at, r)?;
            let Some(AccessLogFormat::LogFormat(format)) = &stderr.access_log_format else {
                r.refuse(&config_at, "only a JSON log_format");
                return None;
            };
            let Some(XdsFormat::JsonFormat(fields)) = &format.format else {
                r.refuse(at(&config_at, "log_format"), "only json_format");
                return None;
            };
            let only = envoy_types::pb::envoy::config::core::v3::SubstitutionFormatString {
                format: format.format.clone(),
                ..Default::default()
            };
            if *format != only {
                r.refuse(at(&config_at, "log_format"), "only json_format");
            }
            let mut out: Vec<(String, Format)> = Vec::new();
            for (name, value) in &fields.fields {
                let field = format!("{config_at}.log_format.json_format.{name}");
                match &value.kind {
                    Some(Kind::StringValue(text)) => {
                        if let Some(f) = parse(&field, text, r) {
                            out.push((name.clone(), f));
                        }
                    }
                    _ => r.refuse(&field, "only string values"),
                }
            }
            out.sort_by(|a, b| a.0.cmp(&b.0));
            Some(AccessLog::JsonLine(out))
        }
        STATS_LOG => {
            let stats: StatsLog = decode(any, &config_at, r)?;
            let only = StatsLog {
                stat_prefix: stats.stat_prefix.clone(),
                stats_scope: stats.stats_scope.clone(),
                counters: stats.counters.clone(),
                histograms: stats.histograms.clone(),
                ..Default::default()
            };
            if stats != only {
                r.refuse(&config_at, "only counters and histograms");
            }
            let scope = stats.stats_scope.clone().unwrap_or_default();
            let tags = |stat: Option<
                &envoy_types::pb::envoy::extensions::access_loggers::stats::v3::config::Stat,
            >,
                        field: &str,
                        r: &mut Refusals|
             -> (String, Vec<(String, Format)>) {
                let stat = stat.cloned().unwrap_or_default();
                let tags = stat
                    .tags
                    .iter()
                    .enumerate()
                    .filter_map(|(i, t)| {
                        let f = parse(&format!("{field}.stat.tags[{i}]"), &t.value_format, r)?;
                        Some((t.name.clone(), f))
                    })
                    .collect();
                (stat.name, tags)
            };
            let ([counter], [histogram]) = (stats.counters.as_slice(), stats.histograms.as_slice())
            else {
                r.refuse(&config_at, "only one counter and one histogram");
                return None;
            };
            if counter.value_fixed.map(|v| v.value) != Some(1) || !counter.value_format.is_empty() {
                r.refuse(at(&config_at, "counters[0]"), "only a fixed value of 1");
            }
            if histogram.unit != Unit::Microseconds as i32 {
                r.refuse(at(&config_at, "histograms[0].unit"), "only MICROSECONDS");
            }
            let (counter_name, counter_tags) =
                tags(counter.stat.as_ref(), &at(&config_at, "counters[0]"), r);
            let (histogram_name, histogram_tags) =
                tags(histogram.stat.as_ref(), &at(&config_at, "histograms[0]"), r);
            let histogram_value = parse(
                &at(&config_at, "histograms[0].value_format"),
                &histogram.value_format,
                r,
            )?;
            Some(AccessLog::Stats(CountedStats {
                prefix: if scope.prefix.is_empty() {
                    stats.stat_prefix.clone()
                } else {
                    scope.prefix.clone()
                },
                max_series: scope.max_counters.map(|v| v.value),
                counter: counter_name,
                counter_tags,
                histogram: histogram_name,
                histogram_tags,
                histogram_value,
            }))
        }
        other => {
            r.refuse(&config_at, format!("{other} is not supported yet"));
            None
        }
    }
}

/// Whether `config` is the one mapping weft makes: a token check's
/// failures (but "missing") answer 401.
pub(crate) fn token_failure_replies(config: &LocalReplyConfig) -> bool {
    let [mapper] = config.mappers.as_slice() else {
        return false;
    };
    if mapper.status_code.map(|s| s.value) != Some(401) || config.body_format.is_some() {
        return false;
    }
    let Some(FilterSpecifier::MetadataFilter(filter)) = mapper
        .filter
        .as_ref()
        .and_then(|f| f.filter_specifier.as_ref())
    else {
        return false;
    };
    let Some(matcher) = &filter.matcher else {
        return false;
    };
    let path: Vec<&str> = matcher
        .path
        .iter()
        .filter_map(|p| p.segment.as_ref().map(|Segment::Key(k)| k.as_str()))
        .collect();
    let from_missing_up = matches!(
        matcher.value.as_ref().and_then(|v| v.match_pattern.as_ref()),
        Some(ValuePattern::DoubleMatch(d)) if matches!(
            &d.match_pattern,
            Some(DoublePattern::Range(range)) if range.start == 2.0
        )
    );
    matcher.filter == JWT_FILTER
        && path == ["failure", "code"]
        && !matcher.invert
        && from_missing_up
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::BoolValue;
    use envoy_types::util::pack_any;

    use super::*;

    fn router(config: Router) -> (Option<HttpFilter>, Vec<String>) {
        let filter = XdsHttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(FilterConfig::TypedConfig(pack_any(config))),
            ..Default::default()
        };
        let mut refusals = Refusals(Vec::new());
        let converted = http_filter(&filter, "http_filters[0]", &mut refusals);
        (converted, refusals.0)
    }

    #[test]
    fn the_router_adds_envoy_headers_unless_suppressed_and_refuses_the_rest() {
        let (converted, refused) = router(Router::default());
        assert_eq!(
            converted,
            Some(HttpFilter::Router {
                envoy_headers: true
            })
        );
        assert!(refused.is_empty(), "{refused:?}");
        let (converted, _) = router(Router {
            suppress_envoy_headers: true,
            ..Default::default()
        });
        assert_eq!(
            converted,
            Some(HttpFilter::Router {
                envoy_headers: false
            })
        );
        let (_, refused) = router(Router {
            dynamic_stats: Some(BoolValue { value: false }),
            ..Default::default()
        });
        assert_eq!(
            refused,
            ["http_filters[0].typed_config.dynamic_stats: not supported by weft-proxy"]
        );
    }
}
