//! Named crash points, for the tests that prove each step runs exactly once: the agent kills
//! itself (SIGKILL, as a power cut or the OOM killer would) when it reaches the point named by
//! `DROVER_CRASH_AT=NAME[:N]` for the N-th time (default 1). The hits are counted in the file
//! `DROVER_CRASH_COUNTER` when it is set, so that they add up across the agent's restarts (the
//! N-th unit may start in a later process, after a reboot), else in memory.
//!
//! Only with the `crash-points` feature, which the test build turns on: in the release binary
//! [`point`] is an empty function and the environment is never read.

#[cfg(feature = "crash-points")]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::OnceLock;
    static TARGET: OnceLock<Option<(String, u32)>> = OnceLock::new();
    static HITS: AtomicU32 = AtomicU32::new(0);
    let target = TARGET.get_or_init(|| {
        let spec = std::env::var("DROVER_CRASH_AT").ok()?;
        let (name, n) = match spec.split_once(':') {
            Some((name, n)) => (name.to_string(), n.parse().ok()?),
            None => (spec, 1),
        };
        Some((name, n))
    });
    let Some((target, n)) = target else { return };
    if target != name {
        return;
    }
    let hits = match std::env::var_os("DROVER_CRASH_COUNTER") {
        Some(file) => {
            let before: u32 = std::fs::read_to_string(&file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let _ = std::fs::write(&file, (before + 1).to_string());
            before + 1
        }
        None => HITS.fetch_add(1, Ordering::SeqCst) + 1,
    };
    if hits == *n {
        eprintln!("drover-agent: crash point {name}:{n} reached, killing myself");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::Kill);
    }
}

#[cfg(not(feature = "crash-points"))]
#[inline(always)]
pub fn point(_name: &str) {}
