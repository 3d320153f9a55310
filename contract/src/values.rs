//! Parsers and validators of property values, shared by the operator (which validates the spec
//! and renders values with them) and the worker, client and FUSE client (which parse with them):
//! sizes (`256MB`), Kubernetes quantities (`256Mi`) and their rendering as sizes, durations
//! (`20s`), the metadata sync interval, ports, interface names (`ib0`) and RDMA devices
//! (`mlx5_0:1`). Pure functions; each error says what is wrong with the value.

use std::time::Duration;

/// Parses `256MB`, `8GB`, `4096`, `1.5GB` (binary multiples; `K`/`KB`/`KiB` all mean 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err("no number".into());
    }
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        other => return Err(format!("unknown unit `{other}`")),
    };
    if num.contains('.') {
        let f: f64 = num.parse().map_err(|_| "not a number".to_string())?;
        let bytes = f * mult as f64;
        if !bytes.is_finite() || bytes > u64::MAX as f64 {
            return Err("too large".into());
        }
        Ok(bytes.round() as u64)
    } else {
        let n: u64 = num.parse().map_err(|_| "not a number".to_string())?;
        n.checked_mul(mult).ok_or_else(|| "too large".to_string())
    }
}

/// Parses `20s`, `500ms`, `1m`, `2h`; a bare number is milliseconds when `bare_is_ms`.
pub fn parse_duration(text: &str, bare_is_ms: bool) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err("no number".into());
    }
    if num.len() > MAX_DURATION_DIGITS {
        return Err(format!("more than {MAX_DURATION_DIGITS} digits"));
    }
    let n: u64 = num.parse().map_err(|_| "not a number".to_string())?;
    match unit.trim() {
        "" if bare_is_ms => Ok(Duration::from_millis(n)),
        "" => Err("missing unit".into()),
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" | "min" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(|| "too large".into()),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(|| "too large".into()),
        other => Err(format!("unknown unit `{other}`")),
    }
}

/// How long the worker trusts what it learnt about an under-storage file (its size and mtime,
/// hence which version its cached pages belong to) before it asks the under-storage again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncInterval {
    /// `0`: stat the file on every read.
    Always,
    /// Re-check when the last stat is older than this.
    Every(Duration),
    /// `-1`: never re-check a file once seen (a "not found" is still re-checked every time).
    Never,
}

/// Parses `rcache.user.file.metadata.sync.interval`: `-1`, `0` (with or without a unit) or a
/// duration such as `10s`.
pub fn parse_sync_interval(text: &str) -> Result<SyncInterval, String> {
    let t = text.trim();
    if t == "-1" {
        return Ok(SyncInterval::Never);
    }
    if t.starts_with('-') {
        return Err("negative; only -1 (never re-check) is accepted".into());
    }
    if t == "0" {
        return Ok(SyncInterval::Always);
    }
    let d = parse_duration(t, false)?;
    Ok(if d.is_zero() {
        SyncInterval::Always
    } else {
        SyncInterval::Every(d)
    })
}

/// Parses a port `0`..=`65535` (`0` = any free port, used by tests).
pub fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not a port number".into());
    }
    text.parse::<u16>()
        .map_err(|_| "not a port number".to_string())
}

/// Longest Linux interface name (IFNAMSIZ - 1).
pub const MAX_INTERFACE_NAME: usize = 15;

/// What [`check_interface_name`] accepts.
pub const INTERFACE_ACCEPTED: &str = "an interface name of 1 to 15 letters, digits, `_`, `.` or `-` starting with a letter or digit, e.g. ib0";

/// An interface name such as `ib0`, `net1` or `eth0.100`: 1 to 15 characters from
/// `[A-Za-z0-9_.-]`, starting with a letter or digit (CRD pattern [`INTERFACE_PATTERN`]).
pub fn check_interface_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_INTERFACE_NAME
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not an interface name"))
    }
}

/// The RE2 pattern equal to [`check_interface_name`].
pub const INTERFACE_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$";

/// What [`check_rdma_device`] accepts.
pub const RDMA_DEVICE_ACCEPTED: &str =
    "an RDMA device and port name:port (port 1-255), or several separated by commas, e.g. mlx5_0:1";

/// RDMA devices `name:port[,name:port...]` such as `mlx5_0:1`: a name of letters, digits, `_`,
/// `.` or `-` and a port 1..=255 without leading zeros (CRD pattern [`RDMA_DEVICE_PATTERN`]).
pub fn check_rdma_device(value: &str) -> Result<(), String> {
    let one = |d: &str| match d.rsplit_once(':') {
        Some((name, port)) => {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
                && !port.is_empty()
                && !port.starts_with('0')
                && port.bytes().all(|b| b.is_ascii_digit())
                && port.parse::<u8>().is_ok()
        }
        None => false,
    };
    if value.split(',').all(one) {
        Ok(())
    } else if !value.contains(':') {
        Err(format!("{value:?} names no port (write e.g. {value}:1)"))
    } else {
        Err(format!("{value:?} is not name:port"))
    }
}

/// The RE2 pattern equal to [`check_rdma_device`].
pub const RDMA_DEVICE_PATTERN: &str = "^[A-Za-z0-9_.-]+:([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5])(,[A-Za-z0-9_.-]+:([1-9]|[1-9][0-9]|1[0-9][0-9]|2[0-4][0-9]|25[0-5]))*$";

/// The RE2 pattern of the quantities the CRD's size fields accept: digits and an optional
/// suffix, no fraction. [`parse_quantity`] accepts the same text. (The apiserver's
/// `quantity(x).isInteger()` is false for any quantity written with a fraction, `1.5Gi`
/// included, so sizes are written whole: `1536Mi`.)
pub const QUANTITY_PATTERN: &str = r"^[0-9]+(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$";

/// Parses a Kubernetes quantity of bytes (`256Mi`, `8Gi`, `1G`, `4096`) of the
/// [`QUANTITY_PATTERN`] grammar, no larger than `i64::MAX` (what the apiserver's
/// `quantity(x).isInteger()` accepts): fractions (`1.5Gi`, `0.5`) are refused.
pub fn parse_quantity(q: &str) -> Result<u64, String> {
    let not = || format!("{q:?} is not a quantity of bytes (expected e.g. 256Mi)");
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    let mult: u128 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        other => {
            return Err(format!(
                "{q:?}: unsupported quantity suffix {other:?} (use Ki, Mi, Gi, Ti, Pi, Ei or k, M, G, T, P, E)"
            ));
        }
    };
    if num.contains('.') {
        return Err(format!(
            "{q:?} has a fraction; write a whole number with a smaller unit (1536Mi, not 1.5Gi)"
        ));
    }
    if num.is_empty() || num.len() > 30 {
        return Err(not());
    }
    let int: u128 = num.parse().map_err(|_| not())?;
    let total = int
        .checked_mul(mult)
        .filter(|&v| v <= i64::MAX as u128)
        .ok_or_else(|| format!("{q:?} is too large"))?;
    u64::try_from(total).map_err(|_| format!("{q:?} is too large"))
}

/// Renders bytes as a size of the properties file: the largest binary unit that divides exactly
/// (`268435456` → `256MB`), else bytes (`1000B`). [`parse_size`] reads it back exactly.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TB", 1 << 40),
        ("GB", 1 << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
    ];
    if bytes == 0 {
        return "0B".to_string();
    }
    for (unit, size) in UNITS {
        if bytes.is_multiple_of(size) {
            return format!("{}{unit}", bytes / size);
        }
    }
    format!("{bytes}B")
}

/// Most digits a duration's number may have (so hours never overflow).
pub const MAX_DURATION_DIGITS: usize = 9;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_to_whole_bytes() {
        assert_eq!(parse_quantity("256Mi"), Ok(256 << 20));
        assert_eq!(parse_quantity("8Gi"), Ok(8 << 30));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("4096"), Ok(4096));
        assert_eq!(parse_quantity("1536Mi"), Ok(3 << 29));
        assert_eq!(parse_quantity("0"), Ok(0));
    }

    #[test]
    fn fractions_and_quantities_outside_our_grammar_are_refused() {
        for q in [
            "12XB", "Mi", "1.2.3", "0.5", "1.5Gi", ".5Mi", "5.Mi", "1e3", "-1Mi", "+1Mi", " 1Mi",
            "1m", "8Ei", "",
        ] {
            assert!(parse_quantity(q).is_err(), "{q}");
        }
        assert!(parse_quantity("12XB").unwrap_err().contains("12XB"));
        assert!(parse_quantity("1.5Gi").unwrap_err().contains("1536Mi"));
    }

    #[test]
    fn sizes_render_in_the_largest_exact_binary_unit_and_parse_back() {
        for (bytes, text) in [
            (256 << 20, "256MB"),
            (8 << 30, "8GB"),
            (1536 << 20, "1536MB"),
            (1_000_000_000, "1000000000B"),
            (1_024_000, "1000KB"),
            (0, "0B"),
            (3 << 40, "3TB"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes));
        }
    }

    #[test]
    fn interface_names_are_short_and_plain() {
        for ok in ["ib0", "net1", "eth0.100", "enp1s0f0np0", "a"] {
            assert_eq!(check_interface_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "ib0-but-far-too-long",
            "ib 0",
            "ib0\nx=y",
            "-ib0",
            "ib/0",
            "ib:0",
        ] {
            assert!(check_interface_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn rdma_devices_name_a_port() {
        for ok in ["mlx5_0:1", "mlx5_0:1,mlx5_1:2", "rxe0:255"] {
            assert_eq!(check_rdma_device(ok), Ok(()), "{ok}");
        }
        for bad in [
            "mlx5_0",
            "mlx5_0:0",
            "mlx5_0:256",
            "mlx5_0:01",
            ":1",
            "mlx5_0:1,",
            "a b:1",
        ] {
            assert!(check_rdma_device(bad).is_err(), "{bad:?}");
        }
        assert!(
            check_rdma_device("mlx5_0")
                .unwrap_err()
                .contains("mlx5_0:1")
        );
    }

    #[test]
    fn ports_are_plain_decimal_numbers() {
        assert_eq!(parse_port("29999"), Ok(29999));
        assert_eq!(parse_port("0"), Ok(0));
        for bad in ["70000", "+1", "-1", "", "1 "] {
            assert!(parse_port(bad).is_err(), "{bad:?}");
        }
    }
}
