//! The gateway servers with browser sign-in (OIDC) that `weft
//! authservice` receives from its edge over ADS, as weft's own resource
//! type (`weft.authservice.v1.LoginServers`). Gateways ask the service
//! with Envoy's external authorization API, naming the server in the
//! check's context extensions under [`SERVER_KEY`].

use prost::Name;

/// The context extension that names the server a check is for.
pub const SERVER_KEY: &str = "weft-login-server";
/// The one resource an edge sends: every server with sign-in.
pub const RESOURCE: &str = "servers";

#[derive(Clone, PartialEq, prost::Message)]
pub struct LoginServers {
    #[prost(message, repeated, tag = "1")]
    pub servers: Vec<LoginServer>,
}

#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, prost::Message)]
pub struct LoginServer {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub issuer: String,
    #[prost(string, tag = "3")]
    pub authorization_endpoint: String,
    #[prost(string, tag = "4")]
    pub token_endpoint: String,
    #[prost(string, tag = "5")]
    pub jwks_uri: String,
    #[prost(string, tag = "6")]
    pub end_session_endpoint: String,
    #[prost(string, tag = "7")]
    pub client_id: String,
    #[prost(string, tag = "8")]
    pub client_secret_name: String,
    #[prost(string, tag = "9")]
    pub callback_path: String,
    #[prost(string, repeated, tag = "10")]
    pub scopes: Vec<String>,
    #[prost(string, tag = "11")]
    pub logout_path: String,
    #[prost(string, tag = "12")]
    pub post_logout_redirect: String,
    #[prost(string, tag = "13")]
    pub id_token_header: String,
    #[prost(string, tag = "14")]
    pub access_token_header: String,
    #[prost(uint32, tag = "15")]
    pub idle_timeout_seconds: u32,
    #[prost(uint32, tag = "16")]
    pub absolute_timeout_seconds: u32,
    #[prost(bool, tag = "17")]
    pub redis: bool,
}

impl Name for LoginServers {
    const NAME: &'static str = "LoginServers";
    const PACKAGE: &'static str = "weft.authservice.v1";

    fn type_url() -> String {
        format!("type.googleapis.com/{}", Self::full_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// The hand-written types and `proto/weft/authservice/v1/servers.proto`
    /// agree: what one encodes, the other reads back field by field.
    #[test]
    fn the_types_agree_with_their_proto_file() {
        let servers = LoginServers {
            servers: vec![LoginServer {
                id: "gw#shop".into(),
                issuer: "https://id.example.com".into(),
                authorization_endpoint: "a".into(),
                token_endpoint: "t".into(),
                jwks_uri: "j".into(),
                end_session_endpoint: "e".into(),
                client_id: "shop".into(),
                client_secret_name: "shop-secret".into(),
                callback_path: "/cb".into(),
                scopes: vec!["openid".into(), "email".into()],
                logout_path: "/logout".into(),
                post_logout_redirect: "/".into(),
                id_token_header: "x-id-token".into(),
                access_token_header: "authorization".into(),
                idle_timeout_seconds: 60,
                absolute_timeout_seconds: 3600,
                redis: true,
            }],
        };
        let any = envoy_types::pb::google::protobuf::Any {
            type_url: LoginServers::type_url(),
            value: servers.encode_to_vec(),
        };
        let json = crate::json::to_json(&any).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "@type": "type.googleapis.com/weft.authservice.v1.LoginServers",
                "servers": [{
                    "id": "gw#shop",
                    "issuer": "https://id.example.com",
                    "authorization_endpoint": "a",
                    "token_endpoint": "t",
                    "jwks_uri": "j",
                    "end_session_endpoint": "e",
                    "client_id": "shop",
                    "client_secret_name": "shop-secret",
                    "callback_path": "/cb",
                    "scopes": ["openid", "email"],
                    "logout_path": "/logout",
                    "post_logout_redirect": "/",
                    "id_token_header": "x-id-token",
                    "access_token_header": "authorization",
                    "idle_timeout_seconds": 60,
                    "absolute_timeout_seconds": 3600,
                    "redis": true,
                }],
            })
        );
    }
}
