//! Rust element types that map to a [`DType`], for the typed collective API.

use acspeed_core::DType;
use half::{bf16, f16};

/// A plain numeric type acspeed can reduce. Sealed: the byte views below rely on every bit
/// pattern being a valid value.
pub trait Element: Copy + sealed::Sealed + 'static {
    const DTYPE: DType;
    fn bytes(s: &[Self]) -> &[u8] {
        // SAFETY: plain numeric type without padding; any byte view is valid.
        unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
    }
    fn bytes_mut(s: &mut [Self]) -> &mut [u8] {
        // SAFETY: as above, and every bit pattern is a valid Self.
        unsafe {
            std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, std::mem::size_of_val(s))
        }
    }
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $d:expr),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t { const DTYPE: DType = $d; }
    )*};
}
element!(f32 => DType::F32, f64 => DType::F64, f16 => DType::F16, bf16 => DType::BF16,
         i32 => DType::I32, i64 => DType::I64, i8 => DType::I8, u8 => DType::U8);
