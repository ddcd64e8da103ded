//! Measuring a benchmark run: CPU used by this process and by everything else (to tell a noisy
//! run), the statistics reported, and sizes as a command line writes them (`64K`, `1M`).

use std::time::{Duration, Instant};

/// CPU time (ticks of 1/100 s) used by the whole machine and by this process so far, to tell
/// whether something else ran during a measurement.
#[derive(Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    machine: u64,
    own: u64,
}

pub fn cpu_mark() -> CpuMark {
    let machine = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| {
            let line = s.lines().next()?.to_string();
            // cpu user nice system idle iowait irq softirq steal: busy = all but idle, iowait
            let v: Vec<u64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            Some(at(0) + at(1) + at(2) + at(5) + at(6) + at(7))
        })
        .unwrap_or(0);
    let own = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(") ")?.1.to_string();
            let f: Vec<u64> = after
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            Some(f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0))
        })
        .unwrap_or(0);
    CpuMark {
        at: Instant::now(),
        machine,
        own,
    }
}

/// CPU used by this process and by everything else since `from`, in % of one core.
pub fn cpu_since(from: CpuMark) -> (f64, f64) {
    let now = cpu_mark();
    let secs = now.at.duration_since(from.at).as_secs_f64().max(1e-3);
    let own = now.own.saturating_sub(from.own) as f64;
    let machine = now.machine.saturating_sub(from.machine) as f64;
    (own / secs, (machine - own).max(0.0) / secs)
}

/// Whether to throw a run away because other processes were busy during it; waits for quiet.
/// `foreign`: the % of a core other processes used; `limit`: the most allowed.
pub async fn discard(foreign: f64, limit: f64, max_discards: usize, discarded: &mut usize) -> bool {
    if foreign <= limit || *discarded >= max_discards {
        return false;
    }
    *discarded += 1;
    eprintln!(
        "    (run discarded: other processes used {foreign:.0} % CPU; waiting for quiet, {} of {} discards)",
        discarded, max_discards
    );
    for _ in 0..60 {
        let mark = cpu_mark();
        tokio::time::sleep(Duration::from_secs(2)).await;
        if cpu_since(mark).1 < 10.0 {
            break;
        }
    }
    true
}

pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    let mid = |i: usize| s.get(i).copied().unwrap_or(f64::NAN);
    if n % 2 == 1 {
        mid(n / 2)
    } else {
        (mid(n / 2 - 1) + mid(n / 2)) / 2.0
    }
}

pub fn list(v: &[f64], digits: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.digits$}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `65536`, `64K` or `1M`.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (t.get(..i).unwrap_or_default(), 1024),
        Some((i, 'M' | 'm')) => (t.get(..i).unwrap_or_default(), 1024 * 1024),
        _ => (t, 1),
    };
    num.parse::<usize>()
        .map(|n| n * mult)
        .map_err(|_| format!("invalid size {s:?}: e.g. 65536, 64K or 1M"))
}

/// The inverse of [`parse_size`], for reports.
pub fn human_size(n: usize) -> String {
    if n > 0 && n.trailing_zeros() >= 20 {
        format!("{}M", n / (1024 * 1024))
    } else if n > 0 && n.trailing_zeros() >= 10 {
        format!("{}K", n / 1024)
    } else {
        n.to_string()
    }
}
