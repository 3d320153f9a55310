//! Converts Kubernetes quantities from the spec (`256Mi`, `8Gi`, `1G`, `4096`) to byte counts
//! and renders byte counts in the properties-file size format of docs/contracts.md (`256MB`
//! meaning 256 MiB). Pure functions; no I/O.

/// Parses a Kubernetes quantity into bytes (rounded up). Accepts binary (`Ki`..`Ei`) and
/// decimal (`k`, `M`, `G`, `T`, `P`, `E`) suffixes, a plain number, and decimal fractions.
pub fn parse_bytes(q: &str) -> Result<u64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, suffix) = q.split_at(split);
    if num.is_empty() {
        return Err(format!("{q:?} is not a quantity (expected e.g. 256Mi)"));
    }
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
                "{q:?}: unsupported quantity suffix {other:?} (use Ki, Mi, Gi, Ti or k, M, G, T)"
            ));
        }
    };
    let (int_part, frac_part) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if frac_part.contains('.') || frac_part.len() > 9 {
        return Err(format!("{q:?} is not a quantity (expected e.g. 256Mi)"));
    }
    let int: u128 = if int_part.is_empty() {
        0
    } else {
        int_part
            .parse()
            .map_err(|_| format!("{q:?} is not a quantity"))?
    };
    let frac_scale = 10u128.pow(frac_part.len() as u32);
    let frac: u128 = if frac_part.is_empty() {
        0
    } else {
        frac_part
            .parse()
            .map_err(|_| format!("{q:?} is not a quantity"))?
    };
    let total = int
        .checked_mul(mult)
        .and_then(|v| v.checked_add((frac * mult).div_ceil(frac_scale)))
        .ok_or_else(|| format!("{q:?} is too large"))?;
    u64::try_from(total).map_err(|_| format!("{q:?} is too large"))
}

/// Renders bytes in the contract's size format: the largest binary unit that divides exactly
/// (`268435456` → `256MB`), else bytes (`1000B`).
pub fn contract_size(bytes: u64) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_and_decimal_suffixes_parse_to_bytes() {
        assert_eq!(parse_bytes("256Mi"), Ok(256 << 20));
        assert_eq!(parse_bytes("8Gi"), Ok(8 << 30));
        assert_eq!(parse_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("1.5Gi"), Ok(3 << 29));
        assert_eq!(parse_bytes("0"), Ok(0));
    }

    #[test]
    fn garbage_is_refused_with_the_value_in_the_message() {
        let err = parse_bytes("12XB").unwrap_err();
        assert!(err.contains("12XB"), "{err}");
        assert!(parse_bytes("Mi").is_err());
        assert!(parse_bytes("1.2.3").is_err());
    }

    #[test]
    fn sizes_render_in_the_largest_exact_binary_unit() {
        assert_eq!(contract_size(256 << 20), "256MB");
        assert_eq!(contract_size(8 << 30), "8GB");
        assert_eq!(contract_size(1536 << 20), "1536MB");
        assert_eq!(contract_size(1_000_000_000), "1000000000B");
        assert_eq!(contract_size(1_024_000), "1000KB");
        assert_eq!(contract_size(0), "0B");
        assert_eq!(contract_size(3 << 40), "3TB");
    }
}
