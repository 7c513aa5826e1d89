//! Bulk copies that never go through `rep movsb`.
//!
//! Why this exists: glibc's `memcpy` copies anything above 2 KiB with `rep movsb` on CPUs
//! that advertise ERMS. On the AMD EPYC VMs we run on, that instruction is fast in some runs
//! and 4-5x slower in others (not tied to virtual addresses: it happens with ASLR off too),
//! which made the shared-memory transport bimodal: a 2-rank 64 MiB allreduce gave 5 GB/s or
//! 1.1 GB/s busbw from one run to the next. With `rep movsb` disabled (glibc tunable
//! `x86_rep_movsb_threshold`) every run is fast; this kernel does the same for our bulk
//! copies without touching the process's environment. See docs/PERFORMANCE.md.
//!
//! Small copies (< `SMALL`) stay with the compiler's memcpy, whose short paths are fine.

/// Below this many bytes `core::ptr::copy_nonoverlapping` is used as is.
const SMALL: usize = 2048;

/// Copies `n` bytes from `src` to `dst`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes, and the ranges must not
/// overlap.
#[inline]
pub unsafe fn copy_nonoverlapping(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY (whole body): the caller's contract; AVX2 is used only where detected.
    unsafe {
        if n < SMALL {
            std::ptr::copy_nonoverlapping(src, dst, n);
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                return copy_avx2::<false>(src, dst, n);
            }
            copy_sse2(src, dst, n)
        }
        #[cfg(not(target_arch = "x86_64"))]
        std::ptr::copy_nonoverlapping(src, dst, n)
    }
}

/// Copies `n` bytes with non-temporal (streaming) stores: the destination lines go to memory
/// without being read for ownership first, and leave no copy in this core's cache. For a
/// producer filling a slot another core will read: an ordinary store must first take each
/// line back from the reader's cache (it read the previous message there), and on the VMs
/// we run on that ownership traffic is what made the slot path bimodal. Ends with `sfence`,
/// so a release store that publishes the slot after it orders after the data.
///
/// # Safety
/// As [`copy_nonoverlapping`].
#[inline]
pub unsafe fn copy_nonoverlapping_stream(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller's contract; AVX2 is used only where detected.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        {
            if n >= SMALL && std::arch::is_x86_feature_detected!("avx2") {
                copy_avx2::<true>(src, dst, n);
                std::arch::x86_64::_mm_sfence();
                return;
            }
        }
        copy_nonoverlapping(src, dst, n)
    }
}

/// Copies `n` bytes where the ranges may overlap (the executor's local copies).
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `n` bytes.
#[inline]
pub unsafe fn copy(src: *const u8, dst: *mut u8, n: usize) {
    let (s, d) = (src as usize, dst as usize);
    if s == d || n == 0 {
        return;
    }
    // SAFETY: the caller's contract; the overlap test picks the function that allows it.
    unsafe {
        if d + n <= s || s + n <= d {
            copy_nonoverlapping(src, dst, n)
        } else {
            std::ptr::copy(src, dst, n)
        }
    }
}

/// 128 bytes per iteration: four unaligned 32-byte loads, then four stores, aligned to 32
/// bytes after a head copy. Ordinary stores (`STREAM = false`) are volatile only so that LLVM
/// cannot recognise the loop as a memcpy idiom and call glibc after all; they keep the data in
/// the shared L3 for a reader about to read it. Streaming stores (`STREAM = true`) bypass the
/// caches (see `copy_nonoverlapping_stream`; the caller fences).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_avx2<const STREAM: bool>(mut src: *const u8, mut dst: *mut u8, mut n: usize) {
    // SAFETY: n bytes are valid at src/dst (caller); every access below stays within them.
    unsafe {
        use std::arch::x86_64::*;
        let head = (32 - (dst as usize & 31)) & 31;
        std::ptr::copy_nonoverlapping(src, dst, head);
        src = src.add(head);
        dst = dst.add(head);
        n -= head;
        while n >= 128 {
            let a = _mm256_loadu_si256(src as *const __m256i);
            let b = _mm256_loadu_si256(src.add(32) as *const __m256i);
            let c = _mm256_loadu_si256(src.add(64) as *const __m256i);
            let d = _mm256_loadu_si256(src.add(96) as *const __m256i);
            for (k, v) in [a, b, c, d].into_iter().enumerate() {
                let p = dst.add(32 * k) as *mut __m256i;
                if STREAM {
                    _mm256_stream_si256(p, v);
                } else {
                    std::ptr::write_volatile(p, v);
                }
            }
            src = src.add(128);
            dst = dst.add(128);
            n -= 128;
        }
        std::ptr::copy_nonoverlapping(src, dst, n);
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn copy_sse2(mut src: *const u8, mut dst: *mut u8, mut n: usize) {
    // SAFETY: n bytes are valid at src/dst (caller); every access below stays within them.
    unsafe {
        use std::arch::x86_64::*;
        let head = (16 - (dst as usize & 15)) & 15;
        std::ptr::copy_nonoverlapping(src, dst, head);
        src = src.add(head);
        dst = dst.add(head);
        n -= head;
        while n >= 64 {
            let a = _mm_loadu_si128(src as *const __m128i);
            let b = _mm_loadu_si128(src.add(16) as *const __m128i);
            let c = _mm_loadu_si128(src.add(32) as *const __m128i);
            let d = _mm_loadu_si128(src.add(48) as *const __m128i);
            std::ptr::write_volatile(dst as *mut __m128i, a);
            std::ptr::write_volatile(dst.add(16) as *mut __m128i, b);
            std::ptr::write_volatile(dst.add(32) as *mut __m128i, c);
            std::ptr::write_volatile(dst.add(48) as *mut __m128i, d);
            src = src.add(64);
            dst = dst.add(64);
            n -= 64;
        }
        std::ptr::copy_nonoverlapping(src, dst, n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the thresholds, every source/destination misalignment, for the
    /// cached and the streaming copy.
    #[test]
    fn copies_exactly_at_every_length_and_alignment() {
        check_copy(copy_nonoverlapping);
        check_copy(copy_nonoverlapping_stream);
    }

    fn check_copy(copy_nonoverlapping: unsafe fn(*const u8, *mut u8, usize)) {
        let src: Vec<u8> = (0..20_000u32).map(|i| (i * 31 + 7) as u8).collect();
        for n in [0, 1, 31, 2047, 2048, 2049, 4096 + 13, 10_000, 19_000] {
            for so in 0..4 {
                for d_off in [0, 1, 7, 31, 33] {
                    let mut dst = vec![0xAAu8; 20_100];
                    unsafe {
                        copy_nonoverlapping(src.as_ptr().add(so), dst.as_mut_ptr().add(d_off), n)
                    };
                    assert_eq!(
                        &dst[d_off..d_off + n],
                        &src[so..so + n],
                        "n={n} so={so} do={d_off}"
                    );
                    assert!(
                        dst[..d_off].iter().all(|&b| b == 0xAA),
                        "wrote before the range"
                    );
                    assert!(
                        dst[d_off + n..].iter().all(|&b| b == 0xAA),
                        "wrote past the range"
                    );
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse2_path_matches() {
        let src: Vec<u8> = (0..9000u32).map(|i| (i ^ (i >> 3)) as u8).collect();
        let mut dst = vec![0u8; 9000];
        unsafe { copy_sse2(src.as_ptr().add(3), dst.as_mut_ptr().add(5), 8000) };
        assert_eq!(&dst[5..8005], &src[3..8003]);
    }

    #[test]
    fn overlapping_copy_is_a_memmove() {
        let mut v: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let want: Vec<u8> = v[100..9100].to_vec();
        unsafe { copy(v.as_ptr().add(100), v.as_mut_ptr(), 9000) };
        assert_eq!(&v[..9000], &want[..]);
    }
}
