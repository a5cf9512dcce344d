//! Gives the memory glibc's allocator holds free back to the kernel, with `malloc_trim(3)`.
//!
//! glibc returns freed memory to the kernel only from the top of a heap, and only when more
//! than its trim threshold lies free there. That threshold grows with the largest block
//! freed so far (up to 64 MiB), so a process that once handled a large burst keeps megabytes
//! of freed pages resident in the middle of its heaps and in its threads' arenas.
//! `malloc_trim` walks every arena and hands back each whole free page with
//! `madvise(MADV_DONTNEED)`: the address space stays, the memory goes.
//!
//! The one `unsafe` block is the call; its contract is in the `SAFETY` comment beside it.

/// Hands every whole free page of every arena back to the kernel; true when some memory was
/// released. Takes each arena's lock in turn, so threads allocating meanwhile wait for that
/// arena only. Costs time in proportion to the free chunks, not to the memory in use: call it
/// when the process is quiet, not on a hot path. Does nothing outside glibc.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointer and reads no caller memory; glibc documents it
        // MT-Safe (malloc_trim(3), "ATTRIBUTES"): it locks each arena while it works on it.
        // Pad 0 keeps nothing extra at the top of the main heap.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freed_memory_goes_back_to_the_kernel() {
        // Many blocks below the mmap threshold, so they live in the heap; free every other
        // one, so no free run reaches the heap's top and free() alone keeps them all.
        let mut blocks: Vec<Option<Vec<u8>>> =
            (0..1024).map(|_| Some(vec![1u8; 64 * 1024])).collect();
        for b in blocks.iter_mut().step_by(2) {
            *b = None;
        }
        let before = resident_kib();
        let released = trim();
        let after = resident_kib();
        drop(blocks);
        if cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(released, "32 MiB freed in 64 KiB holes: some must go back");
            // 512 freed blocks of 64 KiB: at least half of it must leave the process.
            assert!(
                before.saturating_sub(after) >= 16 * 1024,
                "resident {before} KiB before the trim, {after} KiB after"
            );
        }
    }

    /// The process's resident memory, from /proc.
    fn resident_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}
