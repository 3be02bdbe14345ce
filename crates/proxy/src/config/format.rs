//! Envoy's substitution format strings (`%RESPONSE_CODE%`,
//! `%REQ(:AUTHORITY)%`…), as request logs and counted stats use them:
//! parsed once into pieces, and refused when they name an operator
//! weft-proxy does not fill in as Envoy would.

/// A format string: text and operators, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format(pub Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Op(Operator),
}

/// What weft-proxy can fill in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operator {
    StartTime,
    /// A request header (lowercase); the second is read when the first is
    /// absent (`X-ENVOY-ORIGINAL-PATH?:PATH`).
    RequestHeader(String, Option<String>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    /// Milliseconds, first byte in to last byte out.
    Duration,
    /// Microseconds, first byte in to last byte out.
    DurationMicros,
    BytesReceived,
    BytesSent,
    RouteName,
    UpstreamCluster,
    UpstreamHost,
    UpstreamHostName,
    TraceId,
    DownstreamPeerUriSan,
    UpstreamPeerUriSan,
    DownstreamDirectRemoteAddressWithoutPort,
    /// A value the proxy's filters set (`namespace:key`).
    DynamicMetadata(String, String),
}

impl Format {
    /// Parses `text`, or says which operator is not supported.
    pub fn parse(text: &str) -> Result<Format, String> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find('%') {
            if start > 0 {
                pieces.push(Piece::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 1..];
            let Some(end) = after.find('%') else {
                return Err(format!("{text:?}: a % is not closed"));
            };
            let token = &after[..end];
            if token.is_empty() {
                // `%%` is a literal percent sign.
                pieces.push(Piece::Text("%".into()));
            } else {
                pieces.push(Piece::Op(operator(token)?));
            }
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Format(pieces))
    }
}

fn operator(token: &str) -> Result<Operator, String> {
    let (name, argument) = match token.split_once('(') {
        Some((name, rest)) => match rest.strip_suffix(')') {
            Some(argument) => (name, Some(argument)),
            None => return Err(format!("%{token}%: the argument is not closed")),
        },
        None => (token, None),
    };
    let plain = |op: Operator| match argument {
        None => Ok(op),
        Some(_) => Err(format!("%{token}%: {name} takes no argument here")),
    };
    match name {
        "START_TIME" => plain(Operator::StartTime),
        "PROTOCOL" => plain(Operator::Protocol),
        "RESPONSE_CODE" => plain(Operator::ResponseCode),
        "RESPONSE_FLAGS" => plain(Operator::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => plain(Operator::ResponseCodeDetails),
        "DURATION" => plain(Operator::Duration),
        "BYTES_RECEIVED" => plain(Operator::BytesReceived),
        "BYTES_SENT" => plain(Operator::BytesSent),
        "ROUTE_NAME" => plain(Operator::RouteName),
        "UPSTREAM_CLUSTER" => plain(Operator::UpstreamCluster),
        "UPSTREAM_HOST" => plain(Operator::UpstreamHost),
        "UPSTREAM_HOST_NAME_WITHOUT_PORT" => plain(Operator::UpstreamHostName),
        "TRACE_ID" => plain(Operator::TraceId),
        "DOWNSTREAM_PEER_URI_SAN" => plain(Operator::DownstreamPeerUriSan),
        "UPSTREAM_PEER_URI_SAN" => plain(Operator::UpstreamPeerUriSan),
        "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            plain(Operator::DownstreamDirectRemoteAddressWithoutPort)
        }
        "COMMON_DURATION" if argument == Some("DS_RX_BEG:DS_TX_END:us") => {
            Ok(Operator::DurationMicros)
        }
        "REQ" => {
            let argument = argument.unwrap_or_default().to_ascii_lowercase();
            let (first, second) = match argument.split_once('?') {
                Some((a, b)) => (a.to_string(), Some(b.to_string())),
                None => (argument, None),
            };
            if first.is_empty() || second.as_deref() == Some("") {
                return Err(format!("%{token}%: name a header"));
            }
            Ok(Operator::RequestHeader(first, second))
        }
        "DYNAMIC_METADATA" => {
            let argument = argument.unwrap_or_default();
            match argument.split(':').collect::<Vec<_>>().as_slice() {
                [namespace, key] if !namespace.is_empty() && !key.is_empty() => Ok(
                    Operator::DynamicMetadata(namespace.to_string(), key.to_string()),
                ),
                _ => Err(format!(
                    "%{token}%: only NAMESPACE:KEY, with no length limit"
                )),
            }
        }
        _ => Err(format!("%{token}% is not supported by weft-proxy")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_into_text_and_operators() {
        let f = Format::parse(
            "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% 100%%",
        )
        .unwrap();
        assert_eq!(
            f.0,
            [
                Piece::Op(Operator::RequestHeader(":method".into(), None)),
                Piece::Text(" ".into()),
                Piece::Op(Operator::RequestHeader(
                    "x-envoy-original-path".into(),
                    Some(":path".into())
                )),
                Piece::Text(" ".into()),
                Piece::Op(Operator::ResponseCode),
                Piece::Text(" 100".into()),
                Piece::Text("%".into()),
            ]
        );
        assert_eq!(
            Format::parse("%DYNAMIC_METADATA(weft:source)%").unwrap().0,
            [Piece::Op(Operator::DynamicMetadata(
                "weft".into(),
                "source".into()
            ))]
        );
    }

    #[test]
    fn what_weft_proxy_cannot_fill_in_is_refused() {
        for bad in [
            "%FILTER_STATE(x)%",
            "%DYNAMIC_METADATA(a:b):10%",
            "%COMMON_DURATION(US_RX_BEG:DS_TX_END:ms)%",
            "%RESPONSE_CODE",
            "%REQ()%",
        ] {
            assert!(Format::parse(bad).is_err(), "{bad}");
        }
    }
}
