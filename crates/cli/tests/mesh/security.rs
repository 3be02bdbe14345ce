//! Strict and permissive mutual TLS, authorization that denies until allowed,
//! end-user tokens and their claims.

use super::*;

async fn strict_mtls_refuses_plaintext_missing_and_foreign_certificates(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let (_v1, _client, _port) = mesh.reviews_and_client().await;
    let inbound = inbound_port(&mesh, "reviews-v1").await;

    // Plaintext to the inbound port gets no answer.
    let plaintext = mesh
        .http
        .get(format!("http://127.0.0.1:{inbound}/"))
        .header("host", "reviews")
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");

    // A client certificate issued by this mesh is accepted (so the
    // refusals below are about the certificate).
    let client_credential = mesh.credential("client");
    let (chain, key, bundle) = workload_identity(&mesh, &client_credential, "client").await;
    let answered = openssl_request(inbound, &bundle, Some((&chain, &key)));
    assert!(
        answered.contains("HTTP/1.1 200") && answered.contains("reviews-v1"),
        "{answered}"
    );

    // No client certificate: refused.
    let answered = openssl_request(inbound, &bundle, None);
    assert!(!answered.contains("HTTP/1.1"), "{answered}");

    // A certificate for the same identity from another root: refused.
    let stranger_root = weft_identity::Authority::root("weft", Duration::from_secs(3600)).unwrap();
    let request = weft_identity::CertRequest::workload_key().unwrap();
    let id = weft_identity::SpiffeId::workload("weft", "shop", "client").unwrap();
    let stranger = stranger_root
        .issue_svid(&request.csr, &id, Duration::from_secs(3600))
        .unwrap();
    let stranger_chain = PathBuf::from(write(
        mesh.dir.path(),
        "stranger.chain.pem",
        &weft_identity::certificates_to_pem(&[stranger]),
    ));
    let stranger_key = PathBuf::from(write(
        mesh.dir.path(),
        "stranger.key.pem",
        &request.key.serialize_pem(),
    ));
    let answered = openssl_request(inbound, &bundle, Some((&stranger_chain, &stranger_key)));
    assert!(!answered.contains("HTTP/1.1"), "{answered}");

    // The hop to the edge (xDS and certificate requests) is TLS too, and
    // the edge shows its own SVID. Plaintext gets nothing.
    let xds = mesh.edge.xds_port;
    let plaintext = mesh
        .http
        .post(format!("http://127.0.0.1:{xds}/v1/svid"))
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    let answered = openssl_request(xds, &bundle, Some((&chain, &key)));
    assert!(
        answered.contains("HTTP/1.1") && !answered.contains("verify error"),
        "{answered}"
    );
    let served = write(
        mesh.dir.path(),
        "edge.pem",
        &served_certificate(xds, &bundle, &chain, &key),
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", &served])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("URI:spiffe://weft/ns/weft-system/sa/weft-edge"),
        "{text}"
    );
    // A certificate from another root is refused at the handshake, and
    // the refusals are counted.
    let answered = openssl_request(xds, &bundle, Some((&stranger_chain, &stranger_key)));
    assert!(!answered.contains("HTTP/1.1"), "{answered}");
    let refused = mesh
        .edge_metric("weft_edge_tls_handshake_failures_total")
        .await
        .unwrap_or(0);
    assert!(refused >= 2, "{refused} refused handshakes counted");
    // Edge to server: the edge port is TLS only, with the server's own
    // SVID, and takes an edge's requests only with an edge's certificate.
    let server = mesh.server();
    let edge_token = mesh.dir.path().join("edge.token");
    let edge_secret = std::fs::read_to_string(&edge_token).unwrap();
    let edge_secret = edge_secret.lines().next().unwrap().to_string();
    let plaintext = mesh
        .http
        .get(format!(
            "{}/v1/edge/config",
            server.edge_url.replace("https://", "http://")
        ))
        .bearer_auth(&edge_secret)
        .send()
        .await;
    assert!(plaintext.is_err(), "plaintext was answered: {plaintext:?}");
    let on_api_port = mesh
        .http
        .get(format!("{}/v1/edge/config", server.url))
        .bearer_auth(&edge_secret)
        .send()
        .await
        .unwrap();
    assert!(
        !on_api_port.status().is_success(),
        "edges have their own port: {on_api_port:?}"
    );
    let trust = std::sync::Arc::new(weft_identity::tls::TrustStore::default());
    trust.set(
        weft_identity::Bundle::from_pem("weft", &std::fs::read_to_string(&bundle).unwrap())
            .unwrap(),
    );
    let server_id = |b: &weft_identity::Bundle| {
        weft_identity::SpiffeId::server(b.trust_domain())
            .unwrap()
            .to_string()
    };
    let as_client = |certificate| {
        let tls = weft_identity::tls::client_config(trust.clone(), server_id, certificate).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    };
    let get_config = async |client: reqwest::Client| {
        let response = client
            .get(format!("{}/v1/edge/config", server.edge_url))
            .bearer_auth(&edge_secret)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    };
    let (status, body) = get_config(as_client(None)).await;
    assert!(
        status == 401 && body.contains("edge's certificate"),
        "{status} {body}"
    );
    // A workload's certificate is not an edge's.
    let workload = std::sync::Arc::new(weft_identity::tls::ServingCertificate::default());
    let key_pem = std::fs::read_to_string(&key).unwrap();
    let key_der = pem::parse(&key_pem).unwrap().into_contents();
    workload
        .set(
            weft_identity::certificates_from_pem(
                "chain",
                &std::fs::read_to_string(&chain).unwrap(),
            )
            .unwrap(),
            key_der,
        )
        .unwrap();
    let (status, body) = get_config(as_client(Some(workload))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("spiffe://weft/ns/shop/sa/client"), "{body}");

    // weft's own namespace is not for workloads.
    let run = mesh.server().weft(
        &mesh.admin,
        &[
            "token",
            "create",
            "--cluster",
            "east",
            "--namespace",
            "weft-system",
            "--service-account",
            "weft-edge",
        ],
    );
    assert!(run.code == 3 && run.stderr.contains("reserved"), "{run:?}");
}

/// Sends `method` to reviews through the sidecar on `port`; the status.
async fn status_of(mesh: &Mesh, port: u16, method: reqwest::Method, path: &str) -> u16 {
    mesh.http
        .request(method, format!("http://127.0.0.1:{port}{path}"))
        .header("host", "reviews")
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

async fn authorization_is_deny_all_until_allowed_and_deny_wins(data_plane: DataPlane) {
    use reqwest::Method;
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let (_client, port) = mesh.client();
    let other_credential = mesh.credential("other");
    let other_port = free_port();
    let _other = mesh.sidecar("other", "other-1", None, &other_credential, other_port);
    mesh.until_in_sync(3).await;
    until(
        "the workspace may call",
        Duration::from_secs(20),
        async || status_of(&mesh, port, Method::GET, "/").await == 200,
    )
    .await;

    // Without the workspace-wide allow, nothing may call: 403, and the
    // refusal is logged by the receiving sidecar with the caller.
    let before = mesh.edge_status().await["configVersion"].clone();
    let run = mesh.server().weft(
        &mesh.admin,
        &[
            "delete",
            "securitysetting",
            "workspace-calls",
            "--tenant",
            "retail",
            "--workspace",
            "shop",
        ],
    );
    assert_eq!(run.code, 0, "{run:?}");
    until(
        "the edge has the new configuration",
        Duration::from_secs(30),
        async || mesh.edge_status().await["configVersion"] != before,
    )
    .await;
    mesh.until_in_sync(3).await;
    let denied_before = mesh
        .envoy_stat("reviews-v1", "http.inbound.rbac.denied")
        .await;
    assert_eq!(status_of(&mesh, port, Method::GET, "/").await, 403);
    assert_eq!(status_of(&mesh, other_port, Method::GET, "/").await, 403);
    // Refusals count in the receiving sidecar's metrics.
    assert_eq!(
        mesh.envoy_stat("reviews-v1", "http.inbound.rbac.denied")
            .await,
        denied_before + 2
    );
    // Envoy writes its access log in batches.
    until(
        "the refusal is logged",
        Duration::from_secs(10),
        async || {
            logged(
                &mesh.sidecar_log("reviews-v1"),
                &[
                    ("side", "inbound"),
                    ("response_code", "403"),
                    (
                        "response_code_details",
                        "rbac_access_denied_matched_policy[none]",
                    ),
                    ("caller", "spiffe://weft/ns/shop/sa/client"),
                ],
            )
        },
    )
    .await;

    // Only the client may call, only with GET; a deny rule beats the allow.
    mesh.apply(
        "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: reviews-callers, tenant: retail, workspace: shop}
spec:
  service: {name: reviews, namespace: shop}
  authorization:
    allow:
      - from: [{serviceAccount: {name: client, namespace: shop}}]
        to: [{method: GET}]
    deny:
      - to: [{path: {prefix: /admin}}]
",
        3,
    )
    .await;
    assert_eq!(status_of(&mesh, port, Method::GET, "/").await, 200);
    assert_eq!(status_of(&mesh, port, Method::DELETE, "/").await, 403);
    assert_eq!(status_of(&mesh, port, Method::GET, "/admin/x").await, 403);
    assert_eq!(status_of(&mesh, other_port, Method::GET, "/").await, 403);
    until("the refusal names the deny rule", Duration::from_secs(10), async || {
        logged(
            &mesh.sidecar_log("reviews-v1"),
            &[
                ("method", "GET"),
                ("path", "/admin/x"),
                ("response_code", "403"),
                ("response_code_details", "rbac_access_denied_matched_policy[tenants/retail/workspaces/shop/securitysettings/reviews-callers#deny[0]]"),
            ],
        )
    })
    .await;
}

async fn permissive_mode_takes_plaintext_and_strict_refuses_it(data_plane: DataPlane) {
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(2).await;
    let inbound = inbound_port(&mesh, "reviews-v1").await;
    let plaintext = || async {
        mesh.http
            .get(format!("http://127.0.0.1:{inbound}/"))
            .header("host", "reviews")
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    };
    assert_eq!(plaintext().await, 0, "strict takes no plaintext");

    // Permissive, with a rule that lets callers without identity in: a
    // workload without a sidecar gets through, and meshed callers still
    // use mTLS.
    let permissive = "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: migration, tenant: retail, workspace: shop}
spec:
  service: {name: reviews, namespace: shop}
  mtls: permissive
  authorization:
    allow: [{}]
";
    mesh.apply(permissive, 2).await;
    until("plaintext is taken", Duration::from_secs(20), async || {
        plaintext().await == 200
    })
    .await;
    assert!(
        mesh.instances(port, 5, "/")
            .await
            .contains_key("reviews-v1")
    );
    until(
        "the plaintext call is logged",
        Duration::from_secs(10),
        async || {
            logged(
                &mesh.sidecar_log("reviews-v1"),
                &[
                    ("side", "inbound"),
                    ("path", "/"),
                    ("response_code", "200"),
                    ("response_code_details", "via_upstream"),
                    ("caller", "null"),
                ],
            )
        },
    )
    .await;

    // Back to strict: plaintext is refused again.
    mesh.apply(&permissive.replace("mtls: permissive", "mtls: strict"), 2)
        .await;
    until(
        "plaintext is refused again",
        Duration::from_secs(20),
        async || plaintext().await == 0,
    )
    .await;
    assert!(
        mesh.instances(port, 5, "/")
            .await
            .contains_key("reviews-v1")
    );
}

async fn end_user_tokens_are_checked_and_their_claims_authorize(data_plane: DataPlane) {
    let key = Issuer::new("k1");
    let jwks = JwksServer::start(&[&key]).await;
    let mut mesh = Mesh::on(data_plane).await;
    let _v1 = mesh.workload("reviews", "reviews-v1", "v1");
    let (_client, port) = mesh.client();
    mesh.until_in_sync(2).await;
    mesh.apply(
        &format!(
            "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: reviews-users, tenant: retail, workspace: shop}}
spec:
  service: {{name: reviews, namespace: shop}}
  authentication:
    jwt:
      - issuer: https://login.test
        audiences: [reviews]
        jwksUri: http://127.0.0.1:{}/jwks.json
        jwksRefresh: 2s
        clockSkew: 10s
        forwardClaims: [{{claim: sub, header: x-user}}]
    requireFor: [{{path: {{prefix: /api}}}}]
  authorization:
    allow:
      - from: [{{sameWorkspace: true}}]
        to: [{{method: GET}}]
      - from: [{{sameWorkspace: true}}]
        claims: {{groups: [admin]}}
",
            jwks.port
        ),
        2,
    )
    .await;
    let call = async |method: reqwest::Method, path: &str, token: Option<&str>, spoof: bool| {
        let mut request = mesh
            .http
            .request(method, format!("http://127.0.0.1:{port}{path}"))
            .header("host", "reviews");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if spoof {
            request = request.header("x-user", "mallory");
        }
        match request.send().await {
            Ok(r) => (r.status().as_u16(), r.json::<Value>().await.ok()),
            Err(_) => (0, None),
        }
    };
    use reqwest::Method;
    let alice = key
        .token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "sub": "alice"}));
    until(
        "a valid token is taken",
        Duration::from_secs(20),
        async || call(Method::GET, "/api/books", Some(&alice), false).await.0 == 200,
    )
    .await;

    // The subject reaches the app; a caller's own x-user never does.
    let (_, body) = call(Method::GET, "/api/books", Some(&alice), true).await;
    let headers = &body.unwrap()["headers"];
    assert_eq!(headers["x-user"], "alice", "{headers}");
    assert!(
        headers.get("authorization").is_none(),
        "the token is not forwarded: {headers}"
    );
    let (status, body) = call(Method::GET, "/public", None, true).await;
    assert_eq!(status, 200, "no token is needed outside /api");
    assert!(body.unwrap()["headers"].get("x-user").is_none());

    // Refused with 401: no token where one is required, and any invalid one.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stranger = Issuer::new("k1");
    let invalid = [
        ("no token", None),
        (
            "expired",
            Some(key.token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "exp": now - 120}))),
        ),
        (
            "another audience",
            Some(key.token(serde_json::json!({"iss": "https://login.test", "aud": "billing"}))),
        ),
        (
            "signed by another key",
            Some(stranger.token(serde_json::json!({"iss": "https://login.test", "aud": "reviews"}))),
        ),
        (
            "an unknown issuer",
            Some(key.token(serde_json::json!({"iss": "https://evil.test", "aud": "reviews"}))),
        ),
        ("not a token", Some("not.a.token".to_string())),
    ];
    for (what, token) in &invalid {
        assert_eq!(
            call(Method::GET, "/api/books", token.as_deref(), false)
                .await
                .0,
            401,
            "{what}"
        );
        if token.is_some() {
            assert_eq!(
                call(Method::GET, "/public", token.as_deref(), false)
                    .await
                    .0,
                401,
                "{what}, also where no token is required"
            );
        }
    }
    // A token within the clock skew still passes.
    let just_expired = key
        .token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "exp": now - 2}));
    assert_eq!(
        call(Method::GET, "/api/books", Some(&just_expired), false)
            .await
            .0,
        200
    );

    // Every refusal counts in the receiving sidecar's metrics.
    assert!(
        mesh.envoy_stat("reviews-v1", "http.inbound.jwt_authn.denied")
            .await
            >= 10
    );
    // Claims authorize: only an admin may delete.
    assert_eq!(
        call(Method::DELETE, "/api/books/1", Some(&alice), false)
            .await
            .0,
        403
    );
    let admin = key.token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "sub": "root", "groups": ["staff", "admin"]}));
    assert_eq!(
        call(Method::DELETE, "/api/books/1", Some(&admin), false)
            .await
            .0,
        200
    );
    until(
        "the refusals are logged",
        Duration::from_secs(10),
        async || {
            let log = mesh.sidecar_log("reviews-v1");
            let line = |method: &str, path: &str, code: &str, details: &str| {
                logged(
                    &log,
                    &[
                        ("method", method),
                        ("path", path),
                        ("response_code", code),
                        ("response_code_details", details),
                    ],
                )
            };
            line(
                "GET",
                "/api/books",
                "401",
                "jwt_authn_access_denied{Jwt_is_missing}",
            ) && line(
                "GET",
                "/api/books",
                "401",
                "jwt_authn_access_denied{Jwt_is_expired}",
            ) && line(
                "DELETE",
                "/api/books/1",
                "403",
                "rbac_access_denied_matched_policy[none]",
            )
        },
    )
    .await;

    // The issuer rotates its key: tokens of the new key pass once the
    // sidecar refetches (every 2 s here), and the retired key's fail.
    let fetches = jwks.fetches();
    let rotated = Issuer::new("k2");
    jwks.publish(&[&rotated]);
    let bob = rotated
        .token(serde_json::json!({"iss": "https://login.test", "aud": "reviews", "sub": "bob"}));
    let started = Instant::now();
    until(
        "the new key is picked up",
        Duration::from_secs(15),
        async || call(Method::GET, "/api/books", Some(&bob), false).await.0 == 200,
    )
    .await;
    eprintln!(
        "new key taken {:?} after rotation; JWKS fetched {} times before, {} after",
        started.elapsed(),
        fetches,
        jwks.fetches()
    );
    assert!(jwks.fetches() > fetches);
    assert_eq!(
        call(Method::GET, "/api/books", Some(&alice), false).await.0,
        401
    );
}

on_both_data_planes!(
    strict_mtls_refuses_plaintext_missing_and_foreign_certificates,
    authorization_is_deny_all_until_allowed_and_deny_wins,
    permissive_mode_takes_plaintext_and_strict_refuses_it,
    end_user_tokens_are_checked_and_their_claims_authorize,
);
