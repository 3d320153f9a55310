//! Prints a CRD as YAML, or writes it to the path given as the last argument: the CacheCluster
//! (`cargo run -p rcache-operator --bin crdgen -- crds/cacheclusters.rcache.io.yaml`), or with
//! `--cacheload` the CacheLoad (`crds/cacheloads.rcache.io.yaml`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let load = args.first().is_some_and(|a| a == "--cacheload");
    if load {
        args.remove(0);
    }
    let yaml = if load {
        rcache_operator::load::crd_yaml()?
    } else {
        rcache_operator::crd_yaml()?
    };
    match args.first() {
        Some(path) => std::fs::write(path, yaml).map_err(|e| format!("writing {path}: {e}"))?,
        None => print!("{yaml}"),
    }
    Ok(())
}
