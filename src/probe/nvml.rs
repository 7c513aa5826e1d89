//! NVLink counts from NVML, loaded at run time (`libnvidia-ml.so.1`). Without the library,
//! or with any NVML error, there is simply no NVLink information.

use libloading::{Library, Symbol};
use std::os::raw::{c_char, c_int, c_uint, c_void};

type Device = *mut c_void;

/// nvmlPciInfo_t (v3 layout).
#[repr(C)]
struct PciInfo {
    bus_id_legacy: [c_char; 16],
    domain: c_uint,
    bus: c_uint,
    device: c_uint,
    pci_device_id: c_uint,
    pci_sub_system_id: c_uint,
    bus_id: [c_char; 32],
}

const MAX_LINKS: c_uint = 18;

fn bus_id(p: &PciInfo) -> String {
    // NVML prints "00000000:3B:00.0"; sysfs "0000:3b:00.0".
    format!("{:04x}:{:02x}:{:02x}.0", p.domain, p.bus, p.device)
}

/// (bdf, bdf, links) for every GPU pair joined by NVLink, GPUs named by sysfs BDF.
pub(super) fn nvlinks(gpus: &[String]) -> Vec<(String, String, u8)> {
    // SAFETY: loading NVML runs its initialisers; it is the documented way to use it.
    let Ok(lib) = (unsafe { Library::new("libnvidia-ml.so.1") }) else {
        return Vec::new();
    };
    // SAFETY: symbol names and signatures follow nvml.h.
    unsafe { query(&lib, gpus) }.unwrap_or_default()
}

/// The first GPU's name as NVML gives it ("Tesla V100-SXM2-16GB"), if NVML is there.
pub(super) fn gpu_name() -> Option<String> {
    // SAFETY: as in `nvlinks`.
    let lib = unsafe { Library::new("libnvidia-ml.so.1") }.ok()?;
    // SAFETY (whole block): every symbol is used with its nvml.h signature; the name buffer
    // is as long as we say.
    unsafe {
        let init: Symbol<'_, unsafe extern "C" fn() -> c_int> = lib.get(b"nvmlInit_v2").ok()?;
        let handle: Symbol<'_, unsafe extern "C" fn(c_uint, *mut Device) -> c_int> =
            lib.get(b"nvmlDeviceGetHandleByIndex_v2").ok()?;
        let name: Symbol<'_, unsafe extern "C" fn(Device, *mut c_char, c_uint) -> c_int> =
            lib.get(b"nvmlDeviceGetName").ok()?;
        let shutdown: Symbol<'_, unsafe extern "C" fn() -> c_int> =
            lib.get(b"nvmlShutdown").ok()?;
        if init() != 0 {
            return None;
        }
        let mut d: Device = std::ptr::null_mut();
        let mut buf = [0 as c_char; 96];
        let ok = handle(0, &mut d) == 0 && name(d, buf.as_mut_ptr(), buf.len() as c_uint) == 0;
        shutdown();
        ok.then(|| {
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned()
        })
    }
}

/// Whether each pair of `gpus` (sysfs BDFs) can read each other's memory (NVML's P2P read
/// status: what `cuDeviceCanAccessPeer` answers, without creating a CUDA context). `None`
/// without NVML or on any NVML error.
pub(super) fn p2p(gpus: &[String]) -> Option<Vec<Vec<bool>>> {
    // SAFETY: as in `nvlinks`.
    let lib = unsafe { Library::new("libnvidia-ml.so.1") }.ok()?;
    // SAFETY (whole block): every symbol is used with its nvml.h signature; bus ids are
    // NUL-terminated.
    unsafe {
        let init: Symbol<'_, unsafe extern "C" fn() -> c_int> = lib.get(b"nvmlInit_v2").ok()?;
        let by_bus: Symbol<'_, unsafe extern "C" fn(*const c_char, *mut Device) -> c_int> =
            lib.get(b"nvmlDeviceGetHandleByPciBusId_v2").ok()?;
        let status: Symbol<'_, unsafe extern "C" fn(Device, Device, c_int, *mut c_int) -> c_int> =
            lib.get(b"nvmlDeviceGetP2PStatus").ok()?;
        let shutdown: Symbol<'_, unsafe extern "C" fn() -> c_int> =
            lib.get(b"nvmlShutdown").ok()?;
        if init() != 0 {
            return None;
        }
        let handles: Option<Vec<Device>> = gpus
            .iter()
            .map(|b| {
                let c = std::ffi::CString::new(b.as_str()).ok()?;
                let mut d: Device = std::ptr::null_mut();
                (by_bus(c.as_ptr(), &mut d) == 0).then_some(d)
            })
            .collect();
        // NVML_P2P_CAPS_INDEX_READ = 0; NVML_P2P_STATUS_OK = 0.
        let out = handles.and_then(|h| {
            (0..h.len())
                .map(|i| {
                    (0..h.len())
                        .map(|j| {
                            let mut st: c_int = -1;
                            (i == j || status(h[i], h[j], 0, &mut st) == 0)
                                .then_some(i == j || st == 0)
                        })
                        .collect::<Option<Vec<bool>>>()
                })
                .collect::<Option<Vec<Vec<bool>>>>()
        });
        shutdown();
        out
    }
}

unsafe fn query(lib: &Library, gpus: &[String]) -> Option<Vec<(String, String, u8)>> {
    // SAFETY (whole function): every symbol is used with its nvml.h signature.
    unsafe {
        let init: Symbol<'_, unsafe extern "C" fn() -> c_int> = lib.get(b"nvmlInit_v2").ok()?;
        let count: Symbol<'_, unsafe extern "C" fn(*mut c_uint) -> c_int> =
            lib.get(b"nvmlDeviceGetCount_v2").ok()?;
        let handle: Symbol<'_, unsafe extern "C" fn(c_uint, *mut Device) -> c_int> =
            lib.get(b"nvmlDeviceGetHandleByIndex_v2").ok()?;
        let pci: Symbol<'_, unsafe extern "C" fn(Device, *mut PciInfo) -> c_int> =
            lib.get(b"nvmlDeviceGetPciInfo_v3").ok()?;
        let state: Symbol<'_, unsafe extern "C" fn(Device, c_uint, *mut c_int) -> c_int> =
            lib.get(b"nvmlDeviceGetNvLinkState").ok()?;
        let remote: Symbol<'_, unsafe extern "C" fn(Device, c_uint, *mut PciInfo) -> c_int> =
            lib.get(b"nvmlDeviceGetNvLinkRemotePciInfo_v2").ok()?;
        let shutdown: Symbol<'_, unsafe extern "C" fn() -> c_int> =
            lib.get(b"nvmlShutdown").ok()?;
        if init() != 0 {
            return None;
        }
        let mut n: c_uint = 0;
        let mut out: std::collections::BTreeMap<(String, String), u8> = Default::default();
        let mut to_switch: std::collections::BTreeMap<String, u8> = Default::default();
        if count(&mut n) == 0 {
            for i in 0..n {
                let mut d: Device = std::ptr::null_mut();
                let mut info: PciInfo = std::mem::zeroed();
                if handle(i, &mut d) != 0 || pci(d, &mut info) != 0 {
                    continue;
                }
                let me = bus_id(&info);
                for l in 0..MAX_LINKS {
                    let mut active: c_int = 0;
                    let mut r: PciInfo = std::mem::zeroed();
                    if state(d, l, &mut active) != 0 || active == 0 || remote(d, l, &mut r) != 0 {
                        continue;
                    }
                    let peer = bus_id(&r);
                    if gpus.contains(&peer) {
                        if peer > me {
                            *out.entry((me.clone(), peer)).or_default() += 1;
                        }
                    } else {
                        // A link into the NVSwitch plane: it reaches every switched GPU.
                        *to_switch.entry(me.clone()).or_default() += 1;
                    }
                }
            }
        }
        shutdown();
        let switched: Vec<(&String, &u8)> = to_switch.iter().collect();
        for (i, (a, la)) in switched.iter().enumerate() {
            for (b, lb) in &switched[i + 1..] {
                *out.entry(((*a).clone(), (*b).clone())).or_default() += (**la).min(**lb);
            }
        }
        Some(out.into_iter().map(|((a, b), n)| (a, b, n)).collect())
    }
}
