//! The `<name>-auth` Secret: the cluster's shared secret that workers ask every data connection
//! to prove (challenge-response, `rcache.security.auth.secret.file`), mounted into the worker and
//! FUSE pods through the config volume (`auth/token` under /etc/rcache). Pure: the token is made
//! by the reconcile ([`new_token`] is its only source of randomness) and handed in.
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
/// Where the token is inside every rcache container (rendered as
/// `rcache.security.auth.secret.file`).
pub const TOKEN_PATH: &str = "/etc/rcache/auth/token";
/// CacheCluster annotation: change its value to rotate the secret.
pub const ANNOTATION_ROTATE: &str = "rcache.io/rotate-auth-secret";
/// Secret annotation: the rotation value the token was made for.
pub const ANNOTATION_ROTATION: &str = "rcache.io/auth-rotation";
/// Random bytes in a token (hex-encoded in the Secret).
pub const TOKEN_BYTES: usize = 32;

/// A fresh token: [`TOKEN_BYTES`] random bytes from the system generator, as lowercase hex (so
/// no byte of it is white space a file reader might trim).
pub fn new_token() -> Result<String, String> {
    let mut b = [0u8; TOKEN_BYTES];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| "the system random generator failed".to_string())?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// A short, one-way fingerprint of a token (SHA-256, first 16 hex digits): it goes into the
/// pods' config hash so a new token rolls them, without putting the token in the pod spec.
pub fn fingerprint(token: &str) -> String {
    digest::digest(&digest::SHA256, token.as_bytes())
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

/// The token of an existing Secret when it is still the one to use: it holds a usable token
/// made for the wanted rotation value. `None`: make a new one.
pub fn current_token(secret: &Secret, rotation: &str) -> Option<String> {
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
    let raw = secret.data.as_ref()?.get(TOKEN_KEY)?;
    let token = std::str::from_utf8(&raw.0).ok()?.trim();
    (token.len() >= 2 * 16).then(|| token.to_string())
}

/// The Secret holding `token`, made for rotation value `rotation`.
pub fn secret(plan: &ClusterPlan, token: &str, rotation: &str) -> Secret {
    let mut meta = child_meta(plan, names::auth(&plan.name), COMPONENT_AUTH);
    meta.annotations = Some(BTreeMap::from([(
        ANNOTATION_ROTATION.to_string(),
        rotation.to_string(),
    )]));
    Secret {
        metadata: meta,
        type_: Some("Opaque".to_string()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::plan_of;

    #[test]
    fn tokens_are_fresh_64_hex_digits() {
        let a = new_token().expect("token");
        let b = new_token().expect("token");
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_secret_is_an_owned_child_holding_the_token_and_its_rotation() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let s = secret(&plan, "ab".repeat(32).as_str(), "r1");
        assert_eq!(s.metadata.name.as_deref(), Some("demo-auth"));
        assert_eq!(s.metadata.namespace.as_deref(), Some("demo-ns"));
        let o = &s.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!((o.kind.as_str(), o.uid.as_str()), ("CacheCluster", "uid-1"));
        assert_eq!(
            s.metadata.labels.as_ref().expect("labels")["app.kubernetes.io/component"],
            "auth"
        );
        assert_eq!(current_token(&s, "r1"), Some("ab".repeat(32)));
    }

    #[test]
    fn a_new_rotation_value_or_a_missing_token_asks_for_a_new_token() {
        let plan = plan_of("ufs: {uri: 'file:///data'}");
        let s = secret(&plan, "ab".repeat(32).as_str(), "");
        assert!(current_token(&s, "").is_some());
        assert_eq!(current_token(&s, "2026-12-06"), None);
        let mut empty = s.clone();
        empty.data = None;
        assert_eq!(current_token(&empty, ""), None);
        let mut short = s;
        short.data = Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(b"short".to_vec()),
        )]));
        assert_eq!(current_token(&short, ""), None);
    }

    #[test]
    fn the_rotation_comes_from_the_cluster_annotation() {
        let a = BTreeMap::from([(ANNOTATION_ROTATE.to_string(), "now".to_string())]);
        assert_eq!(wanted_rotation(Some(&a)), "now");
        assert_eq!(wanted_rotation(None), "");
    }

    #[test]
    fn the_fingerprint_is_stable_short_and_differs_per_token() {
        let t = "ab".repeat(32);
        assert_eq!(fingerprint(&t), fingerprint(&t));
        assert_eq!(fingerprint(&t).len(), 16);
        assert_ne!(fingerprint(&t), fingerprint(&"cd".repeat(32)));
        assert!(!t.contains(&fingerprint(&t)));
    }
}
