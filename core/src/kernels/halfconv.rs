//! f16/bf16 <-> f32 conversion of whole slices, vectorised.
//!
//! bf16 is the top half of an f32, so widening is a shift and narrowing a rounding add; both
//! are plain loops that LLVM vectorises. f16 uses the F16C instructions (8 lanes per
//! instruction) when the CPU has them, and the `half` crate's scalar conversion otherwise.
//! All paths round to nearest even, so results do not depend on which path ran.

use half::f16;

pub(super) fn load_u16(bytes: &[u8], out: &mut [u16]) {
    for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = u16::from_ne_bytes([b[0], b[1]]);
    }
}

pub(super) fn store_u16(v: &[u16], bytes: &mut [u8]) {
    for (x, b) in v.iter().zip(bytes.chunks_exact_mut(2)) {
        b.copy_from_slice(&x.to_ne_bytes());
    }
}

#[inline(always)]
fn bf16_to_f32_body(src: &[u16], out: &mut [f32]) {
    for (o, s) in out.iter_mut().zip(src) {
        *o = f32::from_bits((*s as u32) << 16);
    }
}

#[inline(always)]
fn f32_to_bf16_body(src: &[f32], out: &mut [u16]) {
    for (o, s) in out.iter_mut().zip(src) {
        let b = s.to_bits();
        let rounded = (b.wrapping_add(0x7fff + ((b >> 16) & 1)) >> 16) as u16;
        // NaN must stay NaN (rounding could carry it into infinity): force a quiet NaN.
        let nan = (b & 0x7fff_ffff) > 0x7f80_0000;
        *o = if nan {
            ((b >> 16) as u16) | 0x0040
        } else {
            rounded
        };
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn bf16_to_f32_avx2(src: &[u16], out: &mut [f32]) {
    bf16_to_f32_body(src, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn f32_to_bf16_avx2(src: &[f32], out: &mut [u16]) {
    f32_to_bf16_body(src, out)
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn has_f16c() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("f16c") && std::arch::is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(super) fn bf16_to_f32(src: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { bf16_to_f32_avx2(src, out) };
    }
    bf16_to_f32_body(src, out)
}

pub(super) fn f32_to_bf16(src: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { f32_to_bf16_avx2(src, out) };
    }
    f32_to_bf16_body(src, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[u16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: i + 8 <= n elements remain in both slices; unaligned loads/stores.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm256_storeu_ps(out.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for j in i..n {
        out[j] = f16::from_bits(src[j]).to_f32();
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f32_to_f16_f16c(src: &[f32], out: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(out.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: as above.
        unsafe {
            let f = _mm256_loadu_ps(src.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(f);
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, h);
        }
        i += 8;
    }
    for j in i..n {
        out[j] = f16::from_f32(src[j]).to_bits();
    }
}

pub(super) fn f16_to_f32(src: &[u16], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C and AVX are present.
        return unsafe { f16_to_f32_f16c(src, out) };
    }
    for (o, s) in out.iter_mut().zip(src) {
        *o = f16::from_bits(*s).to_f32();
    }
}

pub(super) fn f32_to_f16(src: &[f32], out: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if has_f16c() {
        // SAFETY: F16C and AVX are present.
        return unsafe { f32_to_f16_f16c(src, out) };
    }
    for (o, s) in out.iter_mut().zip(src) {
        *o = f16::from_f32(*s).to_bits();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    /// Every 16-bit pattern widens and narrows exactly as the `half` crate's scalar code does.
    #[test]
    fn conversions_match_reference_on_all_bit_patterns() {
        let all: Vec<u16> = (0..=u16::MAX).collect();
        let mut f = vec![0f32; all.len()];
        f16_to_f32(&all, &mut f);
        for (b, x) in all.iter().zip(&f) {
            let r = f16::from_bits(*b).to_f32();
            assert!(
                r.to_bits() == x.to_bits() || (r.is_nan() && x.is_nan()),
                "f16 {b:#x}"
            );
        }
        bf16_to_f32(&all, &mut f);
        for (b, x) in all.iter().zip(&f) {
            let r = bf16::from_bits(*b).to_f32();
            // `half` quiets signalling NaNs; we keep the payload. Both are NaN.
            assert!(
                r.to_bits() == x.to_bits() || (r.is_nan() && x.is_nan()),
                "bf16 {b:#x}"
            );
        }
        // Narrowing: a spread of f32 values including ties, subnormals, inf and NaN.
        let vals: Vec<f32> = (0..200_000u32)
            .map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761)))
            .chain([
                0.0,
                -0.0,
                1.0 + f32::EPSILON,
                65504.0,
                65520.0,
                f32::INFINITY,
                f32::NAN,
                1e-8,
            ])
            .collect();
        let mut out = vec![0u16; vals.len()];
        f32_to_f16(&vals, &mut out);
        for (v, o) in vals.iter().zip(&out) {
            let r = f16::from_f32(*v);
            assert!(
                r.to_bits() == *o || (r.is_nan() && f16::from_bits(*o).is_nan()),
                "f16 from {v:e}"
            );
        }
        f32_to_bf16(&vals, &mut out);
        for (v, o) in vals.iter().zip(&out) {
            let r = bf16::from_f32(*v);
            assert!(
                r.to_bits() == *o || (r.is_nan() && bf16::from_bits(*o).is_nan()),
                "bf16 from {v:e}"
            );
        }
    }
}
