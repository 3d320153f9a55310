//! Progress arithmetic of a CacheLoad, pure: a coordinator's job numbers ([`JobProgress`], the
//! worker's `GET /v1/loads/{id}` answer) become the status fields and conditions (percent,
//! throughput, ETA, whether the selection fits, verified completion).

use serde::{Deserialize, Serialize};

use super::crd::{CacheLoadStatus, LoadFailure, phase};
use crate::crd::ClusterCondition;

/// A warm-up job as the coordinator worker reports it (see `rcache_worker::load`).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct JobProgress {
    pub id: String,
    /// Listing, Loading, Verifying, Complete, Failed or Cancelled.
    pub phase: String,
    pub files_total: u64,
    pub bytes_total: u64,
    pub files_done: u64,
    pub bytes_done: u64,
    pub files_failed: u64,
    pub bytes_failed: u64,
    pub bytes_already_cached: u64,
    pub bytes_loaded: u64,
    pub failures: Vec<LoadFailure>,
    pub bytes_resident: Option<u64>,
    pub bytes_evicted: Option<u64>,
    pub elapsed_seconds: f64,
    pub message: Option<String>,
}

impl JobProgress {
    pub fn finished(&self) -> bool {
        matches!(self.phase.as_str(), "Complete" | "Failed" | "Cancelled")
    }
}

/// Whole percent of the selection's bytes done or failed; 100 only when nothing is left.
pub fn percent(done: u64, failed: u64, total: u64) -> u64 {
    if total == 0 {
        return 0;
    }
    let settled = done.saturating_add(failed).min(total);
    if settled == total {
        return 100;
    }
    // Floor, so 99.9% is not shown as done.
    (u128::from(settled) * 100 / u128::from(total)) as u64
}

/// Bytes per second over `elapsed` seconds; 0 before any time passed.
pub fn throughput(bytes: u64, elapsed_seconds: f64) -> u64 {
    if elapsed_seconds <= 0.0 || !elapsed_seconds.is_finite() {
        return 0;
    }
    (bytes as f64 / elapsed_seconds) as u64
}

/// Seconds left for `remaining` bytes at `rate` bytes per second; `None` without a rate.
pub fn eta_seconds(remaining: u64, rate: u64) -> Option<u64> {
    (rate > 0).then(|| remaining.div_ceil(rate))
}

/// `1536` → `1.5Ki`; binary units, one decimal below 10.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];
    if n < 1024 {
        return n.to_string();
    }
    let mut v = n as f64;
    let mut unit = "";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{:.1}{unit}", (v * 10.0).floor() / 10.0)
    } else {
        format!("{}{unit}", v.floor() as u64)
    }
}

/// `80` → `1m20s`, `3700` → `1h1m`.
pub fn human_duration(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m"),
    }
}

/// Sets (or replaces) a condition; the transition time stays while the status does not change.
pub fn set_condition(
    conds: &mut Vec<ClusterCondition>,
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) {
    let status = if ok { "True" } else { "False" };
    let since = conds
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
    conds.retain(|c| c.type_ != type_);
    conds.push(ClusterCondition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: generation,
    });
    conds.sort_by(|a, b| a.type_.cmp(&b.type_));
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Whether the selection fits and, when not, how much does.
pub fn fits_condition(total: u64, capacity: u64) -> (bool, &'static str, String) {
    if total <= capacity {
        (
            true,
            "SelectionFits",
            format!(
                "the selection ({}) fits in the cluster's cache ({})",
                human_bytes(total),
                human_bytes(capacity)
            ),
        )
    } else {
        (
            false,
            "SelectionTooLarge",
            format!(
                "the selection ({}) is larger than the cluster's cache ({}): at most {} of it fits ({}%); the rest is evicted again as it loads. Add workers or tier quota, or narrow spec.paths",
                human_bytes(total),
                human_bytes(capacity),
                human_bytes(capacity),
                percent(capacity, 0, total)
            ),
        )
    }
}

/// Writes a job's numbers into `s`: counts, progress, throughput, ETA, phase and conditions.
/// `capacity`: the cluster's cache bytes. `now`: RFC 3339.
pub fn apply(
    s: &mut CacheLoadStatus,
    p: &JobProgress,
    capacity: u64,
    generation: Option<i64>,
    now: &str,
) {
    s.files_total = i(p.files_total);
    s.files_done = i(p.files_done);
    s.files_failed = i(p.files_failed);
    s.bytes_total = i(p.bytes_total);
    s.bytes_done = i(p.bytes_done);
    s.bytes_failed = i(p.bytes_failed);
    s.bytes_already_cached = i(p.bytes_already_cached);
    s.bytes_loaded = i(p.bytes_loaded);
    s.bytes_resident = p.bytes_resident.map(i);
    s.bytes_evicted = p.bytes_evicted.map(i);
    s.capacity_bytes = Some(i(capacity));
    s.failures = p.failures.clone();
    s.files = format!("{}/{}", p.files_done, p.files_total);
    let listing = p.phase == "Listing";
    s.progress = if listing {
        "listing".into()
    } else {
        format!("{}%", percent(p.bytes_done, p.bytes_failed, p.bytes_total))
    };
    let rate = throughput(p.bytes_done, p.elapsed_seconds);
    s.throughput = format!("{}/s", human_bytes(rate));
    let remaining = p
        .bytes_total
        .saturating_sub(p.bytes_done)
        .saturating_sub(p.bytes_failed);
    s.eta = match (p.phase.as_str(), eta_seconds(remaining, rate)) {
        ("Loading", Some(secs)) => human_duration(secs),
        _ => String::new(),
    };
    if !listing {
        let (ok, reason, msg) = fits_condition(p.bytes_total, capacity);
        set_condition(&mut s.conditions, "Fits", ok, reason, msg, generation, now);
    }
    if p.finished() {
        s.completion_time.get_or_insert_with(|| now.to_string());
        s.eta.clear();
        let complete = p.phase == "Complete";
        s.phase = if complete {
            phase::COMPLETE
        } else {
            phase::FAILED
        }
        .into();
        set_condition(
            &mut s.conditions,
            "Progressing",
            false,
            "RunEnded",
            format!("run {} ended: {}", s.runs, p.phase),
            generation,
            now,
        );
        let (reason, msg) = match (p.phase.as_str(), p.bytes_evicted) {
            ("Complete", Some(0)) => (
                "AllResident",
                format!(
                    "every page of the {} selected files ({}) is resident",
                    p.files_total,
                    human_bytes(p.bytes_total)
                ),
            ),
            ("Complete", Some(ev)) => (
                "PartlyEvicted",
                format!(
                    "{} of {} loaded is resident; {} was evicted again: the selection does not fit",
                    human_bytes(p.bytes_resident.unwrap_or(0)),
                    human_bytes(p.bytes_total),
                    human_bytes(ev)
                ),
            ),
            ("Complete", None) => (
                "NotVerified",
                "spec.verify is false: residency was not checked".into(),
            ),
            ("Cancelled", _) => ("Cancelled", "the run was stopped".into()),
            _ => (
                "FilesFailed",
                match p.failures.first() {
                    Some(f) => format!(
                        "{} of the selection failed ({}); first: {}: {}",
                        p.files_failed,
                        human_bytes(p.bytes_failed),
                        f.path,
                        f.error
                    ),
                    None => p.message.clone().unwrap_or_else(|| "the run failed".into()),
                },
            ),
        };
        set_condition(
            &mut s.conditions,
            "Complete",
            complete,
            reason,
            msg,
            generation,
            now,
        );
    } else {
        s.phase = phase::RUNNING.into();
        set_condition(
            &mut s.conditions,
            "Progressing",
            true,
            if listing { "Listing" } else { "Loading" },
            format!(
                "{}: {} of {} files, {} of {}",
                p.phase,
                p.files_done,
                p.files_total,
                human_bytes(p.bytes_done),
                human_bytes(p.bytes_total)
            ),
            generation,
            now,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-06T03:00:00Z";

    fn job(phase: &str, total: u64, done: u64, failed: u64, secs: f64) -> JobProgress {
        JobProgress {
            phase: phase.into(),
            files_total: 10,
            files_done: 4,
            bytes_total: total,
            bytes_done: done,
            bytes_failed: failed,
            elapsed_seconds: secs,
            ..JobProgress::default()
        }
    }

    #[test]
    fn percent_floors_and_reaches_100_only_when_nothing_is_left() {
        assert_eq!(percent(0, 0, 0), 0);
        assert_eq!(percent(999, 0, 1000), 99);
        assert_eq!(percent(900, 100, 1000), 100);
        assert_eq!(percent(1, 0, 3), 33);
        assert_eq!(percent(u64::MAX, 0, u64::MAX), 100);
        assert_eq!(percent(u64::MAX / 2, 0, u64::MAX), 49);
    }

    #[test]
    fn throughput_and_eta_follow_the_bytes_done_over_elapsed_time() {
        assert_eq!(throughput(100 << 20, 2.0), 50 << 20);
        assert_eq!(throughput(5, 0.0), 0);
        assert_eq!(eta_seconds(100 << 20, 50 << 20), Some(2));
        assert_eq!(eta_seconds(1, 50 << 20), Some(1));
        assert_eq!(eta_seconds(0, 50), Some(0));
        assert_eq!(eta_seconds(10, 0), None);
    }

    #[test]
    fn sizes_and_durations_read_like_kubectl() {
        assert_eq!(human_bytes(1000), "1000");
        assert_eq!(human_bytes(1536), "1.5Ki");
        assert_eq!(human_bytes(1 << 30), "1.0Gi");
        assert_eq!(human_bytes(300 << 20), "300Mi");
        assert_eq!(human_duration(7), "7s");
        assert_eq!(human_duration(80), "1m20s");
        assert_eq!(human_duration(3700), "1h1m");
    }

    #[test]
    fn a_running_job_shows_progress_throughput_and_eta() {
        let mut s = CacheLoadStatus::default();
        apply(
            &mut s,
            &job("Loading", 1000 << 20, 250 << 20, 0, 5.0),
            4 << 30,
            Some(2),
            NOW,
        );
        assert_eq!(s.phase, "Running");
        assert_eq!(s.progress, "25%");
        assert_eq!(s.files, "4/10");
        assert_eq!(s.throughput, "50Mi/s");
        assert_eq!(s.eta, "15s");
        let fits = s.conditions.iter().find(|c| c.type_ == "Fits").unwrap();
        assert_eq!(
            (fits.status.as_str(), fits.observed_generation),
            ("True", Some(2))
        );
    }

    #[test]
    fn a_selection_larger_than_the_cache_says_how_much_fits_while_it_runs() {
        let mut s = CacheLoadStatus::default();
        apply(
            &mut s,
            &job("Loading", 4 << 30, 0, 0, 0.1),
            1 << 30,
            Some(1),
            NOW,
        );
        let fits = s.conditions.iter().find(|c| c.type_ == "Fits").unwrap();
        assert_eq!(fits.status, "False");
        assert_eq!(fits.reason, "SelectionTooLarge");
        assert!(
            fits.message.contains("at most 1.0Gi of it fits (25%)"),
            "{}",
            fits.message
        );
    }

    #[test]
    fn complete_means_verified_and_a_shortfall_is_named_evicted() {
        let mut s = CacheLoadStatus::default();
        let mut p = job("Complete", 1000, 1000, 0, 1.0);
        p.bytes_resident = Some(1000);
        p.bytes_evicted = Some(0);
        apply(&mut s, &p, 4000, Some(1), NOW);
        assert_eq!(
            (s.phase.as_str(), s.progress.as_str()),
            ("Complete", "100%")
        );
        let c = s.conditions.iter().find(|c| c.type_ == "Complete").unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "AllResident")
        );
        assert_eq!(s.completion_time.as_deref(), Some(NOW));
        assert!(s.eta.is_empty());

        p.bytes_resident = Some(600);
        p.bytes_evicted = Some(400);
        apply(&mut s, &p, 600, Some(1), NOW);
        let c = s.conditions.iter().find(|c| c.type_ == "Complete").unwrap();
        assert_eq!(c.reason, "PartlyEvicted");
        assert_eq!(s.bytes_evicted, Some(400));
    }

    #[test]
    fn failures_make_the_run_failed_naming_the_first_path() {
        let mut s = CacheLoadStatus::default();
        let mut p = job("Failed", 1000, 800, 200, 1.0);
        p.files_failed = 1;
        p.failures = vec![LoadFailure {
            path: "no/such".into(),
            error: "not found in the under-storage".into(),
        }];
        apply(&mut s, &p, 4000, Some(1), NOW);
        assert_eq!((s.phase.as_str(), s.progress.as_str()), ("Failed", "100%"));
        let c = s.conditions.iter().find(|c| c.type_ == "Complete").unwrap();
        assert_eq!(c.status, "False");
        assert!(
            c.message.contains("first: no/such: not found"),
            "{}",
            c.message
        );
    }

    #[test]
    fn a_condition_keeps_its_transition_time_while_its_status_holds() {
        let mut conds = Vec::new();
        set_condition(&mut conds, "Fits", true, "A", "m".into(), None, "t1");
        set_condition(&mut conds, "Fits", true, "B", "m2".into(), None, "t2");
        assert_eq!(conds[0].last_transition_time, "t1");
        set_condition(&mut conds, "Fits", false, "C", "m3".into(), None, "t3");
        assert_eq!(conds[0].last_transition_time, "t3");
        assert_eq!(conds.len(), 1);
    }
}
