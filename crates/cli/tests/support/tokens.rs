//! End users' tokens for the tests: an issuer with an ES256 key that
//! signs them, and a server for its keys (JWKS) that the test can change.

use serde_json::Value;

/// A token issuer for the tests: an ES256 key, its JWKS, and tokens.
pub struct Issuer {
    key: ring::signature::EcdsaKeyPair,
    kid: String,
}

impl Issuer {
    pub fn new(kid: &str) -> Issuer {
        use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        Issuer {
            key,
            kid: kid.to_string(),
        }
    }

    pub fn jwk(&self) -> Value {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use ring::signature::KeyPair;
        // An uncompressed P-256 point: 0x04, then x and y.
        let point = self.key.public_key().as_ref();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A token with `claims`, and `exp` an hour ahead unless given.
    pub fn token(&self, claims: Value) -> String {
        use base64::Engine;
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut payload = serde_json::json!({"iat": now, "exp": now + 3600});
        for (k, v) in claims.as_object().unwrap() {
            payload[k] = v.clone();
        }
        let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": self.kid});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(payload.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// Serves a JWKS document that the test can change, and counts fetches.
pub struct JwksServer {
    pub port: u16,
    document: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    pub async fn start(keys: &[&Issuer]) -> JwksServer {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let document = Arc::new(std::sync::Mutex::new(String::new()));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (doc, count) = (document.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (doc, count) = (doc.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let body = doc.lock().unwrap().clone();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        let server = JwksServer {
            port,
            document,
            fetches,
            task,
        };
        server.publish(keys);
        server
    }

    pub fn publish(&self, keys: &[&Issuer]) {
        let keys: Vec<Value> = keys.iter().map(|k| k.jwk()).collect();
        *self.document.lock().unwrap() = serde_json::json!({ "keys": keys }).to_string();
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
