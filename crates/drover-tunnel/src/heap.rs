//! The allocator setting the tunnel needs, applied once by each binary that carries tunnels
//! (the server, the agent, the benchmarks).
//!
//! yamux allocates a fresh buffer for every data frame it receives and frees it once the frame
//! is read. glibc gives freed memory at the top of the heap back to the kernel as soon as
//! 128 KiB are free there, so with 64 KiB frames each next frame faulted in and zeroed new
//! pages: 16 % of the CPU of a busy stream (BENCHMARKS.md, finding 2). Keeping up to 256 MiB of
//! freed heap removes that and leaves the idle RSS as it was. Other allocators were measured
//! and rejected there: jemalloc halved throughput, mimalloc committed every connection's write
//! buffer (3 GiB at 10,000 agents).

/// Freed heap kept for reuse instead of returned to the kernel.
const TRIM_THRESHOLD: i32 = 256 << 20;

/// Applies the setting; call first thing in `main`, before other threads start.
pub fn keep_freed_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: mallopt only sets a parameter of glibc's allocator and is safe to call at any
    // time; it returns 0 on an unknown parameter, which leaves the default.
    unsafe {
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
