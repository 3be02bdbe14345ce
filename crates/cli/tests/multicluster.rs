//! Multi-cluster end to end: one `weft server`, three clusters in two
//! regions, each with its own `weft edge`, `weft eastwest` gateway and
//! Envoy sidecars on its own loopback range (east-a 127.0.1.x, east-b
//! 127.0.2.x, west 127.0.3.x). Every assertion is about real requests.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::browser::Browser;
use support::load::metric_sum;
use support::mesh::{
    DataPlane, Edge, answers, call, credential, envoy_stat, on_both_data_planes, sidecar,
    with_echo_app,
};
use support::{
    Proc, Server, WEFT, envoy, free_port, metric, show_log_tails, until, weft_up, write,
};

/// Each test here starts three clusters' worth of Envoys: one at a time on
/// two cores.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const MESH: &str = "\
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: east-a}
spec: {region: east, zone: a}
---
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: east-b}
spec: {region: east, zone: b}
---
apiVersion: weft.dev/v1alpha1
kind: Cluster
metadata: {name: west}
spec: {region: west, zone: a}
---
apiVersion: weft.dev/v1alpha1
kind: Tenant
metadata: {name: retail}
spec: {}
---
apiVersion: weft.dev/v1alpha1
kind: Workspace
metadata: {name: shop, tenant: retail}
spec: {namespaceSelector: ['*/shop']}
---
apiVersion: weft.dev/v1alpha1
kind: TrafficSetting
metadata: {name: resilient, tenant: retail, workspace: shop}
spec:
  retries: {attempts: 3, perTryTimeout: 2s, retryOn: [connect-failure, reset, 5xx]}
  outlierDetection: {consecutive5xx: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 100}
---
apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {name: only-the-client, tenant: retail, workspace: shop}
spec:
  authorization:
    allow: [{from: [{serviceAccount: {name: client, namespace: shop}}]}]
";

/// One cluster: its edge, gateway and proxies on 127.0.NET.x.
struct Cluster {
    name: &'static str,
    net: u8,
    next_host: u8,
    edge: Edge,
    gateway_port: u16,
    gateway: Option<Proc>,
    proxies: BTreeMap<String, Proc>,
    /// Each proxy's inbound address, by node, so a restart keeps it.
    addresses: BTreeMap<String, String>,
    /// Each proxy's Envoy admin port, by node.
    envoy_admin: BTreeMap<String, u16>,
}

struct World {
    dir: tempfile::TempDir,
    server: Option<Server>,
    edge_listen: String,
    admin: String,
    clusters: Vec<Cluster>,
    http: reqwest::Client,
    /// The proxy sidecars run.
    data_plane: DataPlane,
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            show_log_tails(self.dir.path());
        }
    }
}

impl World {
    async fn start(data_plane: DataPlane) -> World {
        let dir = tempfile::tempdir().unwrap();
        let edge_listen = format!("127.0.0.1:{}", free_port());
        let server = Server::start_with(
            &dir.path().join("server"),
            None,
            &["--edge-listen", &edge_listen],
        );
        let admin = server.admin_token();
        let mesh = write(dir.path(), "mesh.yaml", MESH);
        let applied = server.weft(&admin, &["apply", "-f", &mesh]);
        assert_eq!(applied.code, 0, "{applied:?}");
        let clusters = [("east-a", 1), ("east-b", 2), ("west", 3)]
            .into_iter()
            .map(|(name, net)| Cluster {
                name,
                net,
                next_host: 10,
                edge: Edge::new(name, dir.path(), &[]),
                gateway_port: free_port(),
                gateway: None,
                proxies: BTreeMap::new(),
                addresses: BTreeMap::new(),
                envoy_admin: BTreeMap::new(),
            })
            .collect();
        let mut world = World {
            dir,
            server: Some(server),
            edge_listen,
            admin,
            clusters,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            data_plane,
        };
        for c in 0..3 {
            world.start_edge(c).await;
            world.start_gateway(c);
        }
        world
    }

    fn server(&self) -> &Server {
        self.server.as_ref().expect("the server runs")
    }

    /// A credential file for cluster `c`: `args` after `--cluster NAME`.
    fn credential(&self, c: usize, file: &str, args: &[&str]) -> PathBuf {
        let name = self.clusters[c].name;
        let file = format!("{name}-{file}");
        credential(
            self.server.as_ref(),
            &self.admin,
            self.dir.path(),
            &file,
            name,
            args,
        )
    }

    async fn start_edge(&mut self, c: usize) {
        let credential = self.credential(c, "edge", &[]);
        let server_url = format!("https://{}", self.edge_listen);
        self.clusters[c]
            .edge
            .start(&server_url, &credential, &self.http)
            .await;
    }

    fn start_gateway(&mut self, c: usize) {
        let credential = self.credential(c, "eastwest", &["--eastwest"]);
        let cluster = &self.clusters[c];
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("{}-eastwest.log", cluster.name)),
        )
        .unwrap();
        let child = Command::new(WEFT)
            .args([
                "eastwest",
                "--node-id",
                &format!("{}-eastwest", cluster.name),
            ])
            .args([
                "--listen",
                &format!("127.0.{}.1:{}", cluster.net, cluster.gateway_port),
            ])
            .args(["--edge", &format!("127.0.0.1:{}", cluster.edge.xds_port)])
            .arg("--credential-file")
            .arg(&credential)
            .arg("--envoy")
            .arg(envoy())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.clusters[c].gateway = Some(Proc(child));
    }

    /// Starts a sidecar in cluster `c` as service account `account`; with
    /// `service`, an echo app of that service behind it (its instance
    /// named `node`). Returns its outbound port.
    fn proxy(&mut self, c: usize, node: &str, account: &str, service: Option<&str>) -> u16 {
        let credential = self.credential(
            c,
            account,
            &["--namespace", "shop", "--service-account", account],
        );
        let cluster = &mut self.clusters[c];
        let address = cluster
            .addresses
            .entry(node.to_string())
            .or_insert_with(|| {
                cluster.next_host += 1;
                format!("127.0.{}.{}:15006", cluster.net, cluster.next_host)
            })
            .clone();
        let outbound = free_port();
        let admin = free_port();
        cluster.envoy_admin.insert(node.to_string(), admin);
        let log = self.dir.path().join(format!("{node}.log"));
        let service_name = service.unwrap_or(account);
        let mut command = sidecar(
            self.data_plane,
            node,
            service_name,
            account,
            cluster.edge.xds_port,
            &credential,
            &log,
        );
        command
            .args(["--inbound", &address])
            .args(["--outbound-port", &outbound.to_string()])
            .args(["--admin-port", &admin.to_string()]);
        if let Some(service) = service {
            with_echo_app(&mut command, service, node, None);
        }
        cluster
            .proxies
            .insert(node.to_string(), Proc(command.spawn().unwrap()));
        outbound
    }

    /// Starts `weft gateway` NAME in namespace shop of cluster `c` with
    /// `label`, listening on `address` (and with `mesh_port`, reachable by
    /// other clusters' tier-1 gateways); kept with the cluster's proxies
    /// as node `c-NAME`.
    fn gateway(
        &mut self,
        c: usize,
        name: &str,
        label: &str,
        address: &str,
        mesh_port: Option<u16>,
    ) -> String {
        let credential = self.credential(c, name, &["--namespace", "shop", "--gateway", name]);
        let cluster = &mut self.clusters[c];
        let node = format!("{}-{name}", cluster.name);
        let mut command = Command::new(WEFT);
        command
            .args(["gateway", "--name", name, "--namespace", "shop"])
            .args(["--label", label, "--node-id", &node])
            .args(["--listen-address", address])
            .arg("--runtime-dir")
            .arg(self.dir.path().join("run"))
            .args(["--edge", &format!("127.0.0.1:{}", cluster.edge.xds_port)])
            .arg("--credential-file")
            .arg(&credential)
            .arg("--envoy")
            .arg(envoy())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(self.dir.path().join(format!("{node}.log")))
                    .unwrap(),
            );
        if let Some(port) = mesh_port {
            command.args(["--mesh-port", &port.to_string()]);
        }
        cluster
            .proxies
            .insert(node.clone(), Proc(command.spawn().unwrap()));
        node
    }

    fn stop_proxy(&mut self, c: usize, node: &str) {
        let mut proxy = self.clusters[c].proxies.remove(node).unwrap();
        assert!(proxy.stop(), "{node} stops on SIGTERM");
    }

    async fn edge_status(&self, c: usize) -> Value {
        self.clusters[c].edge.status(&self.http).await
    }

    /// The directory cluster `c`'s edge keeps on disk, if readable.
    fn kept_directory(&self, c: usize) -> Option<Value> {
        let file = format!("{}-edge-data/directory.json", self.clusters[c].name);
        let bytes = std::fs::read(self.dir.path().join(file)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Waits until five calls in a row to `host` are all answered by
    /// `instance`.
    async fn until_answered_by(&self, port: u16, host: &str, instance: &str, what: &str) {
        let all = BTreeMap::from([(instance.to_string(), 5)]);
        until(what, Duration::from_secs(30), async || {
            self.answers(port, host, 5).await == all
        })
        .await;
    }

    /// A counter of a proxy's Envoy whose name contains `part` and ends
    /// with `name` (0 when it has none yet).
    async fn envoy_stat(&self, c: usize, node: &str, part: &str, name: &str) -> u64 {
        let admin = self.clusters[c].envoy_admin[node];
        envoy_stat(&self.http, admin, name, part).await
    }

    async fn edge_metric(&self, c: usize, name: &str) -> Option<i64> {
        self.clusters[c].edge.metric(&self.http, name).await
    }

    /// Waits until every proxy of every cluster accepted its config.
    async fn until_in_sync(&self) {
        until(
            "every proxy in every cluster is in sync",
            Duration::from_secs(60),
            async || {
                for cluster in &self.clusters {
                    let expected = cluster.proxies.len() + usize::from(cluster.gateway.is_some());
                    if !cluster.edge.in_sync(&self.http, expected).await {
                        return false;
                    }
                }
                true
            },
        )
        .await;
    }

    /// Waits until cluster `c`'s edge knows `services` services elsewhere
    /// and a gateway into every other cluster; returns how long that took.
    async fn until_directory(&self, c: usize, services: u64) -> Duration {
        let started = Instant::now();
        until(
            &format!(
                "{} knows {services} services elsewhere and every other cluster's gateway",
                self.clusters[c].name
            ),
            Duration::from_secs(30),
            async || {
                let directory = &self.edge_status(c).await["directory"];
                directory["services"] == services
                    && directory["clusters"] == (self.clusters.len() - 1) as u64
                    && directory["reachable"] == directory["clusters"]
            },
        )
        .await;
        started.elapsed()
    }

    /// One request from the proxy at `port` to `host`: the status, and the
    /// answer (the instance and the headers it saw).
    async fn call(&self, port: u16, host: &str) -> (u16, Option<Value>) {
        call(&self.http, port, host, "/", &[]).await
    }

    /// Who answers `n` requests to `host`: instance → count.
    async fn answers(&self, port: u16, host: &str, n: usize) -> BTreeMap<String, usize> {
        answers(&self.http, port, host, "/", n).await
    }
}

/// Requests at a steady pace from one proxy, each answer recorded with
/// when it came.
struct Load {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Instant, Result<String, String>)>>,
}

impl Load {
    fn start(port: u16, host: &'static str, path: &'static str) -> Load {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            let mut seen = Vec::new();
            while !*stopped.borrow() {
                let outcome = match client
                    .get(format!("http://127.0.0.1:{port}{path}"))
                    .header("host", host)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => match r.json::<Value>().await {
                        Ok(body) => Ok(body["instance"].as_str().unwrap_or("?").to_string()),
                        Err(e) => Err(e.to_string()),
                    },
                    Ok(r) => Err(r.status().to_string()),
                    Err(e) => Err(e.to_string()),
                };
                seen.push((Instant::now(), outcome));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        });
        Load { stop, task }
    }

    async fn stop(self) -> Vec<(Instant, Result<String, String>)> {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// Failures in `seen`, and when the first answer from `instance` came
/// after `since`.
fn failures_and_first(
    seen: &[(Instant, Result<String, String>)],
    since: Instant,
    instance: &str,
) -> (Vec<String>, Option<Duration>) {
    let failures = seen
        .iter()
        .filter_map(|(_, o)| o.as_ref().err().cloned())
        .collect();
    let first = seen
        .iter()
        .find(|(at, o)| *at >= since && o.as_deref() == Ok(instance))
        .map(|(at, _)| at.duration_since(since));
    (failures, first)
}

async fn three_clusters_route_locally_fail_over_by_locality_and_survive_their_control_planes(
    data_plane: DataPlane,
) {
    const EAST_A: usize = 0;
    const EAST_B: usize = 1;
    const WEST: usize = 2;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut world = World::start(data_plane).await;
    let client = world.proxy(EAST_A, "client-a", "client", None);
    let intruder = world.proxy(EAST_A, "intruder-a", "intruder", None);
    world.proxy(EAST_A, "reviews-a", "reviews", Some("reviews"));
    world.proxy(EAST_B, "reviews-b", "reviews", Some("reviews"));
    world.proxy(EAST_B, "ratings-b", "ratings", Some("ratings"));
    world.proxy(WEST, "reviews-w", "reviews", Some("reviews"));
    world.proxy(WEST, "ratings-w", "ratings", Some("ratings"));
    // east-a sees east-b's and west's reviews and ratings.
    world.until_directory(EAST_A, 4).await;
    world.until_directory(WEST, 3).await;
    world.until_in_sync().await;

    // weft explain names the failover order: here, then the same region,
    // then the other; every request below goes the way it says.
    let explain = |from: &str, host: &str| -> Value {
        let run = world.server().weft(
            &world.admin,
            &["explain", from, host, "--cluster", "east-a", "-o", "json"],
        );
        assert_eq!(run.code, 0, "{run:?}");
        serde_json::from_str(&run.stdout).unwrap()
    };
    let order = |explanation: &Value| -> Vec<String> {
        explanation["failover"][0]["localities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["cluster"].as_str().unwrap().to_string())
            .collect()
    };
    let reviews_order = order(&explain("client-a", "reviews"));
    let ratings_explained = explain("client-a", "ratings");
    let ratings_order = order(&ratings_explained);
    eprintln!("failover order: reviews {reviews_order:?}, ratings {ratings_order:?}");
    assert_eq!(reviews_order, ["east-a", "east-b", "west"]);
    assert_eq!(ratings_order, ["east-b", "west"]);
    assert_eq!(ratings_explained["verdict"]["outcome"], "forwarded");
    let intruder_explained = explain("intruder-a", "ratings");
    assert_eq!(intruder_explained["verdict"]["status"], 403);
    // Instances are named SERVICE-a, -b, -w by cluster.
    let instance = |service: &str, cluster: &str| {
        let suffix = match cluster {
            "east-a" => "a",
            "east-b" => "b",
            _ => "w",
        };
        format!("{service}-{suffix}")
    };

    // Local first; a service with no instance here goes to the same region.
    let first = instance("reviews", &reviews_order[0]);
    until(
        "reviews answers from the first in the order",
        Duration::from_secs(30),
        async || {
            world
                .answers(client, "reviews", 1)
                .await
                .contains_key(&first)
        },
    )
    .await;
    let reviews = world.answers(client, "reviews", 30).await;
    eprintln!("reviews from east-a: {reviews:?}");
    assert_eq!(reviews, BTreeMap::from([(first, 30)]));
    let first = instance("ratings", &ratings_order[0]);
    until(
        "ratings answers through east-b's gateway",
        Duration::from_secs(30),
        async || {
            world
                .answers(client, "ratings", 1)
                .await
                .contains_key(&first)
        },
    )
    .await;
    let ratings = world.answers(client, "ratings", 30).await;
    eprintln!("ratings from east-a: {ratings:?}");
    assert_eq!(ratings, BTreeMap::from([(first, 30)]));

    // The callee in the other cluster sees the caller's own identity: the
    // gateway did not open the TLS.
    let (status, body) = world.call(client, "ratings").await;
    assert_eq!(status, 200);
    let forwarded = body.unwrap()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        forwarded.contains("URI=spiffe://weft/ns/shop/sa/client"),
        "ratings-b saw {forwarded:?}"
    );
    // A caller the policy does not allow is refused there too.
    let (status, _) = world.call(intruder, "ratings").await;
    assert_eq!(status, 403, "the intruder reached ratings in east-b");
    until(
        "ratings-b's access log names the refused caller",
        Duration::from_secs(10),
        async || {
            std::fs::read_to_string(world.dir.path().join("ratings-b.log"))
                .unwrap_or_default()
                .contains("spiffe://weft/ns/shop/sa/intruder")
        },
    )
    .await;

    // A directory change reaches the other edges within about a second.
    let started = Instant::now();
    world.proxy(WEST, "details-w", "details", Some("details"));
    let to_east_a = world.until_directory(EAST_A, 5).await;
    let to_east_b = world.until_directory(EAST_B, 4).await;
    eprintln!(
        "a new service in west reached east-a's edge {:?} and east-b's {:?} after its sidecar started ({to_east_a:?} of polling)",
        started.elapsed(),
        to_east_b
    );
    // The directory carries counts, not endpoints: two more instances of
    // details leave west's published entry the same size.
    let entry_bytes = |world: &World| -> usize {
        let directory = world
            .kept_directory(EAST_A)
            .expect("east-a keeps its directory");
        serde_json::to_vec(&directory["clusters"]["west"])
            .unwrap()
            .len()
    };
    let one = entry_bytes(&world);
    world.proxy(WEST, "details-w2", "details", Some("details"));
    world.proxy(WEST, "details-w3", "details", Some("details"));
    until(
        "east-a knows west runs 3 details",
        Duration::from_secs(30),
        async || {
            world
                .kept_directory(EAST_A)
                .is_some_and(|d| d["clusters"]["west"]["services"]["shop/details"]["healthy"] == 3)
        },
    )
    .await;
    let three = entry_bytes(&world);
    eprintln!(
        "west's directory entry at east-a: {one} bytes with 1 details instance, {three} bytes with 3"
    );
    assert_eq!(one, three);
    world.until_in_sync().await;

    // Kill the local reviews under load: traffic fails over to east-b (the
    // same region), with retries and no failed request.
    let load = Load::start(client, "reviews", "/");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed = Instant::now();
    world.stop_proxy(EAST_A, "reviews-a");
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seen = load.stop().await;
    let next = instance("reviews", &reviews_order[1]);
    let (failures, first) = failures_and_first(&seen, killed, &next);
    let after: BTreeMap<&str, usize> = seen
        .iter()
        .filter(|(at, _)| *at > killed + Duration::from_secs(2))
        .fold(BTreeMap::new(), |mut m, (_, o)| {
            *m.entry(o.as_deref().unwrap_or("failed")).or_default() += 1;
            m
        });
    eprintln!(
        "failover: {} requests, {} failed; first answer from east-b {:?} after the kill; from 2 s on: {after:?}",
        seen.len(),
        failures.len(),
        first
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(first.is_some_and(|f| f < Duration::from_secs(3)));
    assert_eq!(after.keys().collect::<Vec<_>>(), vec![&next.as_str()]);

    // The local instance returns: traffic returns.
    let restarted = Instant::now();
    world.proxy(EAST_A, "reviews-a", "reviews", Some("reviews"));
    world
        .until_answered_by(
            client,
            "reviews",
            "reviews-a",
            "reviews answers from east-a again",
        )
        .await;
    eprintln!(
        "traffic back in east-a {:?} after its instance restarted",
        restarted.elapsed()
    );

    // The global view shows the failover as such: client in east-a
    // called reviews in east-b (east-b's edge counted it), and the pair
    // summed over clusters is both clusters' calls (the ones reviews-a
    // answered since it came back: a proxy killed loses the counts it
    // had not sent yet, up to 5 s).
    let server = world.server.as_ref().unwrap();
    let pairs = |by_cluster: bool| -> Vec<Value> {
        let mut args = vec!["stat", "pairs", "--since", "10m", "-o", "json"];
        if by_cluster {
            args.push("--by-cluster");
        }
        let run = server.weft(&world.admin, &args);
        assert_eq!(run.code, 0, "{run:?}");
        let report: Value = serde_json::from_str(&run.stdout).unwrap();
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| {
                r["source"]["service"] == "client" && r["destination"]["service"] == "reviews"
            })
            .cloned()
            .collect()
    };
    until(
        "the server's rollup has client@east-a → reviews@east-b",
        Duration::from_secs(40),
        async || {
            pairs(true).iter().any(|r| {
                r["source"]["cluster"] == "east-a"
                    && r["destination"]["cluster"] == "east-b"
                    && r["requests"].as_u64().unwrap_or(0) > 0
            })
        },
    )
    .await;
    // The web UI draws it as a cross-cluster call, and shows the three
    // clusters' edges connected.
    let mut browser = Browser::start(&[], "/none", world.dir.path().join("browser.log"));
    let base = &server.url;
    browser.goto(&format!("{base}/")).await;
    browser.fill("#token", &world.admin).await;
    let (url, _) = browser.submit("button[type=submit]").await;
    assert!(url.ends_with("/ui/"), "{url}");
    let connected = browser.texts("#clusters td.edge").await;
    assert_eq!(connected.len(), 3, "{connected:?}");
    assert!(
        connected.iter().all(|t| t.starts_with("connected")),
        "{connected:?}"
    );
    browser.goto(&format!("{base}/ui/topology?since=15m")).await;
    let crossing = browser
        .attrs(
            "g.edge.cross[data-source='east-a/shop/client'][data-destination='east-b/shop/reviews']",
            "data-requests",
        )
        .await;
    assert!(
        crossing
            .first()
            .is_some_and(|n| n.parse::<u64>().unwrap_or(0) > 0),
        "{crossing:?}"
    );
    let badges = browser
        .texts("table.calls tr[data-source='east-a/shop/client'][data-destination='east-b/shop/reviews'] .badge")
        .await;
    assert_eq!(badges, ["cross-cluster"]);
    if let Some(dir) = std::env::var_os("WEFT_SCREENSHOTS") {
        browser
            .screenshot(&PathBuf::from(dir).join("topology-multicluster.png"))
            .await;
    }
    assert_eq!(browser.problems().await, Vec::<String>::new());
    drop(browser);

    // The client's own counts say the same: its calls were answered in
    // east-b.
    let metrics = format!(
        "http://127.0.0.1:{}/metrics",
        world.clusters[EAST_A].edge.admin_port
    );
    let answered_in_east_b = metric_sum(
        &world.http,
        &metrics,
        &[
            "weft_requests_total{",
            "reporter=\"source\"",
            "source_service=\"client\"",
            "destination_service=\"reviews\"",
            "destination_cluster=\"east-b\"",
        ],
    )
    .await;
    assert!(answered_in_east_b > 0.0, "{answered_in_east_b}");
    until(
        "weft stat pairs sums the pair over both clusters",
        Duration::from_secs(30),
        async || {
            let by_cluster = pairs(true);
            let summed = pairs(false);
            let parts: u64 = by_cluster
                .iter()
                .map(|r| r["requests"].as_u64().unwrap())
                .sum();
            let clusters: BTreeSet<String> = by_cluster
                .iter()
                .map(|r| r["destination"]["cluster"].as_str().unwrap().to_string())
                .collect();
            eprintln!("client → reviews by cluster: {by_cluster:?}; summed: {summed:?}");
            clusters == BTreeSet::from(["east-a".to_string(), "east-b".to_string()])
                && summed.len() == 1
                && summed[0]["requests"].as_u64() == Some(parts)
        },
    )
    .await;

    // The local instance is up but answers 503: each error is retried at
    // the next priority, and outlier detection ejects it, so callers get
    // east-b's answers and no failure; after the ejection it serves again.
    let load = Load::start(client, "reviews", "/?fail=reviews-a");
    let failing = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.stop().await;
    let (failures, first) = failures_and_first(&seen, failing, "reviews-b");
    let ejections = world
        .envoy_stat(
            EAST_A,
            "client-a",
            "out|reviews.shop",
            "outlier_detection.ejections_enforced_total",
        )
        .await;
    eprintln!(
        "reviews-a answering 503: {} requests, {} failed, first from east-b after {first:?}; ejections {ejections}",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(ejections >= 1, "reviews-a was not ejected");
    let ejected = Instant::now();
    world
        .until_answered_by(
            client,
            "reviews",
            "reviews-a",
            "reviews-a serves again after its ejection",
        )
        .await;
    eprintln!("reviews-a back {:?} after its ejection", ejected.elapsed());

    // No instance left in the region: ratings goes to the other region.
    world.stop_proxy(EAST_B, "ratings-b");
    world
        .until_answered_by(
            client,
            "ratings",
            &instance("ratings", &ratings_order[1]),
            "ratings answers from the next in its order",
        )
        .await;

    // Static stability. The server stops under load: nothing fails.
    let directory_before = world.edge_status(EAST_A).await["directory"].clone();
    let load = Load::start(client, "reviews", "/");
    tokio::time::sleep(Duration::from_millis(500)).await;
    world.server.take().unwrap().stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // An edge restarts without the server: it serves its proxies from
    // disk, cross-cluster routes included.
    world.clusters[EAST_A].edge.process.take().unwrap().stop();
    world.start_edge(EAST_A).await;
    world.until_in_sync().await;
    let seen = load.stop().await;
    let (failures, _) = failures_and_first(&seen, Instant::now(), "");
    eprintln!(
        "server down and east-a's edge restarted: {} requests, {} failed",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    let status = world.edge_status(EAST_A).await;
    assert_eq!(status["fromDisk"], true, "{status}");
    assert_eq!(status["directory"]["fromDisk"], true, "{status}");
    assert_eq!(
        status["directory"]["services"],
        directory_before["services"]
    );
    assert_eq!(
        world.answers(client, "ratings", 5).await,
        BTreeMap::from([("ratings-w".to_string(), 5)])
    );

    // The server returns: everything converges by itself, and the edges
    // ask only for what they missed.
    let full_syncs_before: Vec<Option<i64>> =
        edge_metrics(&world, "weft_edge_directory_full_syncs_total").await;
    let server = Server::start_with(
        &world.dir.path().join("server"),
        None,
        &["--edge-listen", &world.edge_listen],
    );
    world.server = Some(server);
    until(
        "east-a's edge is back on the server",
        Duration::from_secs(30),
        async || {
            let status = world.edge_status(EAST_A).await;
            status["fromDisk"] == false && status["directory"]["fromDisk"] == false
        },
    )
    .await;
    // A change made while east-a's edge was away reaches it.
    world.proxy(WEST, "ratings-w2", "ratings", Some("ratings"));
    until(
        "east-a knows west runs 2 ratings",
        Duration::from_secs(30),
        async || {
            world
                .kept_directory(EAST_A)
                .is_some_and(|d| d["clusters"]["west"]["services"]["shop/ratings"]["healthy"] == 2)
        },
    )
    .await;
    let full_syncs_after: Vec<Option<i64>> =
        edge_metrics(&world, "weft_edge_directory_full_syncs_total").await;
    eprintln!(
        "full directory syncs per edge: before the server restart {full_syncs_before:?}, after {full_syncs_after:?}"
    );
    assert_eq!(
        full_syncs_before, full_syncs_after,
        "a reconnecting edge asked for the whole directory"
    );
    // East-a's restarted edge started from its file: it never needed one.
    assert_eq!(full_syncs_after[EAST_A], Some(0));
    let url = format!("{}/metrics", world.server().url);
    let written = metric(
        &world.http,
        &url,
        "weft_server_directory_items_written_total",
    )
    .await;
    eprintln!("directory items written by the restarted server: {written:?}");
    // Only the new ratings instance's count changed.
    assert!(written.is_some_and(|w| w <= 2), "{written:?}");
}

/// A metric of every edge, in cluster order.
/// Crash-only gateways: `weft eastwest` killed with SIGKILL takes its
/// Envoy along, and the same command started again carries calls across
/// clusters again.
async fn a_killed_eastwest_gateway_takes_its_envoy_along_and_the_same_command_serves_again(
    data_plane: DataPlane,
) {
    const EAST_A: usize = 0;
    const EAST_B: usize = 1;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut world = World::start(data_plane).await;
    let client = world.proxy(EAST_A, "client-a", "client", None);
    // ratings runs in east-b only: every call crosses east-b's gateway.
    world.proxy(EAST_B, "ratings-b", "ratings", Some("ratings"));
    world.until_directory(EAST_A, 1).await;
    world.until_in_sync().await;
    world
        .until_answered_by(
            client,
            "ratings",
            "ratings-b",
            "ratings answers from east-b",
        )
        .await;

    let gateway = world.clusters[EAST_B].gateway.take().unwrap();
    let pid = gateway.0.id();
    let envoys = weft_agent::procfs::children_of(pid);
    assert_eq!(envoys.len(), 1, "the gateway runs one Envoy");
    support::kill9(pid);
    drop(gateway);
    support::until_gone("the gateway's Envoy is gone", &envoys).await;

    let restarted = Instant::now();
    world.start_gateway(EAST_B);
    world
        .until_answered_by(
            client,
            "ratings",
            "ratings-b",
            "the restarted gateway carries calls to east-b",
        )
        .await;
    println!(
        "a killed east-west gateway, started again, carried calls after {:?}",
        restarted.elapsed()
    );
}

async fn edge_metrics(world: &World, name: &str) -> Vec<Option<i64>> {
    let mut values = Vec::new();
    for c in 0..world.clusters.len() {
        values.push(world.edge_metric(c, name).await);
    }
    values
}

/// `weft up --multi-cluster`: three clusters come up, and killing the
/// instances it names moves the calls to the next region, as it says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_up_runs_three_clusters_and_shows_failover() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("up");
    let port = free_port();
    let (mut up, printed) = weft_up(&data, port, &["--multi-cluster"]);
    let pids: Vec<String> = printed
        .lines()
        .filter_map(|l| l.trim().strip_prefix("kill "))
        .map(str::to_string)
        .collect();
    assert_eq!(pids.len(), 3, "{printed}");
    weft_identity::tls::install_provider();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // The tier-1 gateway, as printed: both clusters answer; with east-2's
    // ingress gateway stopped, only west-1 does.
    let tier1 = async || -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..40 {
            let answered = http
                .get("http://127.0.1.20:8080/")
                .header("host", "shop.weft.local")
                .send()
                .await;
            let who = match answered {
                Ok(r) if r.status() == 200 => {
                    let body: Value = r.json().await.unwrap_or_default();
                    body["instance"].as_str().unwrap_or("?").to_string()
                }
                Ok(r) => format!("status {}", r.status()),
                Err(_) => "no answer".to_string(),
            };
            *seen.entry(who).or_default() += 1;
        }
        seen
    };
    assert!(
        printed.contains("curl -H 'Host: shop.weft.local' http://127.0.1.20:8080/"),
        "{printed}"
    );
    until(
        "the tier-1 gateway reaches east-2 and west-1",
        Duration::from_secs(60),
        async || {
            let seen = tier1().await;
            seen.contains_key("reviews-east-2") && seen.contains_key("reviews-west-1")
        },
    )
    .await;
    assert!(
        Command::new("kill")
            .arg(&pids[2])
            .status()
            .unwrap()
            .success()
    );
    until(
        "all tier-1 traffic goes to west-1",
        Duration::from_secs(60),
        async || tier1().await.keys().collect::<Vec<_>>() == ["reviews-west-1"],
    )
    .await;
    let answers_from = async |instance: &str| -> bool {
        for _ in 0..5 {
            let answered = http
                .get(format!("http://127.0.0.1:{port}/"))
                .header("host", "reviews")
                .send()
                .await;
            let Ok(response) = answered else { return false };
            let body: Value = response.json().await.unwrap_or_default();
            if body["instance"] != instance {
                return false;
            }
        }
        true
    };
    for (instance, pid) in [
        ("reviews-east-1", Some(&pids[0])),
        ("reviews-east-2", Some(&pids[1])),
        ("reviews-west-1", None),
    ] {
        until(
            &format!("{instance} answers"),
            Duration::from_secs(30),
            async || answers_from(instance).await,
        )
        .await;
        if let Some(pid) = pid {
            assert!(Command::new("kill").arg(pid).status().unwrap().success());
        }
    }
    assert!(up.stop(), "weft up did not stop within 10 s of SIGTERM");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the client's sidecar still listens after weft up stopped"
    );
}

/// The chaos test: `weft x chaos` runs `weft up --multi-cluster` under a
/// steady load and SIGKILLs a random process of it every few seconds (the
/// server, an edge, a gateway, a sidecar, an Envoy, an app); no request
/// may fail and the mesh must heal after every kill. 60 s here; 10
/// minutes with `WEFT_LONG_TESTS=1` (before a release).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_fails_while_random_processes_are_killed() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let long = std::env::var_os("WEFT_LONG_TESTS").is_some_and(|v| !v.is_empty());
    let (duration, seconds) = if long { ("10m", 600.0) } else { ("60s", 60.0) };
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let run = support::run(
        Command::new(WEFT)
            .args(["x", "chaos", "--duration", duration, "--every", "5s"])
            // Enough in flight that a dead instance's requests outnumber
            // Envoy's default cap of 3 concurrent retries.
            .args(["--rate", "100", "--connections", "8"])
            .arg("--data")
            .arg(dir.path().join("mesh"))
            .arg("--report")
            .arg(&report)
            .arg("--envoy")
            .arg(envoy()),
    );
    println!("{}", run.stdout);
    if run.code != 0 {
        show_log_tails(&dir.path().join("mesh/multi-cluster/logs"));
    }
    assert_eq!(run.code, 0, "{run:?}");
    let report: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(report["failed"], 0, "{report}");
    let kills = report["kills"].as_array().unwrap();
    // A kill every 5 s, each after the mesh healed from the last.
    assert!(kills.len() as f64 >= seconds / 10.0, "{report}");
    assert!(
        kills.iter().all(|k| k["healedAfter"].is_number()),
        "{report}"
    );
    // The load kept its pace: 100 requests/s, within a tenth.
    let sent = report["sent"].as_f64().unwrap();
    assert!(sent >= 100.0 * seconds * 0.9, "{sent} requests sent");
}

/// A tier-1 gateway in east-a in front of east-b's and west's ingress
/// gateways (which serve `*.example.com`, covering the tier-1's
/// `shop.example.com`): 80/20 between them; one ingress gateway killed under load
/// leaves all traffic to the other without a failed request, and its
/// traffic returns once it is back.
async fn a_tier1_gateway_splits_across_clusters_and_fails_over(data_plane: DataPlane) {
    const EAST_A: usize = 0;
    const EAST_B: usize = 1;
    const WEST: usize = 2;
    let _alone = ONE_AT_A_TIME.lock().await;
    let mut world = World::start(data_plane).await;
    let (tier1_port, ingress_port) = (free_port(), free_port());
    let manifest = format!(
        "apiVersion: weft.dev/v1alpha1
kind: SecuritySetting
metadata: {{name: from-the-ingress, tenant: retail, workspace: shop}}
spec:
  service: {{name: reviews, namespace: shop}}
  authorization:
    allow: [{{from: [{{serviceAccount: {{name: ingress, namespace: shop}}}}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: GatewayGroup
metadata: {{name: front, tenant: retail, workspace: shop}}
spec: {{namespaceSelector: ['*/shop']}}
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: ingress, tenant: retail, workspace: shop, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: shop, labels: {{tier: '2'}}}}
  http:
    - name: shop
      port: {ingress_port}
      hostname: '*.example.com'
      routes: [{{to: [{{service: shop/reviews}}]}}]
---
apiVersion: weft.dev/v1alpha1
kind: Gateway
metadata: {{name: tier1, tenant: retail, workspace: shop, gatewayGroup: front}}
spec:
  workloadSelector: {{namespace: shop, labels: {{tier: '1'}}}}
  http:
    - name: shop
      port: {tier1_port}
      hostname: shop.example.com
      routes:
        - clusters: [{{name: east-b, weight: 80}}, {{name: west, weight: 20}}]
          retries: {{attempts: 3, perTryTimeout: 2s, retryOn: [connect-failure, reset, 5xx]}}
"
    );
    let file = write(world.dir.path(), "tier1.yaml", &manifest);
    let applied = world.server().weft(&world.admin, &["apply", "-f", &file]);
    assert_eq!(applied.code, 0, "{applied:?}");
    world.proxy(EAST_B, "reviews-b", "reviews", Some("reviews"));
    world.proxy(WEST, "reviews-w", "reviews", Some("reviews"));
    let mesh_b = free_port();
    let ingress_b = world.gateway(EAST_B, "ingress", "tier=2", "127.0.2.30", Some(mesh_b));
    world.gateway(WEST, "ingress", "tier=2", "127.0.3.30", Some(free_port()));
    world.gateway(EAST_A, "tier1", "tier=1", "127.0.0.1", None);
    world.until_in_sync().await;
    const HOST: &str = "shop.example.com";
    until(
        "the tier-1 gateway reaches both clusters",
        Duration::from_secs(60),
        async || {
            let seen = world.answers(tier1_port, HOST, 20).await;
            seen.contains_key("reviews-b") && seen.contains_key("reviews-w")
        },
    )
    .await;

    let split = world.answers(tier1_port, HOST, 1_000).await;
    println!("tier-1 split over 1,000 requests: {split:?}");
    let to_b = split.get("reviews-b").copied().unwrap_or(0);
    let to_w = split.get("reviews-w").copied().unwrap_or(0);
    assert_eq!(to_b + to_w, 1_000, "every request answered: {split:?}");
    assert!(
        (740..=860).contains(&to_b),
        "80/20 within tolerance: {split:?}"
    );

    // east-b's ingress gateway killed under load: west takes everything,
    // and no request fails (retries move them).
    let load = Load::start(tier1_port, HOST, "/");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let gateway = world.clusters[EAST_B].proxies.remove(&ingress_b).unwrap();
    let envoys = weft_agent::procfs::children_of(gateway.0.id());
    support::kill9(gateway.0.id());
    drop(gateway);
    support::until_gone("east-b's ingress gateway and its Envoy", &envoys).await;
    let killed = Instant::now();
    world
        .until_answered_by(tier1_port, HOST, "reviews-w", "all traffic goes to west")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Back: its share returns.
    let restarted = Instant::now();
    world.gateway(EAST_B, "ingress", "tier=2", "127.0.2.30", Some(mesh_b));
    until(
        "east-b takes traffic again",
        Duration::from_secs(60),
        async || {
            world
                .answers(tier1_port, HOST, 20)
                .await
                .contains_key("reviews-b")
        },
    )
    .await;
    let seen = load.stop().await;
    let (failures, _) = failures_and_first(&seen, killed, "reviews-w");
    let back = seen
        .iter()
        .find(|(at, o)| *at >= restarted && o.as_deref() == Ok("reviews-b"))
        .map(|(at, _)| at.duration_since(restarted));
    println!(
        "tier-1 under load: {} requests, {} failed; east-b back in traffic after {back:?}",
        seen.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "failed requests: {failures:?}");
}

on_both_data_planes!(
    three_clusters_route_locally_fail_over_by_locality_and_survive_their_control_planes,
    a_killed_eastwest_gateway_takes_its_envoy_along_and_the_same_command_serves_again,
    a_tier1_gateway_splits_across_clusters_and_fails_over,
);
