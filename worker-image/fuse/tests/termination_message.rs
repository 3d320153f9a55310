//! A fatal error of `rcache-fuse` reaches the Kubernetes termination message (the file named by
//! `RCACHE_TERMINATION_LOG`) as well as stderr. Needs no /dev/fuse: the error comes before the
//! mount.

use std::process::Command;

#[test]
fn bad_property_is_written_to_the_termination_log_and_stderr() {
    let d = tempfile::tempdir().expect("tmp");
    let props = d.path().join("p.properties");
    std::fs::write(
        &props,
        "rcache.cluster.name=t\nrcache.worker.page.size=1KB\n",
    )
    .expect("write");
    let log = d.path().join("termination-log");
    let out = Command::new(env!("CARGO_BIN_EXE_rcache-fuse"))
        .args(["mount", "--config"])
        .arg(&props)
        .arg("--mount-point")
        .arg(d.path().join("mnt"))
        .env("RCACHE_TERMINATION_LOG", &log)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rcache.worker.page.size"), "{err}");
    let msg = std::fs::read_to_string(&log).expect("termination log written");
    assert!(
        msg.contains("rcache.worker.page.size") && msg.contains("1KB"),
        "{msg}"
    );
    assert!(msg.len() <= 4096);
}
