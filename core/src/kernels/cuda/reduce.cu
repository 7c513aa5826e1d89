// acspeed's device reduction kernels: dst = dst (op) src, a fan of several sources folded into
// dst, and the average's epilogue, for every dtype and op the CPU kernels serve
// (core/src/kernels/mod.rs). Each element is computed exactly as the CPU kernels compute it:
// integers wrap, f16/bf16 widen to f32, combine, and round back to nearest even after every
// pairwise step, min/max keep the destination unless the source compares smaller/larger (so a
// NaN source never replaces a value). Results are therefore bitwise identical on every rank and
// between the CPU and device paths.
//
// Compiled to PTX offline (scripts/cuda-kernels.sh: NVRTC from PyPI's nvidia-cuda-nvrtc-cu12,
// compute_70) and checked with ptxas for sm_70, sm_80 and sm_90; the driver JIT-compiles the
// PTX at load, so users need no toolkit. No header is included: the same file compiles as host
// C++ (ACSPEED_HOST), which is how the arithmetic is tested on machines without a GPU.

#ifndef __CUDACC__
#define __global__
#define __device__
#define __forceinline__ inline
#endif

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;
typedef long long i64;
typedef float f32;
typedef double f64;

#ifdef __CUDACC__
#define EACH(i, n) \
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (u64)gridDim.x * blockDim.x)
#else
#define EACH(i, n) for (u64 i = 0; i < (n); ++i)
#endif

__device__ __forceinline__ f32 f32_of_bits(u32 b) {
  union { u32 u; f32 f; } x;
  x.u = b;
  return x.f;
}

__device__ __forceinline__ u32 bits_of_f32(f32 f) {
  union { u32 u; f32 f; } x;
  x.f = f;
  return x.u;
}

// IEEE binary16 <-> binary32, round to nearest even; NaNs come back quiet (as the `half` crate
// and F16C do).
__device__ __forceinline__ f32 f16_widen(u16 h) {
  u32 sign = (u32)(h & 0x8000u) << 16;
  u32 exp = h & 0x7c00u;
  u32 man = h & 0x03ffu;
  if ((h & 0x7fffu) == 0) return f32_of_bits(sign);
  if (exp == 0x7c00u) {
    return f32_of_bits(man == 0 ? (sign | 0x7f800000u) : (sign | 0x7fc00000u | (man << 13)));
  }
  if (exp == 0) {
    // Subnormal: normalise.
    i32 e = -1;
    do {
      man <<= 1;
      e++;
    } while ((man & 0x0400u) == 0);
    return f32_of_bits(sign | ((u32)(127 - 15 - e) << 23) | ((man & 0x03ffu) << 13));
  }
  return f32_of_bits(sign | (((exp >> 10) + 112u) << 23) | (man << 13));
}

__device__ __forceinline__ u16 f16_narrow(f32 f) {
  u32 x = bits_of_f32(f);
  u32 sign = (x >> 16) & 0x8000u;
  u32 exp = x & 0x7f800000u;
  u32 man = x & 0x007fffffu;
  if (exp == 0x7f800000u) return (u16)(sign | 0x7c00u | (man ? 0x0200u : 0u) | (man >> 13));
  i32 e = (i32)(exp >> 23) - 127 + 15;
  if (e >= 0x1f) return (u16)(sign | 0x7c00u);
  if (e <= 0) {
    if (14 - e > 24) return (u16)sign;
    man |= 0x00800000u;
    u32 hm = man >> (14 - e);
    u32 round = 1u << (13 - e);
    if ((man & round) && (man & (3u * round - 1u))) hm++;
    return (u16)(sign | hm);
  }
  u32 h = sign | ((u32)e << 10) | (man >> 13);
  if ((man & 0x1000u) && (man & (3u * 0x1000u - 1u))) h++;
  return (u16)h;
}

__device__ __forceinline__ f32 bf16_widen(u16 h) { return f32_of_bits((u32)h << 16); }

__device__ __forceinline__ u16 bf16_narrow(f32 f) {
  u32 b = bits_of_f32(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return (u16)((b >> 16) | 0x0040u);
  return (u16)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

// The element operations. Integers wrap (computed unsigned: signed overflow is undefined in
// C++), min/max keep `a` unless `b` compares smaller/larger.
#define MIN_(a, b) ((b) < (a) ? (b) : (a))
#define MAX_(a, b) ((b) > (a) ? (b) : (a))

#define INT_OPS(T, U)                                                                     \
  __device__ __forceinline__ T T##_sum(T a, T b) { return (T)(U)((U)a + (U)b); }           \
  __device__ __forceinline__ T T##_prod(T a, T b) { return (T)(U)((U)a * (U)b); }          \
  __device__ __forceinline__ T T##_min(T a, T b) { return MIN_(a, b); }                    \
  __device__ __forceinline__ T T##_max(T a, T b) { return MAX_(a, b); }                    \
  __device__ __forceinline__ T T##_band(T a, T b) { return (T)(a & b); }                   \
  __device__ __forceinline__ T T##_bor(T a, T b) { return (T)(a | b); }                    \
  __device__ __forceinline__ T T##_bxor(T a, T b) { return (T)(a ^ b); }

INT_OPS(i32, u32)
INT_OPS(i64, u64)
INT_OPS(i8, u8)
INT_OPS(u8, u32)

#define FLOAT_OPS(T)                                                                      \
  __device__ __forceinline__ T T##_sum(T a, T b) { return a + b; }                         \
  __device__ __forceinline__ T T##_prod(T a, T b) { return a * b; }                        \
  __device__ __forceinline__ T T##_min(T a, T b) { return MIN_(a, b); }                    \
  __device__ __forceinline__ T T##_max(T a, T b) { return MAX_(a, b); }

FLOAT_OPS(f32)
FLOAT_OPS(f64)

// f16 and bf16 travel as u16 bits; every pairwise step widens, combines in f32, narrows.
#define HALF_OPS(N)                                                                        \
  __device__ __forceinline__ u16 N##_sum(u16 a, u16 b) {                                   \
    return N##_narrow(N##_widen(a) + N##_widen(b));                                        \
  }                                                                                        \
  __device__ __forceinline__ u16 N##_prod(u16 a, u16 b) {                                  \
    return N##_narrow(N##_widen(a) * N##_widen(b));                                        \
  }                                                                                        \
  __device__ __forceinline__ u16 N##_min(u16 a, u16 b) {                                   \
    return N##_narrow(MIN_(N##_widen(a), N##_widen(b)));                                   \
  }                                                                                        \
  __device__ __forceinline__ u16 N##_max(u16 a, u16 b) {                                   \
    return N##_narrow(MAX_(N##_widen(a), N##_widen(b)));                                   \
  }

HALF_OPS(f16)
HALF_OPS(bf16)

// One kernel per (dtype, op): acspeed_reduce_<dtype>_<op>(dst, src, n) and
// acspeed_fan_<dtype>_<op>(dst, srcs, k, n) = dst (op) srcs[0] (op) ... (op) srcs[k-1], left
// to right, as the CPU folds a fan step's sources into its destination one by one.
#define KERNELS(NAME, T, OP)                                                               \
  extern "C" __global__ void acspeed_reduce_##NAME##_##OP(T* dst, const T* src, u64 n) {   \
    EACH(i, n) { dst[i] = NAME##_##OP(dst[i], src[i]); }                                   \
  }                                                                                        \
  extern "C" __global__ void acspeed_fan_##NAME##_##OP(T* dst, const T* const* srcs, u32 k, \
                                                       u64 n) {                            \
    EACH(i, n) {                                                                           \
      T acc = dst[i];                                                                      \
      for (u32 j = 0; j < k; ++j) acc = NAME##_##OP(acc, srcs[j][i]);                      \
      dst[i] = acc;                                                                        \
    }                                                                                      \
  }

#define ARITH(NAME, T) \
  KERNELS(NAME, T, sum) KERNELS(NAME, T, prod) KERNELS(NAME, T, min) KERNELS(NAME, T, max)
#define BITWISE(NAME, T) KERNELS(NAME, T, band) KERNELS(NAME, T, bor) KERNELS(NAME, T, bxor)

ARITH(f32, f32)
ARITH(f64, f64)
ARITH(f16, u16)
ARITH(bf16, u16)
ARITH(i32, i32)
ARITH(i64, i64)
ARITH(i8, i8)
ARITH(u8, u8)
BITWISE(i32, i32)
BITWISE(i64, i64)
BITWISE(i8, i8)
BITWISE(u8, u8)

// The average's epilogue, once after the sum: floats divide (f32 in f64, as the CPU does),
// integers truncate.
extern "C" __global__ void acspeed_avg_f32(f32* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = (f32)((f64)buf[i] / (f64)count); }
}
extern "C" __global__ void acspeed_avg_f64(f64* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = buf[i] / (f64)count; }
}
extern "C" __global__ void acspeed_avg_f16(u16* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = f16_narrow(f16_widen(buf[i]) / (f32)count); }
}
extern "C" __global__ void acspeed_avg_bf16(u16* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = bf16_narrow(bf16_widen(buf[i]) / (f32)count); }
}
extern "C" __global__ void acspeed_avg_i32(i32* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = buf[i] / (i32)count; }
}
extern "C" __global__ void acspeed_avg_i64(i64* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = buf[i] / (i64)count; }
}
extern "C" __global__ void acspeed_avg_i8(i8* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = (i8)((i64)buf[i] / (i64)count); }
}
extern "C" __global__ void acspeed_avg_u8(u8* buf, u64 n, u64 count) {
  EACH(i, n) { buf[i] = (u8)((u64)buf[i] / count); }
}
