//! Prints the CacheCluster CRD as YAML, or writes it to the path given as the only argument
//! (`cargo run -p rcache-operator --bin crdgen -- crds/cacheclusters.rcache.io.yaml`).

use kube::CustomResourceExt;
use rcache_operator::CacheCluster;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let yaml = rcache_operator::crd_yaml()?;
    match std::env::args().nth(1) {
        Some(path) => std::fs::write(&path, yaml).map_err(|e| format!("writing {path}: {e}"))?,
        None => print!("{yaml}"),
    }
    let _ = CacheCluster::crd_name();
    Ok(())
}
