//! Names of the device kernels in `cuda/reduce.ptx` (built from `cuda/reduce.cu`), and the PTX
//! itself for engines that load it (feature `ptx`, so that only CUDA builds carry it).

use crate::{DType, ReduceOp};

/// The PTX module the driver JIT-compiles at load (`cuModuleLoadData`).
#[cfg(feature = "ptx")]
pub const REDUCE_PTX: &str = include_str!("cuda/reduce.ptx");

/// The kernel's spelling of a dtype.
pub const fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::F64 => "f64",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        DType::I32 => "i32",
        DType::I64 => "i64",
        DType::I8 => "i8",
        DType::U8 => "u8",
    }
}

/// `acspeed_reduce_<dtype>_<op>(dst, src, n)`: `dst = dst (op) src` over `n` elements. `Avg`
/// reduces as a sum (its epilogue is [`avg_kernel`]); bitwise ops on floats have no kernel.
pub fn reduce_kernel(d: DType, op: ReduceOp) -> Option<String> {
    let op = match op {
        ReduceOp::Avg => ReduceOp::Sum,
        op => op,
    };
    op.check_dtype(d)
        .ok()
        .map(|_| format!("acspeed_reduce_{}_{}", dtype_name(d), op.name()))
}

/// `acspeed_avg_<dtype>(buf, n, count)`: the average's epilogue.
pub fn avg_kernel(d: DType) -> String {
    format!("acspeed_avg_{}", dtype_name(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kernel name the engines ask for is an entry of the committed PTX.
    #[test]
    fn every_kernel_asked_for_is_in_the_ptx() {
        let ptx = include_str!("cuda/reduce.ptx");
        let mut n = 0;
        for d in DType::ALL {
            assert!(ptx.contains(&format!(".entry {}(", avg_kernel(d))), "{d}");
            for op in ReduceOp::ALL {
                if let Some(k) = reduce_kernel(d, op) {
                    assert!(ptx.contains(&format!(".entry {k}(")), "{k}");
                    n += 1;
                }
            }
        }
        // 8 dtypes x 5 arithmetic ops (avg as sum) + 4 integer dtypes x 3 bitwise ops.
        assert_eq!(n, 8 * 5 + 4 * 3);
        assert!(reduce_kernel(DType::F32, ReduceOp::BXor).is_none());
    }
}
