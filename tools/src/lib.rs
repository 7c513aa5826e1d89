//! # acspeed-tools
//!
//! What the command-line tools are made of, beside the runtime (`acspeed`) they drive: the
//! allreduce benchmark (`acspeed-bench`, nccl-tests style), the local launcher that starts
//! ranks as processes, `acspeed simulate`'s tables and its measurement of this host, and
//! `acspeed linearity`'s measurement and charts. A training job links `acspeed` alone; none
//! of this (nor clap, plotters or indicatif) reaches it or the Python wheel.

pub mod bench;
pub mod charts;
pub mod launch;
pub mod linearity_measure;
pub mod local_ranks;
pub mod published;
pub mod simulate;
