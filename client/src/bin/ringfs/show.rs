//! Output: human text by default, one JSON document with `--json`.

use ringfs_wire::msg::{Attr, InodeKind};
use serde_json::{Value, json};

/// Prints `value` as JSON, or the human text `human` builds.
pub fn print(json: bool, value: &Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        let text = human();
        if !text.is_empty() {
            println!("{text}");
        }
    }
}

pub fn kind(attr: &Attr) -> &'static str {
    match attr.kind {
        InodeKind::Directory => "directory",
        _ => "file",
    }
}

pub fn attr_json(path: &str, a: &Attr) -> Value {
    json!({
        "path": path,
        "inode": a.inode,
        "kind": kind(a),
        "length_bytes": a.length_bytes,
        "replication": a.replication,
        "mode": format!("{:o}", a.mode),
        "owner": a.owner.clone().unwrap_or_default(),
        "mtime_ns": a.mtime_ns,
        "ctime_ns": a.ctime_ns,
        "chunk_count": a.chunk_count,
        "complete": a.complete,
    })
}

/// `stat` output: one field per line.
pub fn attr_long(path: &str, a: &Attr) -> String {
    format!(
        "path         {path}\n\
         kind         {}\n\
         inode        {}\n\
         length       {} ({})\n\
         replication  {}\n\
         mode         {:o}\n\
         owner        {}\n\
         modified     {}\n\
         chunks       {}\n\
         complete     {}",
        kind(a),
        a.inode,
        a.length_bytes,
        bytes(a.length_bytes),
        a.replication,
        a.mode,
        a.owner.as_deref().unwrap_or(""),
        time(a.mtime_ns),
        a.chunk_count,
        if a.complete {
            "yes"
        } else {
            "no (being written)"
        },
    )
}

/// An `ls -l` line.
pub fn attr_line(name: &str, a: &Attr) -> String {
    let d = if a.kind == InodeKind::Directory {
        'd'
    } else {
        '-'
    };
    format!(
        "{d}{} {:>2} {:<8} {:>14} {} {name}",
        mode_string(a.mode),
        a.replication,
        a.owner.as_deref().unwrap_or(""),
        a.length_bytes,
        time(a.mtime_ns),
    )
}

fn mode_string(mode: u32) -> String {
    let mut s = String::with_capacity(9);
    for shift in [6, 3, 0] {
        let bits = (mode >> shift) & 7;
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// UTC time of a nanosecond Unix timestamp, to the second.
pub fn time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian date (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Bytes in binary units, e.g. "64.0 MiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(time(0), "1970-01-01 00:00:00");
        assert_eq!(time(951_782_400 * 1_000_000_000), "2000-02-29 00:00:00");
        assert_eq!(bytes(1), "1 B");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(mode_string(0o754), "rwxr-xr--");
    }
}
