//! Generated `CacheCluster` specs for the agreement tests (issue 16: "admitted means it runs"),
//! and the verdict of the operator and the worker on each.
//!
//! [`spec`] draws specs as a user would write them (JSON, fields left out or set), each field
//! from values the contract accepts and values it refuses: sizes that are not powers of two or
//! not whole bytes, zero timeouts, RDMA devices without a port, schemes workers do not serve,
//! system directories, overlapping host paths, colliding ports, bad interface names.
//! [`verdict`] is what happens after admission: the operator plans the spec
//! (`rcache_operator::validate::plan`), renders the properties file, and the worker parses it
//! (`rcache_contract::accept`). The apiserver's rules must admit exactly the specs whose verdict
//! is `Ok` (e2e/tests/agreement.rs); the operator must never render a file the worker refuses
//! (the unit test below).

use proptest::prelude::*;
use proptest::sample::select;
use rcache_operator::build::properties::render;
use rcache_operator::crd::{CacheCluster, CacheClusterSpec};
use rcache_operator::validate::plan;
use serde_json::{Map, Value, json};

/// Puts `value` at `key` when it is `Some`.
fn put(obj: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        obj.insert(key.to_string(), v);
    }
}

/// Left out (the default) or one of `good` most of the time, one of `bad` once in 31 (so that
/// specs with several bad fields appear too).
fn field<T: Clone + std::fmt::Debug + 'static>(
    good: &[T],
    bad: &[T],
) -> impl Strategy<Value = Option<T>> + use<T> {
    let good = good.to_vec();
    let bad = if bad.is_empty() {
        good.clone()
    } else {
        bad.to_vec()
    };
    prop_oneof![
        10 => Just(None),
        20 => select(good).prop_map(Some),
        1 => select(bad).prop_map(Some),
    ]
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

const PAGE_OK: &[&str] = &["1Mi", "4Ki", "16Mi", "4096", "512Ki"];
const PAGE_BAD: &[&str] = &["32Mi", "3000", "2Ki", "0.5Mi", "1e3", "abc", "0"];
const SIZE_OK: &[&str] = &["1Gi", "256Mi", "8Gi", "1536Mi", "16Mi", "4096"];
const SIZE_BAD: &[&str] = &["0.5", "1e3", "abc", "512Ki", "0", "8Ei", "-1Gi", "1.5Gi"];
/// Bad alone, or out of order (prewarm ≤ initial ≤ max) or below a page with the good ones.
const POOL_BAD: &[&str] = &["0.5", "1e3", "4096", "0", "16Gi", "1Mi", "1.5Gi"];
const PATH_OK: &[&str] = &[
    "/cache",
    "/data/c",
    "/mnt/rcache",
    "/srv/datasets",
    "/mnt/ssd",
];
const PATH_BAD: &[&str] = &[
    "/etc/x",
    "cache",
    "/var",
    "/cache/./x",
    "/var/lib/kubelet",
    "/",
    "/mnt/rcache/",
    "/a b",
    "/data",
];
const DATA_PORT_OK: &[i64] = &[29999, 1234];
const RDMA_PORT_OK: &[i64] = &[59999, 4321];
const WEB_PORT_OK: &[i64] = &[30000, 8080];
/// Bad alone (30001, 0, 70000) or colliding with another field's good ports.
const PORT_BAD: &[i64] = &[30001, 0, 70000, 29999, 59999, 30000];

const URI_BAD: &[&str] = &[
    "file:///etc",
    "file:///data/../x",
    "s3://b/p",
    "hdfs://nn:8020/d",
    "gs://b/p",
    "file://data",
    "file:///",
    "file:///var",
    "file:///da ta",
    "file:///data/",
    "s3://Bad_Bucket/x",
    "s3://bucket/../x",
    "s3://bucket//x",
    "s3://bucket/a b",
];

fn string(v: Option<&str>) -> Option<Value> {
    v.map(s)
}

fn tier(medium: &'static str) -> impl Strategy<Value = Value> {
    (
        Just(medium),
        field(PATH_OK, PATH_BAD),
        field(PATH_OK, PATH_BAD),
        field(SIZE_OK, SIZE_BAD),
    )
        .prop_map(|(medium, path, host, quota)| {
            let mut t = Map::new();
            t.insert("medium".into(), s(medium));
            put(&mut t, "path", string(path));
            put(&mut t, "hostPath", string(host));
            t.insert("quota".into(), s(quota.unwrap_or("1Gi")));
            Value::Object(t)
        })
}

fn worker() -> impl Strategy<Value = Value> {
    (
        field(PAGE_OK, PAGE_BAD),
        prop_oneof![
            3 => Just(None),
            2 => tier("MEM").prop_map(|t| Some(vec![t])),
            2 => tier("SSD").prop_map(|t| Some(vec![t])),
            2 => (tier("MEM"), tier("SSD")).prop_map(|(a, b)| Some(vec![a, b])),
            1 => Just(Some(Vec::new())),
            1 => (tier("MEM"), tier("MEM")).prop_map(|(a, b)| Some(vec![a, b])),
        ],
        field(DATA_PORT_OK, PORT_BAD),
        field(RDMA_PORT_OK, PORT_BAD),
        field(WEB_PORT_OK, PORT_BAD),
        field(&[1i64, 3], &[0, -1]),
        field(&["rcache/rcache:0.1.0"], &[""]),
    )
        .prop_map(|(page, tiers, data, rdma, web, replicas, image)| {
            let mut w = Map::new();
            put(&mut w, "pageSize", string(page));
            put(&mut w, "replicas", replicas.map(Value::from));
            put(&mut w, "image", string(image));
            put(&mut w, "tiers", tiers.map(Value::Array));
            let mut ports = Map::new();
            put(&mut ports, "data", data.map(Value::from));
            put(&mut ports, "rdma", rdma.map(Value::from));
            put(&mut ports, "web", web.map(Value::from));
            if !ports.is_empty() {
                w.insert("ports".into(), Value::Object(ports));
            }
            Value::Object(w)
        })
}

fn fuse() -> impl Strategy<Value = Value> {
    (
        field(&[true, false], &[]),
        field(PATH_OK, PATH_BAD),
        field(&["0", "4Mi", "1536"], &["1.5", "x", "1.5Ki"]),
        field(&[0i64, 8, 1024], &[2000, -1]),
        field(&[1i64, 10000], &[0]),
        field(&["rcache/fuse:0.1.0"], &[""]),
    )
        .prop_map(|(enabled, mount, threshold, parts, cache, image)| {
            let mut f = Map::new();
            put(&mut f, "image", string(image));
            put(&mut f, "enabled", enabled.map(Value::from));
            put(&mut f, "hostMountPath", string(mount));
            put(&mut f, "smallFilePrefetchThreshold", string(threshold));
            put(&mut f, "prefetchParts", parts.map(Value::from));
            put(
                &mut f,
                "openStatusCache",
                cache.map(|m| json!({"enabled": true, "maxSize": m})),
            );
            Value::Object(f)
        })
}

fn ufs() -> impl Strategy<Value = Value> {
    (
        field(
            &[
                "file:///data",
                "file:///srv/datasets",
                "file:///cache",
                "file:///mnt/rcache",
                "s3://rcache-data/train",
                "s3://bucket",
            ],
            URI_BAD,
        ),
        field(PATH_OK, PATH_BAD),
        field(
            &["10s", "0", "-1", "0ms", "5m"],
            &["-2", "10", "9999999999s", "1min"],
        ),
        s3(),
    )
        .prop_map(|(uri, host, sync, s3)| {
            let mut u = Map::new();
            let uri = uri.unwrap_or("file:///data");
            u.insert("uri".into(), s(uri));
            put(&mut u, "hostPath", string(host));
            put(&mut u, "metadataSyncInterval", string(sync));
            // S3 settings with an s3:// URI (with another scheme they are refused: a mutation).
            if uri.starts_with("s3://") {
                put(&mut u, "s3", s3);
            }
            Value::Object(u)
        })
}

const S3_ENDPOINT_OK: &[&str] = &[
    "http://127.0.0.1:8333",
    "https://s3.example.com",
    "http://minio.storage.svc:9000/",
];
const S3_ENDPOINT_BAD: &[&str] = &[
    "minio:9000",
    "http://",
    "https://s3.example.com/bucket",
    "ftp://s3.example.com",
    "http://a b",
    "http://x\nrcache.ufs.uri=file:///etc",
];
const S3_REGION_OK: &[&str] = &["eu-west-1", "us-east-1", "garage_1"];
const S3_REGION_BAD: &[&str] = &[
    "",
    "eu west",
    "eu.west",
    "eu-west-1\nrcache.ufs.uri=file:///etc",
];

/// `spec.ufs.s3`: left out, or endpoint, region and pathStyle each left out or drawn.
fn s3() -> impl Strategy<Value = Option<Value>> {
    (
        field(&[true], &[]),
        field(S3_ENDPOINT_OK, S3_ENDPOINT_BAD),
        field(S3_REGION_OK, S3_REGION_BAD),
        field(&[true, false], &[]),
    )
        .prop_map(|(present, endpoint, region, path_style)| {
            present.map(|_| {
                let mut o = Map::new();
                put(&mut o, "endpoint", string(endpoint));
                put(&mut o, "region", string(region));
                put(&mut o, "pathStyle", path_style.map(Value::from));
                Value::Object(o)
            })
        })
}

fn network() -> impl Strategy<Value = Value> {
    (
        (
            // rdma and ipoib with what they need; bare (refused) by a mutation.
            field(&["tcp", "tcp", "ipoib", "rdma"], &[]),
            field(&[false], &[true]),
            field(
                &["ib0", "net1", "eth0.100"],
                &["bad name", "ib0-too-long-name", ""],
            ),
            field(&["ib0", "eth0.100"], &["", "ib 0", "-x"]),
            field(&["rdma/hca_shared_devices_a"], &[]),
            field(&["none", "tcp"], &[]),
        ),
        (
            field(
                &["mlx5_0:1", "mlx5_0:1,mlx5_1:2", "rxe0:255"],
                &["mlx5_0", "mlx5_0:0", "mlx5_0:256", "mlx5_0:01"],
            ),
            field(&["30s", "500", "1m", "0500ms"], &["0s", "0", "10x", "1min"]),
            field(&["256Mi", "1Gi", "16Mi"], POOL_BAD),
            field(&["256Mi", "64Mi", "16Mi"], POOL_BAD),
            field(&["8Gi", "1Gi", "1536Mi"], POOL_BAD),
            field(&[1i64, 2], &[0]),
        ),
    )
        .prop_map(
            |(
                (mode, host, iface, bind, resource, fallback),
                (device, timeout, initial, prewarm, max, count),
            )| {
                let mut n = Map::new();
                put(&mut n, "mode", string(mode));
                let resource = match mode {
                    Some("rdma") => resource.or(Some("rdma/hca_shared_devices_a")),
                    _ => resource,
                };
                let iface = match mode {
                    Some("ipoib") => iface.or(Some("ib0")),
                    _ => iface,
                };
                put(&mut n, "fallback", string(fallback));
                put(&mut n, "hostNetwork", host.map(Value::from));
                put(
                    &mut n,
                    "attachments",
                    iface.map(|i| json!([{"name": "net", "interface": i}])),
                );
                put(&mut n, "bindDevice", string(bind));
                let mut r = Map::new();
                put(&mut r, "resourceName", string(resource));
                put(&mut r, "resourceCount", count.map(Value::from));
                put(&mut r, "device", string(device));
                put(&mut r, "operationTimeout", string(timeout));
                let mut pool = Map::new();
                put(&mut pool, "initial", string(initial));
                put(&mut pool, "prewarm", string(prewarm));
                put(&mut pool, "max", string(max));
                if !pool.is_empty() {
                    r.insert("bufferPool".into(), Value::Object(pool));
                }
                n.insert("rdma".into(), Value::Object(r));
                Value::Object(n)
            },
        )
}

/// Sets the value at JSON `pointer` (`/worker/ports/web`), creating missing objects; an array
/// index past the end leaves `spec` as it is.
fn set(spec: &mut Value, pointer: &str, value: Value) {
    let mut cur = spec;
    let parts: Vec<&str> = pointer.split('/').skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        cur = match cur {
            Value::Array(items) => {
                match part.parse::<usize>().ok().and_then(|n| items.get_mut(n)) {
                    Some(item) => item,
                    None => return,
                }
            }
            Value::Object(map) if last => {
                map.insert((*part).to_string(), value);
                return;
            }
            Value::Object(map) => map.entry(*part).or_insert_with(|| json!({})),
            _ => return,
        };
        if last {
            *cur = value;
            return;
        }
    }
}

/// One bad value per entry, each put into an otherwise drawn spec on its own, so every value the
/// contract refuses is tried in isolation many times per run.
fn mutations() -> Vec<(String, Value)> {
    let mut m: Vec<(String, Value)> = Vec::new();
    let mut add = |pointer: &str, values: Vec<Value>| {
        for v in values {
            m.push((pointer.to_string(), v));
        }
    };
    let strs = |v: &[&str]| v.iter().map(|x| s(x)).collect::<Vec<_>>();
    let ints = |v: &[i64]| v.iter().map(|&x| Value::from(x)).collect::<Vec<_>>();
    add("/worker/pageSize", strs(PAGE_BAD));
    add("/worker/replicas", ints(&[0, -1]));
    add("/worker/image", strs(&[""]));
    for port in ["data", "rdma", "web"] {
        add(&format!("/worker/ports/{port}"), ints(PORT_BAD));
    }
    add(
        "/worker/tiers",
        vec![
            json!([{"medium": "MEM", "quota": "512Ki"}]),
            json!([{"medium": "MEM", "quota": "1.5Gi"}]),
            json!([{"medium": "MEM", "quota": "1Gi"}, {"medium": "MEM", "quota": "2Gi"}]),
            json!([{"medium": "SSD", "quota": "1Gi"}]),
            json!([{"medium": "SSD", "path": "/etc/x", "quota": "1Gi"}]),
            json!([{"medium": "SSD", "path": "/data/c", "quota": "1Gi"}]),
            json!([{"medium": "SSD", "path": "/c", "hostPath": "/var", "quota": "1Gi"}]),
            json!([{"medium": "SSD", "path": "/c", "hostPath": "/mnt/rcache/x", "quota": "1Gi"}]),
            json!([{"medium": "SSD", "path": "/c", "quota": "64Ki"}]),
        ],
    );
    add("/worker/tiers/0/quota", strs(SIZE_BAD));
    add("/worker/tiers/0/path", strs(PATH_BAD));
    add("/worker/tiers/0/hostPath", strs(PATH_BAD));
    add("/fuse/hostMountPath", strs(PATH_BAD));
    add(
        "/fuse/smallFilePrefetchThreshold",
        strs(&["1.5", "x", "1.5Ki", "-1"]),
    );
    add("/fuse/prefetchParts", ints(&[2000, -1]));
    add("/fuse/openStatusCache/maxSize", ints(&[0]));
    add("/fuse/image", strs(&[""]));
    add("/ufs/uri", strs(URI_BAD));
    add("/ufs/s3/endpoint", strs(S3_ENDPOINT_BAD));
    add("/ufs/s3/region", strs(S3_REGION_BAD));
    add("/ufs/s3", vec![json!({"pathStyle": true})]);
    add("/ufs/hostPath", strs(PATH_BAD));
    add("/ufs/hostPath", strs(&["/mnt/rcache"]));
    add(
        "/ufs/metadataSyncInterval",
        strs(&["-2", "10", "9999999999s", "1min", "1.5s"]),
    );
    add(
        "/network/attachments",
        vec![
            json!([{"name": "net", "interface": "bad name"}]),
            json!([{"name": "net", "interface": "ib0-too-long-name"}]),
        ],
    );
    add(
        "/network/bindDevice",
        strs(&["", "ib 0", "-x", "ib0\nrcache.ufs.uri=file:///etc"]),
    );
    add(
        "/network/rdma/device",
        strs(&["mlx5_0", "mlx5_0:0", "mlx5_0:256", "mlx5_0:01", "mlx5_0:1,"]),
    );
    add(
        "/network/rdma/operationTimeout",
        strs(&["0s", "0", "10x", "1min", "0000ms", "1234567890s"]),
    );
    for f in ["initial", "prewarm", "max"] {
        add(&format!("/network/rdma/bufferPool/{f}"), strs(POOL_BAD));
    }
    add("/network/rdma/resourceCount", ints(&[0]));
    add("/network/hostNetwork", vec![Value::Bool(true)]);
    add("/network/mode", strs(&["rdma", "ipoib"]));
    m
}

/// A spec as a user would write it: fields left out or drawn from accepted values (now and
/// then a refused one), then, two times in three, one entry of [`mutations`] put in.
pub fn spec() -> impl Strategy<Value = Value> {
    // Boxed parts keep the strategy's value trees small enough for a test thread's stack.
    let base = (
        worker().boxed(),
        fuse().boxed(),
        ufs().boxed(),
        network().boxed(),
    )
        .prop_map(|(w, f, u, n)| json!({"worker": w, "fuse": f, "ufs": u, "network": n}))
        .boxed();
    let mutation = prop_oneof![
        1 => Just(None),
        2 => select(mutations()).prop_map(Some),
    ];
    (base, mutation).prop_map(|(mut spec, mutation)| {
        if let Some((pointer, value)) = mutation {
            set(&mut spec, &pointer, value);
        }
        spec
    })
}

/// What the operator and the worker make of `spec` once admitted: `Ok(())` when the operator
/// plans it and the worker accepts the properties rendered from it; else the first refusal.
pub fn verdict(spec: &Value) -> Result<(), String> {
    let spec: CacheClusterSpec =
        serde_json::from_value(spec.clone()).map_err(|e| format!("spec does not decode: {e}"))?;
    let mut cc = CacheCluster::new("agree", spec);
    cc.metadata.namespace = Some("agree-ns".into());
    let plan = plan(&cc).map_err(|e| format!("operator: {e}"))?;
    let text = render(&plan);
    rcache_contract::accept(&text, "rendered")
        .map(|_| ())
        .map_err(|e| format!("worker: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The operator's checks and the worker's agree: a spec the operator plans renders a
        /// properties file the worker accepts (a refusal is always the operator's, with the
        /// field named, never a worker crash loop).
        #[test]
        fn every_spec_the_operator_plans_renders_properties_the_worker_accepts(spec in spec()) {
            let outcome = verdict(&spec);
            prop_assert!(
                !outcome.as_ref().is_err_and(|e| e.starts_with("worker:")),
                "{spec}: {outcome:?}"
            );
        }
    }

    #[test]
    fn the_generator_draws_both_accepted_and_refused_specs() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..500 {
            let spec = spec().new_tree(&mut runner).expect("tree").current();
            match verdict(&spec) {
                Ok(()) => ok += 1,
                Err(_) => refused += 1,
            }
        }
        eprintln!("of 500 generated specs: {ok} run, {refused} refused");
        assert!(ok >= 50 && refused >= 50, "ok {ok}, refused {refused}");
    }
}
