//! The allreduce benchmark behind `acspeed-bench` (nccl-tests conventions).
//!
//! Per size: refill the buffer (untimed), barrier (untimed), time one allreduce; the
//! iteration's time is the maximum over ranks and the reported time the median over
//! iterations. algbw = bytes / time, busbw = algbw x 2(n-1)/n. With `check`, inputs are small
//! integers chosen so that every reduction is exact in every dtype, and the result is compared
//! bit for bit with a reference computed locally by the same kernels.

use crate::comm::Communicator;
use acspeed_core::{kernels, DType, ReduceOp, Result};
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
}

/// Deterministic input of `rank` at element `i`: small integers (exact in f16/bf16/i8 sums of
/// many ranks), and for products mostly ones with a few twos.
fn value(op: ReduceOp, rank: u32, i: usize) -> f64 {
    match op {
        ReduceOp::Prod => {
            if (i + rank as usize) % 7 == 0 {
                2.0
            } else {
                1.0
            }
        }
        ReduceOp::BAnd | ReduceOp::BOr | ReduceOp::BXor => {
            ((i * 7 + rank as usize * 3) % 64) as f64
        }
        _ => ((i % 13) + (rank as usize % 3)) as f64,
    }
}

fn write_elem(d: DType, out: &mut [u8], v: f64) {
    match d {
        DType::F32 => out.copy_from_slice(&(v as f32).to_ne_bytes()),
        DType::F64 => out.copy_from_slice(&v.to_ne_bytes()),
        DType::F16 => out.copy_from_slice(&half::f16::from_f64(v).to_ne_bytes()),
        DType::BF16 => out.copy_from_slice(&half::bf16::from_f64(v).to_ne_bytes()),
        DType::I32 => out.copy_from_slice(&(v as i32).to_ne_bytes()),
        DType::I64 => out.copy_from_slice(&(v as i64).to_ne_bytes()),
        DType::I8 => out.copy_from_slice(&(v as i8).to_ne_bytes()),
        DType::U8 => out.copy_from_slice(&(v as u8).to_ne_bytes()),
    }
}

/// Fills `buf` with rank `rank`'s benchmark input.
pub fn fill(buf: &mut [u8], d: DType, op: ReduceOp, rank: u32) {
    for (i, e) in buf.chunks_exact_mut(d.size()).enumerate() {
        write_elem(d, e, value(op, rank, i));
    }
}

/// The expected allreduce result, computed with the same kernels in rank order.
pub fn expected(bytes: usize, d: DType, op: ReduceOp, nranks: u32) -> Vec<u8> {
    let mut acc = aligned(bytes);
    fill(&mut acc, d, op, 0);
    let mut other = aligned(bytes);
    for q in 1..nranks {
        fill(&mut other, d, op, q);
        kernels::reduce(d, op, &mut acc, &other);
    }
    if op == ReduceOp::Avg {
        kernels::scale_avg(d, &mut acc, nranks as usize);
    }
    acc.to_vec()
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
        fill(&mut input, p.dtype, p.op, comm.rank());
        let want = if p.check {
            Some(expected(bytes, p.dtype, p.op, n))
        } else {
            None
        };
        let mut times = Vec::with_capacity(p.iters);
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
            if let Some(w) = &want {
                if it == 0 || it + 1 == p.warmup + p.iters {
                    wrong += buf
                        .chunks_exact(es)
                        .zip(w.chunks_exact(es))
                        .filter(|(a, b)| a != b)
                        .count() as u64;
                }
            }
        }
        // Iteration time = slowest rank; #wrong = sum over ranks.
        comm.allreduce(&mut times, ReduceOp::Max)?;
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
        });
    }
    Ok(rows)
}

pub fn format_table(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "#{:>12} {:>12} {:>9} {:>6} {:>6} {:>10} {:>8} {:>8} {:>7}\n",
        "size", "count", "type", "redop", "algo", "time", "algbw", "busbw", "#wrong"
    ));
    s.push_str(&format!(
        "#{:>12} {:>12} {:>9} {:>6} {:>6} {:>10} {:>8} {:>8} {:>7}\n",
        "(B)", "(elements)", "", "", "", "(us)", "(GB/s)", "(GB/s)", ""
    ));
    for r in rows {
        s.push_str(&format!(
            " {:>12} {:>12} {:>9} {:>6} {:>6} {:>10.1} {:>8.3} {:>8.3} {:>7}\n",
            r.bytes, r.count, r.dtype, r.op, r.algo, r.time_us, r.algbw_gbps, r.busbw_gbps, r.wrong
        ));
    }
    s
}
