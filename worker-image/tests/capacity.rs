//! Capacity of the MEM tier: a file's last page holds (and is charged) its own size in the
//! registered pool, so many small files and a large one fit a tier together, all served from
//! registered memory without a copy. Cache-level: the page store on a file UFS in a tempdir,
//! with the worker's pool allocator.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rcache_transport::{BufferPool, PoolConfig};
use rcache_worker::cache::{PageStore, StoreConfig};
use rcache_worker::config::SyncInterval;
use rcache_worker::server::PoolAllocator;
use rcache_worker::ufs::LocalUfs;

const MIB: usize = 1 << 20;
const SMALL_FILES: usize = 2000;
const SMALL: usize = 64 << 10;
const BIG_PAGES: usize = 1024;

/// The bytes of small file `i`: a different pattern per file.
fn small(i: usize) -> Vec<u8> {
    (0..SMALL).map(|b| (b * 7 + i * 13) as u8).collect()
}

/// Page `p` of the 1 GiB file: a shared pattern stamped with the page index.
fn big_page(base: &[u8], p: usize) -> Vec<u8> {
    let mut v = base.to_vec();
    v[..8].copy_from_slice(&(p as u64).to_le_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_64k_files_and_a_1gib_file_fit_a_1_5gib_tier_and_read_back_without_the_ufs() {
    let d = tempfile::tempdir().expect("tmp");
    let root = d.path().join("ufs");
    std::fs::create_dir_all(root.join("small")).expect("mkdir");
    for i in 0..SMALL_FILES {
        std::fs::write(root.join(format!("small/{i:04}")), small(i)).expect("write small");
    }
    let base: Vec<u8> = (0..MIB).map(|b| (b * 31 % 251) as u8).collect();
    {
        use std::io::Write;
        let mut f =
            std::io::BufWriter::new(std::fs::File::create(root.join("model.bin")).expect("create"));
        for p in 0..BIG_PAGES {
            f.write_all(&big_page(&base, p)).expect("write big");
        }
        f.flush().expect("flush");
    }

    let tier = 3 * (512 * MIB) as u64; // 1.5 GiB
    let pool = BufferPool::new(PoolConfig {
        chunk_size: MIB,
        initial: 0,
        prewarm: 0,
        max: tier as usize,
    })
    .expect("pool");
    let (store, _) = PageStore::open(
        StoreConfig {
            page_size: MIB as u64,
            mem_quota: tier,
            ssd: None,
            metadata_sync: SyncInterval::Every(std::time::Duration::from_secs(3600)),
        },
        LocalUfs::new(&root).expect("ufs"),
        Arc::new(PoolAllocator(pool.clone())),
    )
    .await
    .expect("open");

    // Fill: small files first, so they are the least recently used when the big file comes.
    for i in 0..SMALL_FILES {
        store
            .read(&format!("small/{i:04}"), 0, MIB as u32)
            .await
            .expect("fill small");
    }
    for p in 0..BIG_PAGES {
        store
            .read("model.bin", (p * MIB) as u64, MIB as u32)
            .await
            .expect("fill big");
    }
    let ufs_reads = store.ufs().counters().reads.load(Ordering::Relaxed);
    assert_eq!(
        ufs_reads,
        (SMALL_FILES + BIG_PAGES) as u64,
        "each page read from the UFS once"
    );
    let held = store.tier_use();
    assert_eq!(held.mem_pages, (SMALL_FILES + BIG_PAGES) as u64);
    assert_eq!(
        held.mem_bytes,
        (SMALL_FILES * SMALL + BIG_PAGES * MIB) as u64,
        "charged the bytes held: 64 KiB per small file, 1 MiB per full page"
    );
    assert_eq!(store.counters.evictions_mem.load(Ordering::Relaxed), 0);
    assert_eq!(
        store.counters.pool_fallbacks.load(Ordering::Relaxed),
        0,
        "all in the pool"
    );
    assert_eq!(
        pool.stats().in_use_bytes as u64,
        held.mem_bytes,
        "the pool holds what is charged"
    );

    // Read everything back: every byte from the tier, in registered memory, no UFS read.
    let misses = store.counters.misses.load(Ordering::Relaxed);
    for i in 0..SMALL_FILES {
        let got = store
            .read(&format!("small/{i:04}"), 0, MIB as u32)
            .await
            .expect("hot small");
        assert!(got[..] == small(i)[..], "small file {i} content");
        assert!(
            pool.region_of(got.as_ptr(), got.len()).is_some(),
            "small file {i} in the pool"
        );
    }
    for p in 0..BIG_PAGES {
        let got = store
            .read("model.bin", (p * MIB) as u64, MIB as u32)
            .await
            .expect("hot big");
        assert!(got[..] == big_page(&base, p)[..], "page {p} content");
        assert!(
            pool.region_of(got.as_ptr(), got.len()).is_some(),
            "page {p} in the pool"
        );
    }
    assert_eq!(
        store.ufs().counters().reads.load(Ordering::Relaxed),
        ufs_reads,
        "no under-storage read"
    );
    assert_eq!(
        store.counters.misses.load(Ordering::Relaxed),
        misses,
        "no miss"
    );
    assert_eq!(
        store.counters.hits_mem.load(Ordering::Relaxed),
        (SMALL_FILES + BIG_PAGES) as u64,
        "every read a MEM hit"
    );
}
