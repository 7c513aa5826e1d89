//! The allreduce benchmark behind `acspeed-bench` (nccl-tests conventions).
//!
//! Per size: refill the buffer (untimed), barrier (untimed), time one allreduce; the
//! iteration's time is the maximum over ranks and the reported time the median over
//! iterations. algbw = bytes / time, busbw = algbw x 2(n-1)/n. With `check`, every rank's input
//! is a hash of (rank, element), bounded so that sums of all ranks are exact where the dtype
//! allows; the reference is folded element by element in f64/i128 scalar code (not the SIMD
//! kernels under test) and compared bit for bit, or within a stated relative tolerance where
//! the dtype cannot hold the exact result (AVG, or float sums of many ranks).

use acspeed::Communicator;
use acspeed_core::{DType, ReduceOp, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchParams {
    pub min_bytes: usize,
    pub max_bytes: usize,
    pub factor: usize,
    pub dtype: DType,
    pub op: ReduceOp,
    pub warmup: usize,
    pub iters: usize,
    pub check: bool,
    /// Self-test of `check`: this rank flips one element of every checked result, so the
    /// run must report #wrong > 0 and exit 1. Off unless asked for.
    pub corrupt_rank: Option<u32>,
    /// Keep every call's time, warm-up included, in call order (`Row::calls_us`): how far
    /// from steady state the first calls of a size are.
    pub per_call: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Row {
    pub bytes: usize,
    pub count: usize,
    pub dtype: String,
    pub op: String,
    pub algo: String,
    pub time_us: f64,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
    pub wrong: u64,
    /// With `per_call`: every call of this size in order, warm-up first (slowest rank), us.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calls_us: Vec<f64>,
}

/// An element value, exactly as the dtype stores it (integers wide, floats in f64).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Num {
    F(f64),
    I(i128),
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Largest integer magnitude the dtype holds exactly (floats); None for integers (their
/// sums wrap, which is exact by definition).
fn exact_limit(d: DType) -> Option<f64> {
    match d {
        DType::F32 => Some((1u64 << 24) as f64),
        DType::F64 => Some((1u64 << 53) as f64),
        DType::F16 => Some(2048.0),
        DType::BF16 => Some(256.0),
        _ => None,
    }
}

/// Values drawn for `nranks` ranks stay below this, so that sums of all ranks are exact
/// wherever the dtype allows (and at least 0..3 otherwise; then a tolerance applies).
fn value_range(d: DType, nranks: u32) -> u64 {
    match exact_limit(d) {
        Some(l) => ((l / nranks.max(1) as f64) as u64).clamp(4, 1 << 20),
        None => 1 << 20,
    }
}

/// Input of `rank` at element `i`: a hash of both, so no two ranks and no two regions of
/// the buffer look alike (swapped or double-counted ranks change the result).
fn input(d: DType, op: ReduceOp, nranks: u32, rank: u32, i: usize) -> Num {
    let h = splitmix(((rank as u64) << 40) ^ i as u64);
    let raw: i128 = match op {
        // Mostly ones, a few twos (on the first ranks only, so products stay in range).
        ReduceOp::Prod => 1 + i128::from(h % 16 == 0 && rank < 10),
        ReduceOp::BAnd | ReduceOp::BOr | ReduceOp::BXor => (h % 256) as i128,
        _ => (h % value_range(d, nranks)) as i128,
    };
    match d {
        DType::I8 => Num::I(raw as i8 as i128),
        DType::U8 => Num::I(raw as u8 as i128),
        DType::I32 | DType::I64 => Num::I(raw),
        _ => Num::F(raw as f64),
    }
}

/// `x` wrapped into the range of integer dtype `d`.
fn wrap(d: DType, x: i128) -> i128 {
    match d {
        DType::I8 => x as i8 as i128,
        DType::U8 => x as u8 as i128,
        DType::I32 => x as i32 as i128,
        _ => x as i64 as i128,
    }
}

fn write_elem(d: DType, out: &mut [u8], v: Num) {
    let (f, i) = match v {
        Num::F(f) => (f, f as i128),
        Num::I(i) => (i as f64, i),
    };
    match d {
        DType::F32 => out.copy_from_slice(&(f as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&f.to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&half::f16::from_f64(f).to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&half::bf16::from_f64(f).to_ne_bytes()),
        // Integers wrap like the kernels' wrapping arithmetic.
        DType::I32 => out.copy_from_slice(&(i as i32).to_ne_bytes()),
        DType::I64 => out.copy_from_slice(&(i as i64).to_ne_bytes()),
        DType::I8 => out.copy_from_slice(&(i as i8).to_ne_bytes()),
        DType::U8 => out.copy_from_slice(&(i as u8).to_ne_bytes()),
    }
}

fn read_elem(d: DType, b: &[u8]) -> f64 {
    match d {
        DType::F32 => f32::from_ne_bytes(b.try_into().unwrap()) as f64,
        DType::F64 => f64::from_ne_bytes(b.try_into().unwrap()),
        DType::F16 => half::f16::from_ne_bytes(b.try_into().unwrap()).to_f64(),
        DType::BF16 => half::bf16::from_ne_bytes(b.try_into().unwrap()).to_f64(),
        DType::I32 => i32::from_ne_bytes(b.try_into().unwrap()) as f64,
        DType::I64 => i64::from_ne_bytes(b.try_into().unwrap()) as f64,
        DType::I8 => b[0] as i8 as f64,
        DType::U8 => b[0] as f64,
    }
}

/// Fills `buf` with rank `rank`'s benchmark input.
pub fn fill(buf: &mut [u8], d: DType, op: ReduceOp, nranks: u32, rank: u32) {
    for (i, e) in buf.chunks_exact_mut(d.size()).enumerate() {
        write_elem(d, e, input(d, op, nranks, rank, i));
    }
}

/// Folds two values with plain scalar arithmetic (deliberately not the kernels under test).
fn fold(op: ReduceOp, a: Num, b: Num) -> Num {
    use ReduceOp::*;
    match (a, b) {
        (Num::F(x), Num::F(y)) => Num::F(match op {
            Sum | Avg => x + y,
            Prod => x * y,
            Min => x.min(y),
            Max => x.max(y),
            BAnd | BOr | BXor => unreachable!("bitwise op on a float (rejected before)"),
        }),
        (Num::I(x), Num::I(y)) => Num::I(match op {
            Sum | Avg => x + y,
            Prod => x * y,
            Min => x.min(y),
            Max => x.max(y),
            BAnd => x & y,
            BOr => x | y,
            BXor => x ^ y,
        }),
        _ => unreachable!("one dtype per call"),
    }
}

/// How results are compared: bit for bit, or within a relative tolerance where the dtype
/// cannot hold the exact result (AVG on floats, float sums beyond the exact range).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Compare {
    Exact,
    Relative(f64),
}

pub fn comparison(d: DType, op: ReduceOp, nranks: u32) -> Compare {
    let Some(limit) = exact_limit(d) else {
        return Compare::Exact;
    };
    let eps = match d {
        DType::F32 => f32::EPSILON as f64,
        DType::F64 => f64::EPSILON,
        DType::F16 => 1.0 / 1024.0,
        _ => 1.0 / 128.0,
    };
    let max_sum = (value_range(d, nranks) - 1) as f64 * nranks as f64;
    match op {
        ReduceOp::Avg => Compare::Relative(2.0 * eps),
        ReduceOp::Sum if max_sum > limit => Compare::Relative(nranks as f64 * eps),
        _ => Compare::Exact,
    }
}

/// The expected allreduce result, computed element by element in wide scalar arithmetic
/// and rounded to the dtype once.
pub fn expected(bytes: usize, d: DType, op: ReduceOp, nranks: u32) -> Vec<u8> {
    let es = d.size();
    let mut out = vec![0u8; bytes];
    for (i, e) in out.chunks_exact_mut(es).enumerate() {
        let mut acc = input(d, op, nranks, 0, i);
        for q in 1..nranks {
            acc = fold(op, acc, input(d, op, nranks, q, i));
        }
        if op == ReduceOp::Avg {
            acc = match acc {
                Num::F(x) => Num::F(x / nranks as f64),
                // Integer AVG is the sum wrapped in the dtype (as the kernels add), divided.
                Num::I(x) => Num::I(wrap(d, x) / nranks as i128),
            };
        }
        write_elem(d, e, acc);
    }
    out
}

/// Elements of `got` that differ from `want` under `cmp`.
pub fn count_wrong(d: DType, cmp: Compare, got: &[u8], want: &[u8]) -> u64 {
    let es = d.size();
    got.chunks_exact(es)
        .zip(want.chunks_exact(es))
        .filter(|(a, b)| match cmp {
            Compare::Exact => a != b,
            Compare::Relative(tol) => {
                let (x, y) = (read_elem(d, a), read_elem(d, b));
                // NaN counts as wrong.
                ((x - y).abs() <= tol * y.abs().max(1.0))
                    .then_some(())
                    .is_none()
            }
        })
        .count() as u64
}

/// A zeroed byte buffer with 8-byte alignment (so kernels take their vector path).
pub struct Aligned(Vec<u64>, usize);

impl std::ops::Deref for Aligned {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: the Vec<u64> holds at least self.1 bytes.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr() as *const u8, self.1) }
    }
}
impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr() as *mut u8, self.1) }
    }
}

pub fn aligned(bytes: usize) -> Aligned {
    Aligned(vec![0u64; bytes.div_ceil(8)], bytes)
}

fn sizes(p: &BenchParams) -> Vec<usize> {
    let mut v = Vec::new();
    let mut s = p.min_bytes;
    while s <= p.max_bytes {
        v.push(s);
        if p.factor <= 1 {
            break;
        }
        s = match s.checked_mul(p.factor) {
            Some(x) => x,
            None => break,
        };
    }
    v
}

/// Runs the sweep on every rank; returns the rows (identical on every rank).
pub fn run_sweep(comm: &Communicator, p: &BenchParams) -> Result<Vec<Row>> {
    let n = comm.nranks();
    let es = p.dtype.size();
    let mut rows = Vec::new();
    for bytes in sizes(p) {
        let count = bytes / es;
        let bytes = count * es;
        let mut buf = aligned(bytes);
        let mut input = aligned(bytes);
        fill(&mut input, p.dtype, p.op, n, comm.rank());
        let want = if p.check {
            Some(expected(bytes, p.dtype, p.op, n))
        } else {
            None
        };
        let cmp = comparison(p.dtype, p.op, n);
        let mut times = Vec::with_capacity(p.iters);
        let mut calls = Vec::new();
        let mut wrong = 0u64;
        for it in 0..p.warmup + p.iters {
            buf.copy_from_slice(&input);
            comm.barrier()?;
            let t0 = Instant::now();
            comm.allreduce_bytes(&mut buf, p.dtype, p.op)?;
            let dt = t0.elapsed().as_secs_f64();
            if it >= p.warmup {
                times.push(dt);
            }
            if p.per_call {
                calls.push(dt);
            }
            if let Some(w) = &want {
                if it == 0 || it + 1 == p.warmup + p.iters {
                    if p.corrupt_rank == Some(comm.rank()) && bytes > 0 {
                        let k = (bytes / es / 2) * es;
                        buf[k] ^= 0x40;
                    }
                    wrong += count_wrong(p.dtype, cmp, &buf, w);
                }
            }
        }
        // Iteration time = slowest rank; #wrong = sum over ranks.
        comm.allreduce(&mut times, ReduceOp::Max)?;
        if p.per_call {
            comm.allreduce(&mut calls, ReduceOp::Max)?;
        }
        let mut w = [wrong as i64];
        comm.allreduce(&mut w, ReduceOp::Sum)?;
        times.sort_by(|a, b| a.total_cmp(b));
        let med = if times.is_empty() {
            0.0
        } else {
            times[times.len() / 2]
        };
        let algbw = if med > 0.0 {
            bytes as f64 / med / 1e9
        } else {
            0.0
        };
        rows.push(Row {
            bytes,
            count,
            dtype: p.dtype.name().into(),
            op: p.op.name().into(),
            algo: comm
                .algorithm_for(acspeed_core::Collective::AllReduce, bytes)
                .name()
                .into(),
            time_us: med * 1e6,
            algbw_gbps: algbw,
            busbw_gbps: algbw * 2.0 * (n as f64 - 1.0) / n as f64,
            wrong: w[0] as u64,
            calls_us: calls.iter().map(|t| t * 1e6).collect(),
        });
    }
    Ok(rows)
}

pub fn format_table(rows: &[Row]) -> String {
    // The algorithm column fits its longest name (cpu_reduce, hybrid:butterfly), so the
    // columns after it stay aligned.
    let aw = rows.iter().map(|r| r.algo.len()).max().unwrap_or(0).max(6);
    let mut s = String::new();
    s.push_str(&format!(
        "#{:>12} {:>12} {:>9} {:>6} {:>aw$} {:>10} {:>8} {:>8} {:>7}\n",
        "size", "count", "type", "redop", "algo", "time", "algbw", "busbw", "#wrong"
    ));
    s.push_str(&format!(
        "#{:>12} {:>12} {:>9} {:>6} {:>aw$} {:>10} {:>8} {:>8} {:>7}\n",
        "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", ""
    ));
    for r in rows {
        s.push_str(&format!(
            " {:>12} {:>12} {:>9} {:>6} {:>aw$} {:>10.1} {:>8.3} {:>8.3} {:>7}\n",
            r.bytes, r.count, r.dtype, r.op, r.algo, r.time_us, r.algbw_gbps, r.busbw_gbps, r.wrong
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_stay_aligned_with_long_algorithm_names() {
        let row = |algo: &str| Row {
            bytes: 4096,
            count: 1024,
            dtype: "float".into(),
            op: "sum".into(),
            algo: algo.into(),
            time_us: 12.5,
            algbw_gbps: 1.0,
            busbw_gbps: 1.5,
            wrong: 0,
            calls_us: Vec::new(),
        };
        let t = format_table(&[row("ring"), row("hybrid:butterfly"), row("cpu_reduce")]);
        let lines: Vec<&str> = t.lines().collect();
        // Every line ends its "time" column at the same place as the header's.
        let end = lines[0].find("time").unwrap() + "time".len();
        for l in &lines[2..] {
            assert_eq!(l.find("12.5").map(|i| i + 4), Some(end), "{t}");
        }
    }
}
