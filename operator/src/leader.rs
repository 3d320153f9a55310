//! Leader election on a `coordination.k8s.io/v1` Lease, written against the Lease API directly
//! (the same protocol as client-go's leaderelection): the holder renews `renewTime` every
//! [`RETRY_PERIOD`]; another replica takes the Lease only once `renewTime + leaseDurationSeconds`
//! has passed. Updates carry the resourceVersion read, so two candidates cannot both win a
//! round. On graceful shutdown the holder clears `holderIdentity` so a successor starts at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::info;

use crate::Error;

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the holder keeps trying to renew before it gives up leadership.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Interval between acquire/renew attempts.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);

/// One candidate for a Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// Whether a lease held by someone else has expired at `now`.
pub fn expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    let Some(renew) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let secs = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    renew.0 + SignedDuration::from_secs(secs) < now
}

impl LeaderElector {
    /// A candidate `identity` for Lease `namespace/name`.
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// One acquire-or-renew round: true when this candidate holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, Error> {
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(&self.name)
            .await
            .map_err(|e| Error::Lease(format!("get Lease {}: {e}", self.name)))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    info!(lease = %self.name, identity = %self.identity, "acquired new leader Lease");
                    Ok(true)
                }
                Err(e) if is_conflict(&e) => Ok(false),
                Err(e) => Err(Error::Lease(format!("create Lease {}: {e}", self.name))),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        if !ours && holder.is_some() && !expired(&spec, now) {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let acquired = if ours {
            spec.acquire_time.clone()
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if !ours {
                    info!(lease = %self.name, identity = %self.identity, previous = ?holder, "acquired leader Lease");
                }
                Ok(true)
            }
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(Error::Lease(format!("update Lease {}: {e}", self.name))),
        }
    }

    /// Gives the Lease up if this candidate holds it. Retries on a write conflict (someone
    /// updated the Lease between our read and our write).
    pub async fn release(&self) -> Result<(), Error> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(mut lease) = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| Error::Lease(format!("get Lease {}: {e}", self.name)))?
            else {
                return Ok(());
            };
            let mut spec = lease.spec.clone().unwrap_or_default();
            if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
                return Ok(());
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            lease.spec = Some(spec);
            match self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => break,
                Err(kube::Error::Api(ae)) if ae.code == 409 && attempt < 3 => continue,
                Err(e) => {
                    return Err(Error::Lease(format!("release Lease {}: {e}", self.name)));
                }
            }
        }
        info!(lease = %self.name, identity = %self.identity, "released leader Lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_expires_after_its_duration_since_the_last_renewal() {
        let t0 = Timestamp::from_second(1_000_000).unwrap();
        let spec = LeaseSpec {
            renew_time: Some(MicroTime(t0)),
            lease_duration_seconds: Some(15),
            ..LeaseSpec::default()
        };
        assert!(!expired(&spec, t0 + SignedDuration::from_secs(14)));
        assert!(expired(&spec, t0 + SignedDuration::from_secs(16)));
        assert!(expired(&LeaseSpec::default(), t0));
    }
}
