//! The `<name>-auth` Secret: the cluster's shared secret that workers ask every data connection
//! to prove (challenge-response, `rcache.security.auth.secret.file`), and the CA and worker
//! certificate of TLS on TCP (`rcache.security.tls.*`, used when `spec.network.tls`), mounted
//! into the worker and FUSE pods through the config volume (`auth/` under /etc/rcache; the
//! worker's private key only into worker pods). Pure apart from [`new_material`], the only
//! source of randomness, which the reconcile calls.
//!
//! Rotation: setting or changing the CacheCluster annotation [`ANNOTATION_ROTATE`] makes the
//! reconcile generate a new token; the token's fingerprint is part of the pods' config hash, so
//! the worker and FUSE pods roll onto it.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use ring::digest;
use ring::rand::{SecureRandom, SystemRandom};

use super::{child_meta, names};
use crate::validate::ClusterPlan;

/// Component label of the Secret.
pub const COMPONENT_AUTH: &str = "auth";
/// Key of the token in the Secret (and file name under `auth/` in the config volume).
pub const TOKEN_KEY: &str = "token";
/// Key of the cluster's CA certificate (PEM) in the Secret.
pub const CA_KEY: &str = "ca.crt";
/// Key of the workers' certificate (PEM) in the Secret.
pub const CERT_KEY: &str = "tls.crt";
/// Key of the workers' private key (PEM) in the Secret.
pub const KEY_KEY: &str = "tls.key";
/// The DNS name in the workers' certificate (`rcache.security.tls.server.name`'s default).
pub const SERVER_NAME: &str = "rcache-worker";
/// Where the files are inside every rcache container.
pub const AUTH_DIR: &str = "/etc/rcache/auth";
/// Where the token is inside every rcache container (rendered as
/// `rcache.security.auth.secret.file`).
pub const TOKEN_PATH: &str = "/etc/rcache/auth/token";
/// CacheCluster annotation: change its value to rotate the secret.
pub const ANNOTATION_ROTATE: &str = "rcache.io/rotate-auth-secret";
/// Secret annotation: the rotation value the token was made for.
pub const ANNOTATION_ROTATION: &str = "rcache.io/auth-rotation";
/// Random bytes in a token (hex-encoded in the Secret).
pub const TOKEN_BYTES: usize = 32;

/// What the Secret holds. No `Debug`: it would print the token and the key.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthMaterial {
    /// The shared secret, 64 hex digits.
    pub token: String,
    /// The cluster's CA certificate, PEM.
    pub ca_pem: String,
    /// The workers' certificate for [`SERVER_NAME`], signed by the CA, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
}

/// Fresh material: a token ([`new_token`]) and a new ECDSA P-256 CA and worker certificate.
pub fn new_material(plan: &ClusterPlan) -> Result<AuthMaterial, String> {
    let token = new_token()?;
    let err = |e: rcgen::Error| format!("cannot make the cluster's TLS certificates: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("rcache CA {}/{}", plan.namespace, plan.name),
    );
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(err)?;
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, SERVER_NAME);
    let cert = params.signed_by(&key, &ca).map_err(err)?;
    Ok(AuthMaterial {
        token,
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A fresh token: [`TOKEN_BYTES`] random bytes from the system generator, as lowercase hex (so
/// no byte of it is white space a file reader might trim).
pub fn new_token() -> Result<String, String> {
    let mut b = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random generator failed".to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A short, one-way fingerprint of the material (SHA-256 of token and certificate, first 16
/// hex digits): it goes into the pods' config hash so new material rolls them, without putting
/// the token in the pod spec.
pub fn fingerprint(m: &AuthMaterial) -> String {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(m.token.as_bytes());
    ctx.update(m.cert_pem.as_bytes());
    ctx.finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The rotation value the CacheCluster asks for (its [`ANNOTATION_ROTATE`] annotation).
pub fn wanted_rotation(annotations: Option<&BTreeMap<String, String>>) -> String {
    annotations
        .and_then(|a| a.get(ANNOTATION_ROTATE))
        .cloned()
        .unwrap_or_default()
}

/// The material of an existing Secret when it is still the one to use: made for the wanted
/// rotation value, with a usable token and all the TLS files. `None`: make new material.
pub fn current_material(secret: &Secret, rotation: &str) -> Option<AuthMaterial> {
    let made_for = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_ROTATION))
        .map(String::as_str)
        .unwrap_or_default();
    if made_for != rotation {
        return None;
    }
    let data = secret.data.as_ref()?;
    let text = |k: &str| {
        let raw = data.get(k)?;
        std::str::from_utf8(&raw.0).ok().map(str::to_string)
    };
    let token = text(TOKEN_KEY)?.trim().to_string();
    let m = AuthMaterial {
        token,
        ca_pem: text(CA_KEY)?,
        cert_pem: text(CERT_KEY)?,
        key_pem: text(KEY_KEY)?,
    };
    (m.token.len() >= 2 * 16
        && [&m.ca_pem, &m.cert_pem, &m.key_pem]
            .iter()
            .all(|p| p.contains("-----BEGIN")))
    .then_some(m)
}

/// The Secret holding `m`, made for rotation value `rotation`.
pub fn secret(plan: &ClusterPlan, m: &AuthMaterial, rotation: &str) -> Secret {
    let mut meta = child_meta(plan, names::auth(&plan.name), COMPONENT_AUTH);
    meta.annotations = Some(BTreeMap::from([(
        ANNOTATION_ROTATION.to_string(),
        rotation.to_string(),
    )]));
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([
            (
                TOKEN_KEY.to_string(),
                ByteString(m.token.as_bytes().to_vec()),
            ),
            (CA_KEY.to_string(), ByteString(m.ca_pem.as_bytes().to_vec())),
            (
                CERT_KEY.to_string(),
                ByteString(m.cert_pem.as_bytes().to_vec()),
            ),
            (
                KEY_KEY.to_string(),
                ByteString(m.key_pem.as_bytes().to_vec()),
            ),
        ])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    fn material(token: &str) -> AuthMaterial {
        AuthMaterial {
            token: token.to_string(),
            ca_pem: "-----BEGIN CERTIFICATE-----\nca\n".into(),
            cert_pem: "-----BEGIN CERTIFICATE-----\ncert\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nkey\n".into(),
        }
    }

    #[test]
    fn tokens_are_fresh_64_hex_digits() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn new_material_holds_a_ca_and_a_worker_certificate_and_key_in_pem() {
        let m = new_material(&plan_of("ufs: {uri: 'file:///data'}")).expect("material");
        assert!(m.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(m.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(m.ca_pem, m.cert_pem);
    }

    #[test]
    fn the_secret_is_an_owned_child_holding_the_material_and_its_rotation() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let m = material(&"ab".repeat(32));
        let s = secret(&plan, &m, "r1");
        assert_eq!(s.metadata.name.as_deref(), Some("demo-auth"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("demo-ns"));
        let o = &s.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((o.kind.as_str(), o.uid.as_str()), ("CacheCluster", "uid-1"));
        assert_eq!(
            s.metadata.labels.as_ref().expect("labels")["app.kubernetes.io/component"],
            "auth"
        );
        let keys: Vec<&str> = s
            .data
            .as_ref()
            .expect("data")
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, ["ca.crt", "tls.crt", "tls.key", "token"]);
        assert!(current_material(&s, "r1") == Some(m));
    }

    #[test]
    fn a_new_rotation_value_or_missing_material_asks_for_new_material() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let s = secret(&plan, &material(&"ab".repeat(32)), "");
        assert!(current_material(&s, "").is_some());
        assert!(current_material(&s, "2026-12-06").is_none());
        let mut no_ca = s.clone();
        no_ca.data.as_mut().expect("data").remove(CA_KEY);
        assert!(current_material(&no_ca, "").is_none());
        let short = secret(&plan, &material("short"), "");
        assert!(current_material(&short, "").is_none());
    }

    #[test]
    fn the_rotation_comes_from_the_cluster_annotation() {
        let a = BTreeMap::from([(ANNOTATION_ROTATE.to_string(), "now".to_string())]);
        assert_eq!(wanted_rotation(Some(&a)), "now");
        assert_eq!(wanted_rotation(None), "");
    }

    #[test]
    fn the_fingerprint_is_stable_short_and_differs_per_token_and_certificate() {
        let m = material(&"ab".repeat(32));
        assert!(fingerprint(&m) == fingerprint(&m.clone()));
        assert_eq!(fingerprint(&m).len(), 16);
        assert_ne!(fingerprint(&m), fingerprint(&material(&"cd".repeat(32))));
        let mut other_cert = m.clone();
        other_cert.cert_pem.push('x');
        assert_ne!(fingerprint(&m), fingerprint(&other_cert));
        assert!(!m.token.contains(&fingerprint(&m)));
    }
}
