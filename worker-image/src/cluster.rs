//! Cluster membership and placement. Owns the membership file format (`docs/contracts.md`),
//! reloading it when it changes, and the consistent-hash ring that maps (path, block index) to
//! an ordered list of owners (the first is the owner, the rest are failover successors).
//! It opens no connections; the client does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::hash::hash_parts;

/// Ports a member listens on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPorts {
    pub data: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<u16>,
}

/// The data transport a member serves (`ucx` when RDMA is on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberTransport {
    Tcp,
    Ucx,
}

/// One worker as the operator publishes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// Consistent-hash identity, stable across pod restarts.
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Data address (secondary interface IP on a fabric).
    pub data_address: String,
    pub ports: MemberPorts,
    pub transport: MemberTransport,
    #[serde(default)]
    pub ready: bool,
}

/// The membership file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Membership {
    pub cluster: String,
    #[serde(default)]
    pub generation: u64,
    #[serde(default)]
    pub members: Vec<Member>,
}

#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("cannot read membership file {path}: {reason} (rcache.cluster.membership.file)")]
    Read { path: String, reason: String },
    #[error("membership file {path} is not valid: {reason} (see docs/contracts.md)")]
    Parse { path: String, reason: String },
}

impl Membership {
    pub fn parse(text: &str, path: &str) -> Result<Membership, MembershipError> {
        let m: Membership = serde_json::from_str(text).map_err(|e| MembershipError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
        let mut seen = std::collections::HashSet::new();
        for member in &m.members {
            if member.id.is_empty() {
                return Err(MembershipError::Parse {
                    path: path.into(),
                    reason: "a member has an empty id".into(),
                });
            }
            if !seen.insert(member.id.as_str()) {
                return Err(MembershipError::Parse {
                    path: path.into(),
                    reason: format!("member id {} appears twice", member.id),
                });
            }
        }
        Ok(m)
    }

    pub fn load(path: &Path) -> Result<Membership, MembershipError> {
        let text = std::fs::read_to_string(path).map_err(|e| MembershipError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Members clients may use.
    pub fn ready(&self) -> Vec<Member> {
        self.members.iter().filter(|m| m.ready).cloned().collect()
    }
}

/// Virtual nodes per member: enough for an even spread over a handful of workers.
pub const VNODES: u32 = 160;

/// Consistent-hash ring over the ready members.
#[derive(Clone, Debug, Default)]
pub struct Ring {
    points: Vec<(u64, usize)>,
    members: Vec<Member>,
}

/// The hash of a placement unit.
pub fn block_hash(path: &str, block: u64) -> u64 {
    hash_parts(&[path.as_bytes(), &block.to_le_bytes()])
}

impl Ring {
    pub fn new(members: Vec<Member>) -> Ring {
        let mut points = Vec::with_capacity(members.len() * VNODES as usize);
        for (i, m) in members.iter().enumerate() {
            for v in 0..VNODES {
                points.push((hash_parts(&[m.id.as_bytes(), &v.to_le_bytes()]), i));
            }
        }
        points.sort_unstable();
        points.dedup_by_key(|p| p.0);
        Ring { points, members }
    }

    pub fn from_membership(m: &Membership) -> Ring {
        Ring::new(m.ready())
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member, ordered: owner of `hash` first, then its successors on the ring.
    pub fn owners_of_hash(&self, hash: u64) -> Vec<&Member> {
        let n = self.members.len();
        let mut out: Vec<&Member> = Vec::with_capacity(n);
        if n == 0 {
            return out;
        }
        let mut seen = vec![false; n];
        let start = self.points.partition_point(|p| p.0 < hash);
        for k in 0..self.points.len() {
            let (_, idx) = self.points[(start + k) % self.points.len()];
            if !seen[idx] {
                seen[idx] = true;
                out.push(&self.members[idx]);
                if out.len() == n {
                    break;
                }
            }
        }
        out
    }

    /// Owners of block `block` of `path` (owner first).
    pub fn owners(&self, path: &str, block: u64) -> Vec<&Member> {
        self.owners_of_hash(block_hash(path, block))
    }
}

/// Live membership: the ring, rebuilt whenever the file changes.
#[derive(Clone)]
pub struct MembershipWatch {
    rx: watch::Receiver<Arc<Ring>>,
    /// Keeps a fixed membership's channel open (a file watch's sender lives in its task).
    _fixed: Option<Arc<watch::Sender<Arc<Ring>>>>,
}

impl MembershipWatch {
    /// A fixed membership (tests, tools).
    pub fn fixed(members: Vec<Member>) -> MembershipWatch {
        let (tx, rx) = watch::channel(Arc::new(Ring::new(members)));
        MembershipWatch {
            rx,
            _fixed: Some(Arc::new(tx)),
        }
    }

    /// Loads `path` and polls it every `every`; a broken update keeps the last good ring.
    /// Kubernetes updates a mounted ConfigMap by swapping a symlink, so the content is compared,
    /// not inotify events.
    pub fn watch_file(path: PathBuf, every: Duration) -> Result<MembershipWatch, MembershipError> {
        // A missing file may still appear (the ConfigMap is published after the workers start):
        // begin with no members and keep polling. A malformed one is an error now.
        let (first, text) = match std::fs::read(&path) {
            Ok(text) => (
                Membership::parse(&String::from_utf8_lossy(&text), &path.display().to_string())?,
                text,
            ),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "membership file not readable yet; no workers until it appears");
                (Membership::default(), Vec::new())
            }
        };
        let (tx, rx) = watch::channel(Arc::new(Ring::from_membership(&first)));
        tokio::spawn(async move {
            let mut last = text;
            loop {
                tokio::time::sleep(every).await;
                if tx.is_closed() {
                    return;
                }
                let Ok(now) = tokio::fs::read(&path).await else {
                    continue;
                };
                if now == last {
                    continue;
                }
                match Membership::parse(&String::from_utf8_lossy(&now), &path.display().to_string())
                {
                    Ok(m) => {
                        tracing::info!(
                            generation = m.generation,
                            members = m.members.len(),
                            ready = m.ready().len(),
                            "membership changed"
                        );
                        let _ = tx.send(Arc::new(Ring::from_membership(&m)));
                    }
                    Err(e) => tracing::warn!(error = %e, "keeping the previous membership"),
                }
                last = now;
            }
        });
        Ok(MembershipWatch { rx, _fixed: None })
    }

    pub fn ring(&self) -> Arc<Ring> {
        self.rx.borrow().clone()
    }
}

/// Counts blocks per member (tests, diagnostics).
pub fn spread(ring: &Ring, path: &str, blocks: u64) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for b in 0..blocks {
        if let Some(m) = ring.owners(path, b).first() {
            *out.entry(m.id.clone()).or_default() += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str) -> Member {
        Member {
            id: id.into(),
            pod: None,
            node: None,
            data_address: "127.0.0.1".into(),
            ports: MemberPorts {
                data: 1,
                rdma: None,
                web: None,
            },
            transport: MemberTransport::Tcp,
            ready: true,
        }
    }

    fn ring(ids: &[&str]) -> Ring {
        Ring::new(ids.iter().map(|i| member(i)).collect())
    }

    #[test]
    fn contract_example_parses() {
        let text = r#"{
  "cluster": "demo",
  "generation": 3,
  "members": [
    {"id": "demo-worker-0", "pod": "demo-worker-0", "node": "kwok-node-0",
     "dataAddress": "192.168.50.10", "ports": {"data": 29999, "rdma": 59999, "web": 30000},
     "transport": "ucx", "ready": true}
  ]
}"#;
        let m = Membership::parse(text, "members.json").expect("parses");
        assert_eq!(m.generation, 3);
        assert_eq!(m.members[0].ports.rdma, Some(59999));
        assert_eq!(m.members[0].transport, MemberTransport::Ucx);
    }

    #[test]
    fn duplicate_ids_are_refused_naming_the_id() {
        let text = r#"{"cluster":"c","members":[
            {"id":"a","dataAddress":"x","ports":{"data":1},"transport":"tcp","ready":true},
            {"id":"a","dataAddress":"y","ports":{"data":1},"transport":"tcp","ready":true}]}"#;
        let e = Membership::parse(text, "m.json")
            .expect_err("dup")
            .to_string();
        assert!(
            e.contains("member id a appears twice") && e.contains("m.json"),
            "{e}"
        );
    }

    #[test]
    fn only_ready_members_are_placed() {
        let mut m = Membership {
            cluster: "c".into(),
            generation: 1,
            members: vec![member("a"), member("b")],
        };
        m.members[1].ready = false;
        let r = Ring::from_membership(&m);
        assert_eq!(r.members().len(), 1);
        assert_eq!(r.owners("f", 0)[0].id, "a");
    }

    #[test]
    fn blocks_spread_evenly_over_members() {
        let r = ring(&["w-0", "w-1", "w-2"]);
        let counts = spread(&r, "datasets/big.bin", 30_000);
        for (id, n) in &counts {
            assert!(
                (8_000..=12_000).contains(n),
                "{id} owns {n} of 30000 blocks"
            );
        }
    }

    #[test]
    fn owners_list_every_member_once_owner_first() {
        let r = ring(&["a", "b", "c", "d"]);
        for b in 0..100 {
            let owners: Vec<&str> = r.owners("p", b).iter().map(|m| m.id.as_str()).collect();
            let mut sorted = owners.clone();
            sorted.sort();
            assert_eq!(sorted, vec!["a", "b", "c", "d"]);
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_blocks_to_their_successor() {
        let before = ring(&["a", "b", "c"]);
        let after = ring(&["a", "c"]);
        for blk in 0..5_000 {
            let old = before.owners("f", blk);
            let new = after.owners("f", blk);
            if old[0].id != "b" {
                assert_eq!(old[0].id, new[0].id, "block {blk} moved needlessly");
            } else {
                assert_eq!(
                    new[0].id, old[1].id,
                    "block {blk} not taken by its successor"
                );
            }
        }
    }

    #[test]
    fn adding_a_member_moves_about_a_quarter() {
        let before = ring(&["a", "b", "c"]);
        let after = ring(&["a", "b", "c", "d"]);
        let moved = (0..20_000)
            .filter(|&b| before.owners("f", b)[0].id != after.owners("f", b)[0].id)
            .count();
        assert!((3_500..=6_500).contains(&moved), "{moved} of 20000 moved");
    }

    #[test]
    fn placement_is_stable_for_the_same_members_in_any_order() {
        let a = ring(&["x", "y", "z"]);
        let b = ring(&["z", "x", "y"]);
        for blk in 0..1000 {
            assert_eq!(a.owners("f", blk)[0].id, b.owners("f", blk)[0].id);
        }
    }

    #[tokio::test]
    async fn membership_file_is_picked_up_when_it_appears_and_reloaded_when_it_changes() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("members.json");
        let write = |ids: &[&str]| {
            let m = Membership {
                cluster: "c".into(),
                generation: ids.len() as u64,
                members: ids.iter().map(|i| member(i)).collect(),
            };
            std::fs::write(&path, serde_json::to_vec(&m).expect("json")).expect("write");
        };
        write(&["a"]);
        let w =
            MembershipWatch::watch_file(path.clone(), Duration::from_millis(20)).expect("watch");
        assert_eq!(w.ring().members().len(), 1);
        write(&["a", "b"]);
        let mut ok = false;
        for _ in 0..200 {
            if w.ring().members().len() == 2 {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok, "reload not seen");
        std::fs::write(&path, b"{ broken").expect("write");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            w.ring().members().len(),
            2,
            "broken file keeps the last ring"
        );
    }
}
