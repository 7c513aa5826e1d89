//! torchrun's launch variables.

use super::{bad, lookup};
use crate::error::{Error, Result};

/// torchrun's launch variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchEnv {
    pub rank: u32,
    pub world_size: u32,
    pub local_rank: u32,
    pub local_world_size: u32,
    pub master_addr: String,
    pub master_port: u16,
}

impl LaunchEnv {
    pub fn from_env() -> Result<LaunchEnv> {
        LaunchEnv::from_vars(&std::env::vars().collect::<Vec<_>>())
    }

    /// Parses torchrun's variables; every problem names the variable.
    pub fn from_vars(vars: &[(String, String)]) -> Result<LaunchEnv> {
        let need = |k: &str| {
            lookup(vars, k).ok_or_else(|| {
                Error::invalid(format!(
                    "{k} is not set; launch with torchrun or set RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT \
                     (or use acspeed-bench -n N to start local ranks)"
                ))
            })
        };
        let num = |k: &str, v: &str| -> Result<u32> {
            v.trim()
                .parse()
                .map_err(|_| bad(k, v, "a non-negative integer"))
        };
        let world_size = num("WORLD_SIZE", need("WORLD_SIZE")?)?;
        if world_size == 0 {
            return Err(bad("WORLD_SIZE", "0", "at least 1"));
        }
        let rank = num("RANK", need("RANK")?)?;
        if rank >= world_size {
            return Err(Error::invalid(format!(
                "RANK={rank} is out of range for WORLD_SIZE={world_size} (ranks are 0..{})",
                world_size - 1
            )));
        }
        let local_rank = match lookup(vars, "LOCAL_RANK") {
            Some(v) => num("LOCAL_RANK", v)?,
            None => rank,
        };
        let local_world_size = match lookup(vars, "LOCAL_WORLD_SIZE") {
            Some(v) => num("LOCAL_WORLD_SIZE", v)?,
            None => world_size,
        };
        if local_rank >= local_world_size {
            return Err(Error::invalid(format!(
                "LOCAL_RANK={local_rank} is out of range for LOCAL_WORLD_SIZE={local_world_size}"
            )));
        }
        let master_addr = lookup(vars, "MASTER_ADDR")
            .unwrap_or("127.0.0.1")
            .to_string();
        let p = need("MASTER_PORT")?;
        let master_port = p
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad("MASTER_PORT", p, "a port number 1..65535"))?;
        Ok(LaunchEnv {
            rank,
            world_size,
            local_rank,
            local_world_size,
            master_addr,
            master_port,
        })
    }
}
