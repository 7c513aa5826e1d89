//! Reduction kernels: `dst[i] = dst[i] (op) src[i]` over raw byte buffers of one dtype.
//!
//! The element loops are written so LLVM vectorises them; on x86_64 each loop is compiled a
//! second time with AVX2 enabled and picked at run time, so one binary uses the wide registers
//! where the CPU has them and still runs on any x86_64. f16/bf16 are widened to f32 in blocks
//! (the `half` crate uses F16C for that when present), combined in f32, and rounded back once
//! per pairwise step, which is how NCCL and gloo accumulate half types.

pub mod copy;
pub mod device;
mod halfconv;

use crate::dtype::{DType, ReduceOp};
use half::{bf16, f16};

/// Elements per f16/bf16 widening block (fits in L1 together with its f32 twin).
const HALF_BLOCK: usize = 1024;

trait Elem: Copy + PartialOrd {
    fn add(self, o: Self) -> Self;
    fn mul(self, o: Self) -> Self;
    fn band(self, o: Self) -> Self;
    fn bor(self, o: Self) -> Self;
    fn bxor(self, o: Self) -> Self;
    fn min_(self, o: Self) -> Self {
        if o < self {
            o
        } else {
            self
        }
    }
    fn max_(self, o: Self) -> Self {
        if o > self {
            o
        } else {
            self
        }
    }
}

macro_rules! int_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            #[inline(always)] fn add(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)] fn mul(self, o: Self) -> Self { self.wrapping_mul(o) }
            #[inline(always)] fn band(self, o: Self) -> Self { self & o }
            #[inline(always)] fn bor(self, o: Self) -> Self { self | o }
            #[inline(always)] fn bxor(self, o: Self) -> Self { self ^ o }
        }
    )*};
}
int_elem!(i32, i64, i8, u8);

macro_rules! float_elem {
    ($($t:ty),*) => {$(
        impl Elem for $t {
            #[inline(always)] fn add(self, o: Self) -> Self { self + o }
            #[inline(always)] fn mul(self, o: Self) -> Self { self * o }
            // Bitwise ops on floats are rejected by ReduceOp::check_dtype before any kernel runs.
            fn band(self, _: Self) -> Self { unreachable!("bitwise op on float") }
            fn bor(self, _: Self) -> Self { unreachable!("bitwise op on float") }
            fn bxor(self, _: Self) -> Self { unreachable!("bitwise op on float") }
        }
    )*};
}
float_elem!(f32, f64);

#[inline(always)]
fn apply<T: Elem>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    // One loop per op so that each is a straight-line, vectorisable body.
    match op {
        ReduceOp::Sum | ReduceOp::Avg => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.add(*s)),
        ReduceOp::Prod => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.mul(*s)),
        ReduceOp::Min => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.min_(*s)),
        ReduceOp::Max => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.max_(*s)),
        ReduceOp::BAnd => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.band(*s)),
        ReduceOp::BOr => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.bor(*s)),
        ReduceOp::BXor => dst.iter_mut().zip(src).for_each(|(d, s)| *d = d.bxor(*s)),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn apply_avx2<T: Elem>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    apply(op, dst, src)
}

#[inline]
fn apply_best<T: Elem>(op: ReduceOp, dst: &mut [T], src: &[T]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { apply_avx2(op, dst, src) };
            return;
        }
    }
    apply(op, dst, src)
}

/// Reinterprets byte slices as `T` when both are aligned; `None` otherwise.
fn typed<'a, T: Copy>(dst: &'a mut [u8], src: &'a [u8]) -> Option<(&'a mut [T], &'a [T])> {
    // SAFETY: every bit pattern is a valid value of the plain numeric types used here.
    let (p1, d, s1) = unsafe { dst.align_to_mut::<T>() };
    let (p2, s, s2) = unsafe { src.align_to::<T>() };
    (p1.is_empty() && p2.is_empty() && s1.is_empty() && s2.is_empty()).then_some((d, s))
}

fn reduce_typed<T: Elem>(op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    match typed::<T>(dst, src) {
        Some((d, s)) => apply_best(op, d, s),
        None => {
            // Unaligned buffers (rare: sub-views of byte storage): go element by element.
            let sz = std::mem::size_of::<T>();
            for (d, s) in dst.chunks_exact_mut(sz).zip(src.chunks_exact(sz)) {
                // SAFETY: both chunks are exactly size_of::<T>() bytes.
                unsafe {
                    let a = std::ptr::read_unaligned(d.as_ptr() as *const T);
                    let b = std::ptr::read_unaligned(s.as_ptr() as *const T);
                    let mut x = [a];
                    apply(op, &mut x, &[b]);
                    std::ptr::write_unaligned(d.as_mut_ptr() as *mut T, x[0]);
                }
            }
        }
    }
}

/// A 16-bit float format: widening to f32 and rounding back (round to nearest even).
trait HalfFormat {
    fn widen(src: &[u16], out: &mut [f32]);
    fn narrow(src: &[f32], out: &mut [u16]);
}

struct Bf16;
struct F16;

impl HalfFormat for Bf16 {
    fn widen(src: &[u16], out: &mut [f32]) {
        halfconv::bf16_to_f32(src, out)
    }
    fn narrow(src: &[f32], out: &mut [u16]) {
        halfconv::f32_to_bf16(src, out)
    }
}

impl HalfFormat for F16 {
    fn widen(src: &[u16], out: &mut [f32]) {
        halfconv::f16_to_f32(src, out)
    }
    fn narrow(src: &[f32], out: &mut [u16]) {
        halfconv::f32_to_f16(src, out)
    }
}

fn reduce_half<H: HalfFormat>(op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    if let Some((d, s)) = typed::<u16>(dst, src) {
        let mut a = [0f32; HALF_BLOCK];
        let mut b = [0f32; HALF_BLOCK];
        for (d, s) in d.chunks_mut(HALF_BLOCK).zip(s.chunks(HALF_BLOCK)) {
            let n = d.len();
            H::widen(d, &mut a[..n]);
            H::widen(s, &mut b[..n]);
            apply_best(op, &mut a[..n], &b[..n]);
            H::narrow(&a[..n], d);
        }
        return;
    }
    let mut a = [0f32; HALF_BLOCK];
    let mut b = [0f32; HALF_BLOCK];
    let mut d16 = [0u16; HALF_BLOCK];
    let mut s16 = [0u16; HALF_BLOCK];
    for (d, s) in dst
        .chunks_mut(HALF_BLOCK * 2)
        .zip(src.chunks(HALF_BLOCK * 2))
    {
        let n = d.len() / 2;
        // Byte copies in and out keep this correct for unaligned buffers; they stay in L1.
        halfconv::load_u16(d, &mut d16[..n]);
        halfconv::load_u16(s, &mut s16[..n]);
        H::widen(&d16[..n], &mut a[..n]);
        H::widen(&s16[..n], &mut b[..n]);
        apply_best(op, &mut a[..n], &b[..n]);
        H::narrow(&a[..n], &mut d16[..n]);
        halfconv::store_u16(&d16[..n], d);
    }
}

/// `dst = dst (op) src`, element-wise. Both slices hold whole elements of `dtype` and have the
/// same length. `Avg` reduces as `Sum`; call [`scale_avg`] once at the end.
pub fn reduce(dtype: DType, op: ReduceOp, dst: &mut [u8], src: &[u8]) {
    debug_assert_eq!(dst.len(), src.len());
    debug_assert_eq!(dst.len() % dtype.size(), 0);
    match dtype {
        DType::F32 => reduce_typed::<f32>(op, dst, src),
        DType::F64 => reduce_typed::<f64>(op, dst, src),
        DType::I32 => reduce_typed::<i32>(op, dst, src),
        DType::I64 => reduce_typed::<i64>(op, dst, src),
        DType::I8 => reduce_typed::<i8>(op, dst, src),
        DType::U8 => reduce_typed::<u8>(op, dst, src),
        DType::F16 => reduce_half::<F16>(op, dst, src),
        DType::BF16 => reduce_half::<Bf16>(op, dst, src),
    }
}

/// Divides every element by `n` (the `Avg` epilogue). Integers use truncating division.
pub fn scale_avg(dtype: DType, buf: &mut [u8], n: usize) {
    macro_rules! each {
        ($t:ty, $f:expr) => {{
            for c in buf.chunks_exact_mut(std::mem::size_of::<$t>()) {
                let v = <$t>::from_ne_bytes(c.try_into().unwrap());
                let f = $f;
                let r: $t = f(v);
                c.copy_from_slice(&r.to_ne_bytes());
            }
        }};
    }
    let nf = n as f64;
    match dtype {
        DType::F32 => each!(f32, |v| (v as f64 / nf) as f32),
        DType::F64 => each!(f64, |v| v / nf),
        DType::I32 => each!(i32, |v| v / n as i32),
        DType::I64 => each!(i64, |v| v / n as i64),
        DType::I8 => each!(i8, |v| (v as i64 / n as i64) as i8),
        DType::U8 => each!(u8, |v| (v as u64 / n as u64) as u8),
        DType::F16 => each!(u16, |v| f16::from_f32(
            f16::from_bits(v).to_f32() / n as f32
        )
        .to_bits()),
        DType::BF16 => {
            each!(u16, |v| bf16::from_f32(
                bf16::from_bits(v).to_f32() / n as f32
            )
            .to_bits())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<T: Copy>(v: &[T]) -> Vec<u8> {
        let n = std::mem::size_of_val(v);
        // SAFETY: plain numeric types, read as bytes.
        unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, n) }.to_vec()
    }

    #[test]
    fn f32_ops_match_scalar() {
        let a: Vec<f32> = (0..1031).map(|i| (i % 17) as f32 - 8.0).collect();
        let b: Vec<f32> = (0..1031).map(|i| (i % 5) as f32 * 0.5).collect();
        for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
            let mut d = bytes(&a);
            reduce(DType::F32, op, &mut d, &bytes(&b));
            let want: Vec<f32> = a
                .iter()
                .zip(&b)
                .map(|(x, y)| match op {
                    ReduceOp::Sum => x + y,
                    ReduceOp::Prod => x * y,
                    ReduceOp::Min => x.min(*y),
                    _ => x.max(*y),
                })
                .collect();
            assert_eq!(d, bytes(&want), "{op}");
        }
    }

    #[test]
    fn integer_bitwise_and_wrapping() {
        let mut d = bytes(&[0b1100u8, 255, 7]);
        reduce(DType::U8, ReduceOp::BXor, &mut d, &bytes(&[0b1010u8, 1, 7]));
        assert_eq!(d, vec![0b0110, 254, 0]);
        let mut d = bytes(&[255u8]);
        reduce(DType::U8, ReduceOp::Sum, &mut d, &bytes(&[2u8]));
        assert_eq!(d, vec![1]);
        let mut d = bytes(&[i64::MAX, -3]);
        reduce(DType::I64, ReduceOp::Min, &mut d, &bytes(&[0i64, -4]));
        assert_eq!(d, bytes(&[0i64, -4]));
    }

    #[test]
    fn half_types_accumulate_through_f32() {
        let a: Vec<f16> = (0..2500)
            .map(|i| f16::from_f32((i % 100) as f32 * 0.25))
            .collect();
        let b: Vec<f16> = (0..2500).map(|i| f16::from_f32((i % 7) as f32)).collect();
        let mut d = bytes(&a);
        reduce(DType::F16, ReduceOp::Sum, &mut d, &bytes(&b));
        let want: Vec<f16> = a
            .iter()
            .zip(&b)
            .map(|(x, y)| f16::from_f32(x.to_f32() + y.to_f32()))
            .collect();
        assert_eq!(d, bytes(&want));
        let a: Vec<bf16> = (0..3000).map(|i| bf16::from_f32(i as f32)).collect();
        let mut d = bytes(&a);
        reduce(
            DType::BF16,
            ReduceOp::Max,
            &mut d,
            &bytes(&a.iter().rev().copied().collect::<Vec<_>>()),
        );
        let want: Vec<bf16> = (0..3000)
            .map(|i: i32| bf16::from_f32(i.max(2999 - i) as f32))
            .collect();
        assert_eq!(d, bytes(&want));
    }

    #[test]
    fn unaligned_buffers_are_handled() {
        let a = bytes(&[1.0f32, 2.0, 3.0]);
        let mut d = [0u8; 13];
        d[1..].copy_from_slice(&a);
        let mut s = [0u8; 13];
        s[1..].copy_from_slice(&a);
        reduce(DType::F32, ReduceOp::Sum, &mut d[1..], &s[1..]);
        assert_eq!(&d[1..], &bytes(&[2.0f32, 4.0, 6.0])[..]);
    }

    #[test]
    fn avg_epilogue() {
        let mut d = bytes(&[9.0f32, 3.0]);
        scale_avg(DType::F32, &mut d, 3);
        assert_eq!(d, bytes(&[3.0f32, 1.0]));
        let mut d = bytes(&[10i32, -7]);
        scale_avg(DType::I32, &mut d, 2);
        assert_eq!(d, bytes(&[5i32, -3]));
    }
}
