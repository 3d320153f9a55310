//! Client authentication at connection setup, the same on TCP and UCX: the client proves that
//! it knows the cluster's secret without sending it. It asks for a challenge (`AuthHello`), the
//! server answers a fresh random nonce (`AuthChallenge`), the client answers
//! HMAC-SHA256(secret, nonce || context) (`AuthProof`), where the context names the protocol
//! version and the transport so a proof made for one cannot be replayed on the other.
//!
//! This module owns the secret ([`AuthKey`]), the proof, and the per-connection [`Gate`] the
//! servers put in front of their handler. It does not read properties or files of the worker's
//! configuration (the worker does, `rcache.security.auth.secret.file`) and does not encrypt.

use std::path::Path;

use bytes::Bytes;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use crate::TransportKind;
use crate::protocol::{ErrorCode, Request, Response};

/// Bytes of a server nonce.
pub const NONCE_LEN: usize = 32;
/// Shortest secret accepted: shorter ones are guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// The cluster's shared secret, ready to make and check proofs. Its `Debug` never shows it.
#[derive(Clone)]
pub struct AuthKey {
    key: hmac::Key,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKey(<redacted>)")
    }
}

impl AuthKey {
    /// A key from the secret's bytes (at least [`MIN_SECRET_LEN`]).
    pub fn new(secret: &[u8]) -> Result<AuthKey, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret has {} bytes; at least {MIN_SECRET_LEN} are needed",
                secret.len()
            ));
        }
        Ok(AuthKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        })
    }

    /// A key from a file holding the secret (a mounted Secret's key). Surrounding white space
    /// (a trailing newline of a hand-made file) is not part of the secret.
    pub fn from_file(path: &Path) -> Result<AuthKey, String> {
        let raw =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        AuthKey::new(raw.trim_ascii()).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn context(kind: TransportKind) -> &'static [u8] {
        match kind {
            TransportKind::Tcp => b"rcache-auth-v1/tcp",
            TransportKind::Ucx => b"rcache-auth-v1/ucx",
        }
    }

    /// The proof for `nonce` on a connection of `kind`.
    pub fn proof(&self, nonce: &[u8], kind: TransportKind) -> Bytes {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(nonce);
        ctx.update(Self::context(kind));
        Bytes::copy_from_slice(ctx.sign().as_ref())
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, nonce: &[u8], kind: TransportKind, mac: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(nonce.len() + 32);
        msg.extend_from_slice(nonce);
        msg.extend_from_slice(Self::context(kind));
        hmac::verify(&self.key, &msg, mac).is_ok()
    }
}

/// A fresh random nonce; `None` when the system's generator fails (the connection is refused).
fn nonce() -> Option<Bytes> {
    let mut n = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut n).ok()?;
    Some(Bytes::copy_from_slice(&n))
}

/// The error reply that ends an unauthenticated connection.
pub fn refusal(why: &str) -> Response {
    Response::error(
        ErrorCode::Unauthenticated,
        format!("authentication failed: {why}"),
    )
}

enum GateState {
    /// Requests go to the handler (authenticated, or the server asks for no authentication).
    Open,
    /// Nothing but `AuthHello` yet.
    AwaitHello,
    Challenged(Bytes),
    /// Refused: every further request gets the refusal (the transport closes what it can).
    Refused(String),
}

/// What the server does with one request.
pub(crate) enum Verdict {
    /// Hand it to the handler.
    Handle(Request),
    /// Answer this, from the transport.
    Reply(Response),
    /// Answer this, then close the connection.
    Close(Response),
}

/// The per-connection authentication state of a server.
pub(crate) struct Gate {
    key: Option<AuthKey>,
    kind: TransportKind,
    state: GateState,
}

impl Gate {
    pub(crate) fn new(key: Option<AuthKey>, kind: TransportKind) -> Gate {
        let state = if key.is_some() {
            GateState::AwaitHello
        } else {
            GateState::Open
        };
        Gate { key, kind, state }
    }

    pub(crate) fn admit(&mut self, req: Request) -> Verdict {
        let Some(key) = &self.key else {
            return match req {
                Request::AuthHello => Verdict::Reply(Response::AuthChallenge {
                    nonce: Bytes::new(),
                }),
                Request::AuthProof { .. } => Verdict::Reply(Response::Pong),
                other => Verdict::Handle(other),
            };
        };
        match (req, &self.state) {
            (_, GateState::Refused(why)) => Verdict::Close(refusal(why)),
            (Request::AuthHello, _) => match nonce() {
                Some(n) => {
                    self.state = GateState::Challenged(n.clone());
                    Verdict::Reply(Response::AuthChallenge { nonce: n })
                }
                None => self.refuse("the worker cannot make a random nonce"),
            },
            (Request::AuthProof { mac }, GateState::Challenged(n)) => {
                if key.verify(n, self.kind, &mac) {
                    self.state = GateState::Open;
                    Verdict::Reply(Response::Pong)
                } else {
                    self.refuse(
                        "wrong proof: the client's secret is not this cluster's \
                         (rcache.security.auth.secret.file)",
                    )
                }
            }
            (Request::AuthProof { .. }, _) => {
                self.refuse("a proof without a challenge (send AuthHello first)")
            }
            (other, GateState::Open) => Verdict::Handle(other),
            (_, _) => self.refuse(
                "this worker requires clients to prove they hold the cluster's secret \
                 (rcache.security.auth.secret.file) before any request",
            ),
        }
    }

    fn refuse(&mut self, why: &str) -> Verdict {
        self.state = GateState::Refused(why.to_string());
        Verdict::Close(refusal(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn challenge(g: &mut Gate) -> Bytes {
        match g.admit(Request::AuthHello) {
            Verdict::Reply(Response::AuthChallenge { nonce }) => nonce,
            _ => panic!("no challenge"),
        }
    }

    fn refused(v: Verdict) -> String {
        match v {
            Verdict::Close(Response::Error { code, message }) => {
                assert_eq!(code, ErrorCode::Unauthenticated);
                message
            }
            _ => panic!("not refused"),
        }
    }

    #[test]
    fn the_right_proof_opens_the_gate_and_requests_reach_the_handler() {
        let key = AuthKey::new(SECRET).expect("key");
        let mut g = Gate::new(Some(key.clone()), TransportKind::Tcp);
        let n = challenge(&mut g);
        assert_eq!(n.len(), NONCE_LEN);
        let mac = key.proof(&n, TransportKind::Tcp);
        assert!(matches!(
            g.admit(Request::AuthProof { mac }),
            Verdict::Reply(Response::Pong)
        ));
        assert!(matches!(
            g.admit(Request::Ping),
            Verdict::Handle(Request::Ping)
        ));
    }

    #[test]
    fn requests_before_authentication_are_refused_and_stay_refused() {
        let key = AuthKey::new(SECRET).expect("key");
        let mut g = Gate::new(Some(key.clone()), TransportKind::Ucx);
        let m = refused(g.admit(Request::Stat { path: "a".into() }));
        assert!(m.starts_with("authentication failed:"), "{m}");
        // A later correct proof does not reopen a refused connection.
        let n = challenge_or_refused(&mut g);
        assert!(n.is_none());
    }

    fn challenge_or_refused(g: &mut Gate) -> Option<Bytes> {
        match g.admit(Request::AuthHello) {
            Verdict::Reply(Response::AuthChallenge { nonce }) => Some(nonce),
            Verdict::Close(_) => None,
            _ => panic!("unexpected verdict"),
        }
    }

    #[test]
    fn a_proof_from_another_secret_or_transport_is_refused() {
        let key = AuthKey::new(SECRET).expect("key");
        let other = AuthKey::new(b"another-secret-of-32-bytes-long!").expect("key");
        let mut g = Gate::new(Some(key.clone()), TransportKind::Tcp);
        let n = challenge(&mut g);
        let m = refused(g.admit(Request::AuthProof {
            mac: other.proof(&n, TransportKind::Tcp),
        }));
        assert!(m.contains("wrong proof"), "{m}");
        let mut g = Gate::new(Some(key.clone()), TransportKind::Tcp);
        let n = challenge(&mut g);
        refused(g.admit(Request::AuthProof {
            mac: key.proof(&n, TransportKind::Ucx),
        }));
    }

    #[test]
    fn a_proof_for_an_old_nonce_is_refused() {
        let key = AuthKey::new(SECRET).expect("key");
        let mut g = Gate::new(Some(key.clone()), TransportKind::Tcp);
        let old = challenge(&mut g);
        let new = challenge(&mut g);
        assert_ne!(old, new, "every challenge is fresh");
        refused(g.admit(Request::AuthProof {
            mac: key.proof(&old, TransportKind::Tcp),
        }));
    }

    #[test]
    fn without_a_key_the_gate_is_open_and_answers_hello_with_an_empty_nonce() {
        let mut g = Gate::new(None, TransportKind::Tcp);
        assert!(challenge(&mut g).is_empty());
        assert!(matches!(
            g.admit(Request::Ping),
            Verdict::Handle(Request::Ping)
        ));
    }

    #[test]
    fn short_secrets_are_refused_and_debug_hides_the_secret() {
        assert!(AuthKey::new(b"short").is_err());
        let k = AuthKey::new(SECRET).expect("key");
        assert!(!format!("{k:?}").contains("0123"));
    }
}
