//! The local S3 server of the S3 tests (SeaweedFS from `e2e/s3/s3server`, started once per
//! machine, idempotently): its endpoint and test credentials, a client to upload objects, and
//! `require_s3!`, which under `CI=true` fails a test that cannot reach it (elsewhere the test
//! prints `skipped: <why>`). Included by path from the worker's and the FUSE client's tests.
#![allow(dead_code)] // each test binary uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as StorePath;
use object_store::{ObjectStoreExt, PutPayload};

pub const BUCKET: &str = "rcache-tests";

/// The local S3 server's endpoint and test credentials (`e2e/s3/s3server env`).
pub struct S3 {
    pub endpoint: String,
    pub access: String,
    pub secret: String,
}

/// The repository root: the first directory above this crate holding `e2e/s3/s3server`.
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("e2e/s3/s3server").exists())
        .expect("e2e/s3/s3server above the crate")
        .to_path_buf()
}

fn s3server(args: &[&str]) -> Result<String, String> {
    let script = repo_root().join("e2e/s3/s3server");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "`e2e/s3/s3server {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn s3_env() -> Result<&'static S3, String> {
    static S3_ENV: OnceLock<Result<S3, String>> = OnceLock::new();
    S3_ENV
        .get_or_init(|| {
            s3server(&["up"])?;
            s3server(&["mb", BUCKET])?;
            let env = s3server(&["env"])?;
            let var = |k: &str| {
                env.lines()
                    .find_map(|l| l.strip_prefix(&format!("export {k}=")))
                    .map(str::to_string)
                    .ok_or_else(|| format!("`e2e/s3/s3server env` printed no {k}"))
            };
            Ok(S3 {
                endpoint: var("AWS_ENDPOINT_URL")?,
                access: var("AWS_ACCESS_KEY_ID")?,
                secret: var("AWS_SECRET_ACCESS_KEY")?,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

#[macro_export]
macro_rules! require_s3 {
    () => {
        match $crate::s3env::s3_env() {
            Ok(s3) => s3,
            Err(why) => {
                let why = format!("the S3 tests need the local S3 server ({why})");
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("CI=true and this test cannot run: {why}");
                }
                eprintln!("skipped: {why}");
                return;
            }
        }
    };
}

impl S3 {
    pub fn store(&self) -> AmazonS3 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_bucket_name(BUCKET)
            .with_region("us-east-1")
            .with_access_key_id(&self.access)
            .with_secret_access_key(&self.secret)
            .build()
            .expect("test S3 client")
    }

    /// The worker's S3 properties for the local server.
    pub fn props(&self) -> Vec<(&'static str, String)> {
        vec![
            ("rcache.underfs.s3.endpoint", self.endpoint.clone()),
            ("rcache.underfs.s3.region", "us-east-1".into()),
            ("rcache.underfs.s3.path.style", "true".into()),
            ("rcache.underfs.s3.request.timeout", "10s".into()),
        ]
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

/// A key prefix of its own for each test run.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{tag}-{}-{nanos}", std::process::id())
}

pub async fn put(store: &AmazonS3, key: &str, bytes: &[u8]) {
    store
        .put(&StorePath::from(key), PutPayload::from(bytes.to_vec()))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}
