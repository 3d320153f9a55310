//! Prints the configuration reference (`docs/configuration.md`), generated from the CRD types and
//! the contract crate: `cargo run -p rcache-operator --bin docgen > docs/configuration.md`.
//! `scripts/check-generated.sh` runs it and fails when the committed page differs.

fn main() {
    print!("{}", rcache_operator::reference::configuration_md());
}
