//! The list of every variable acspeed reads, for `acspeed-bench --list-env` and the README.
//! Its defaults are text for people; the values live in each layer's `Default`, and a test
//! parses every default given here and checks it gives that value.

/// Every variable acspeed reads: (name, default, meaning). The README table is generated from
/// the same list (`acspeed-bench --list-env`).
pub const VARS: &[(&str, &str, &str)] = &[
    ("ACSPEED_TIMEOUT_SECS", "300", "Seconds without progress before an operation fails with a timeout naming the peer (also bounds rendezvous)."),
    ("ACSPEED_STALL_WARN_SECS", "60", "A collective that waits this long logs (then again every as many seconds) which rank it is waiting for, in which call (number, kind, size, algorithm), and rank 0's coordinator reports which ranks have not joined it; 0 = never (and no control plane). Independent of the timeout."),
    ("ACSPEED_SEGMENT_BYTES", "256K", "Pipeline segment size: each chunk moves in segments of this many bytes."),
    ("ACSPEED_PIPELINE_DEPTH", "4", "Segments in flight per receive (scratch slots for recv-reduce)."),
    ("ACSPEED_ALGO", "auto", "auto, ring, tree, ntree, hybrid (= hybrid:ring), hybrid:tree, hybrid:butterfly, hybrid:ps or cpu_reduce (a forced algorithm runs the collectives it serves; the others run ring)."),
    ("ACSPEED_CPU_REDUCE_PIPELINES", "1", "cpu_reduce: independent slot rings in the host staging area, each driven by its own thread per rank (more overlap on hosts with cores to spare)."),
    ("ACSPEED_CPU_REDUCE_THREADS", "1", "cpu_reduce: threads each rank reduces its part of a staging slot with (a rayon pool)."),
    ("ACSPEED_ALLREDUCE", "(off)", "Algorithm per size range for allreduce, oneCCL style: `tree:0-16K;ring:16K-1M;hybrid:1M-max` (upper bounds exclusive). Overrides ACSPEED_ALGO and auto where a range matches."),
    ("ACSPEED_BROADCAST", "(off)", "Algorithm per size range for broadcast (ring or tree), as ACSPEED_ALLREDUCE."),
    ("ACSPEED_REDUCE", "(off)", "Algorithm per size range for reduce (ring or tree), as ACSPEED_ALLREDUCE."),
    ("ACSPEED_AUTOTUNE", "0", "1 = choose by measurement where auto decides: the first calls of each collective and power-of-two size class try every candidate algorithm 3 times, the ranks agree on the fastest (median of the slowest rank's times) and later jobs of the same shape read the choice from ACSPEED_AUTOTUNE_FILE (checked by every rank before use). Same value on every rank."),
    ("ACSPEED_AUTOTUNE_FILE", "~/.cache/acspeed/autotune-<key>.json", "Where ACSPEED_AUTOTUNE keeps its choices; the default name hashes the job's shape and settings, so a different job never reads another's."),
    ("ACSPEED_DEBUG", "WARN", "Log level: WARN, INFO (prints the transport and algorithm chosen at init, and at the end per-collective timing statistics) or TRACE (also every call)."),
    ("ACSPEED_CUDA_PATH", "device", "CUDA tensors (cuda builds): device = collectives within one host run on the GPUs (peer copies over NVLink/PCIe, reduction kernels) where every GPU pair has peer-to-peer access and the policy does not choose CPU-Reduce, else through host memory; staging = always through host memory. The same on every rank."),
    ("ACSPEED_SHM", "1", "Use shared memory between ranks of the same host (0 forces TCP)."),
    ("ACSPEED_SHM_CMA_MIN", "16M", "Collective size from which shared memory takes its large-message path: streaming stores into the slots (auto) or cross-memory attach for messages of 64 KiB or more (cma). Smaller collectives stay in cache through the slot rings, which is faster there."),
    ("ACSPEED_SHM_MODE", "auto", "Large shared-memory messages: auto = slot rings filled with streaming stores, cma = the receiver reads the sender's buffer directly (process_vm_readv, one copy), copy = slot rings with ordinary stores."),
    ("ACSPEED_NSTREAMS", "auto", "TCP sockets per remote peer; auto = 4 across hosts (one flow rarely fills a cloud link), 1 on the same host."),
    ("ACSPEED_RDMA", "auto", "RDMA through libfabric (builds with the rdma feature): auto = hardware providers only, 1 = any provider (also tcp;ofi_rxm), 0 = off."),
    ("ACSPEED_BIND", "1", "The local launchers (acspeed-bench -n, acspeed linearity --workers): one core per rank when the ranks talk over shared memory and there is a core each; 0 = leave placement to the scheduler."),
    ("ACSPEED_RDMA_CQ_DATA_BYTES", "(provider's)", "RDMA: bytes of remote CQ data (1-8) each message's header fingerprint uses, at most what the provider offers (verbs and EFA: 4). The same on every rank."),
    ("ACSPEED_RDMA_PROVIDER", "(libfabric's choice)", "libfabric provider for RDMA, e.g. verbs;ofi_rxm, efa, tcp;ofi_rxm."),
    ("ACSPEED_SOCKET_BUFFER", "(kernel autotuning)", "SO_SNDBUF/SO_RCVBUF for TCP sockets, e.g. 4M for long fat links; unset leaves Linux's autotuning on."),
    ("ACSPEED_SOCKET_IFNAME", "(route to master)", "Interface to listen on, NCCL syntax: prefix `eth`, exact `=eth0`, exclude `^docker,lo`."),
    ("ACSPEED_HOST_ID", "hostname", "Overrides the host identity used to group ranks that share a machine."),
    ("ACSPEED_TOPO_FILE", "(probe)", "Load the topology from this JSON description instead of probing (VMs and containers that hide the real layout); its NVLinks are what ntree plans on."),
    ("ACSPEED_HOST_MODEL", "(off)", "CPU hosts: a host model (`acspeed simulate --here --json > F`, measured once per machine type) that lets auto choose by simulation, as a GPU ACSPEED_TOPO_FILE does; the same file on every rank."),
    ("ACSPEED_NET_GBPS", "(the NIC's, else 25)", "Network rate per host, Gbit/s, for the selector's model (ACSPEED_HOST_MODEL or a topology file without NIC speeds)."),
    ("ACSPEED_FLOW_GBPS", "(none)", "Per-flow cap of the network (cloud links, netsim), Gbit/s, for the selector's model."),
    ("ACSPEED_TOPO_DUMP_FILE", "(off)", "Write the probed topology description to this JSON file."),
    ("ACSPEED_TIMELINE", "(off)", "Write every collective as a Chrome-trace event (Perfetto, chrome://tracing) to this JSON file; ranks of a multi-rank job write path-r<rank>.json, a rank's further communicators (torch subgroups) path-r<rank>-<k>.json."),
    ("ACSPEED_PLAN_DUMP_DIR", "(off)", "Write every plan this rank generates as JSON into this directory."),
    ("MASTER_ADDR / MASTER_PORT", "127.0.0.1 / -", "Where rank 0 hosts the rendezvous store (torchrun's convention)."),
    ("RANK / WORLD_SIZE", "-", "This process's rank and the number of ranks (torchrun's convention)."),
    ("LOCAL_RANK / LOCAL_WORLD_SIZE", "RANK / WORLD_SIZE", "Rank within the host and ranks on the host (torchrun's convention)."),
];
