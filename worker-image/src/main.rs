fn main() {
    println!("rcache-worker {}", env!("CARGO_PKG_VERSION"));
}
