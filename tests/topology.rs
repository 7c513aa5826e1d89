//! The topology probe on captured sysfs trees, the nvidia-smi parser on real outputs, the
//! description <-> file round trip and the `acspeed topo` CLI.

use acspeed::probe::probe;
use acspeed_core::topology::{nvsmi, PathClass, TopoDescription, TopoModel};
use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn nvsmi_file(p: &Path) -> TopoDescription {
    nvsmi::parse(&std::fs::read_to_string(p).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every synthetic machine: probing its sysfs tree gives exactly the matrix its
/// nvidia-smi text (written by hand from the tree's layout) shows.
#[test]
fn probe_matches_nvidia_smi_on_every_fixture_machine() {
    for m in [
        "pcie8-2socket",
        "v100-cube-mesh",
        "nvswitch-8gpu",
        "cloud-vm-flat",
    ] {
        let dir = fixtures().join("topo").join(m);
        let probed = probe(&dir.join("root")).unwrap_or_else(|e| panic!("{m}: {e}"));
        let want = nvsmi_file(&dir.join("nvidia-smi.txt"));
        assert_eq!(probed.gpus.len(), want.gpus.len(), "{m}: GPUs");
        assert_eq!(probed.nics.len(), want.nics.len(), "{m}: NICs");
        for (a, b) in probed.nics.iter().zip(&want.nics) {
            assert_eq!(a.name, b.name, "{m}: NIC order");
        }
        let names = probed.device_names();
        for i in 0..names.len() {
            for j in 0..names.len() {
                assert_eq!(
                    probed.paths[i][j], want.paths[i][j],
                    "{m}: {} to {}",
                    names[i], names[j]
                );
            }
        }
        for (g, w) in probed.gpus.iter().zip(&want.gpus) {
            assert_eq!(
                g.cpu_affinity, w.cpu_affinity,
                "{m}: GPU{} affinity",
                g.index
            );
        }
    }
}

#[test]
fn the_seed_machines_have_their_shapes() {
    let t = fixtures().join("topo");
    let pcie = probe(&t.join("pcie8-2socket/root")).unwrap();
    assert_eq!(pcie.paths[0][3], PathClass::PIX);
    assert_eq!(pcie.paths[3][4], PathClass::SYS);
    assert_eq!((pcie.sockets, pcie.cores), (2, 32));
    let v100 = probe(&t.join("v100-cube-mesh/root")).unwrap();
    let nv: Vec<PathClass> = v100.paths[0].clone();
    assert_eq!(
        nv.iter().filter(|c| matches!(c, PathClass::NV(1))).count(),
        2
    );
    assert_eq!(
        nv.iter().filter(|c| matches!(c, PathClass::NV(2))).count(),
        2
    );
    let flat = probe(&t.join("cloud-vm-flat/root")).unwrap();
    assert!(flat
        .paths
        .iter()
        .flatten()
        .all(|c| matches!(c, PathClass::X | PathClass::PHB)));
    assert_eq!(flat.nics[0].speed_mbps, Some(25000));
}

#[test]
fn this_cpu_only_machine_as_captured() {
    let d = probe(&fixtures().join("topo/cpu-only-vm/root")).unwrap();
    assert!(d.gpus.is_empty());
    assert_eq!(
        d.nics.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["eth0"]
    );
    assert!(d.cores >= 1 && !d.numa.is_empty());
    assert!(acspeed_core::topology::render(&d).contains("No GPUs found"));
}

#[test]
fn real_nvidia_smi_outputs_parse() {
    let dir = fixtures().join("nvsmi");
    let get = |f: &str| nvsmi_file(&dir.join(f));
    let v100 = get("02-v100-8gpu-vm-phb-likejazz.txt");
    assert_eq!((v100.gpus.len(), v100.nics.len()), (8, 0));
    assert_eq!(v100.paths[0][3], PathClass::NV(2));
    assert_eq!(v100.paths[0][5], PathClass::PHB);
    let dgx1 = get("03-p100-dgx1-8gpu-sheffield.txt"); // mangled header, SOC
    assert_eq!((dgx1.gpus.len(), dgx1.nics.len()), (8, 4));
    assert_eq!(dgx1.paths[0][5], PathClass::SYS);
    assert_eq!(dgx1.nics[1].name, "mlx5_2");
    assert_eq!(dgx1.gpus[0].cpu_affinity.as_deref(), Some("1-1"));
    let pcie = get("04-savio4-8gpu-pcie-pxb-pix.txt");
    assert_eq!(pcie.paths[2][3], PathClass::PIX);
    assert_eq!(pcie.paths[0][8], PathClass::NODE);
    assert_eq!(pcie.gpus[4].numa_node, Some(1));
    let a100 = get("06-a100-8gpu-nv12-17nic.txt"); // NIC legend, a bonded NIC with no column
    assert_eq!((a100.gpus.len(), a100.nics.len()), (8, 17));
    assert_eq!(a100.paths[0][7], PathClass::NV(12));
    assert_eq!(a100.nics[16].name, "mlx5_bond_0");
    assert_eq!(a100.paths[8 + 16][0], PathClass::SYS);
    let titan = get("10-titanx-4gpu-pcie-phb-sys-2nic.txt");
    assert_eq!(titan.paths[0][4], PathClass::PHB);
    let a10 = get("11-a10-4gpu-flat-allsys-2nic.txt");
    assert_eq!(a10.paths[4][5], PathClass::PIX);
    let rtx = get("12-rtx3090-2gpu-nvlink-nv4.txt");
    assert_eq!(rtx.paths[0][1], PathClass::NV(4));
    assert_eq!(rtx.gpus[0].numa_node, Some(0));
}

#[test]
fn dumped_descriptions_load_back_to_the_same_model() {
    for m in [
        "pcie8-2socket",
        "v100-cube-mesh",
        "nvswitch-8gpu",
        "cloud-vm-flat",
        "cpu-only-vm",
    ] {
        let d = probe(&fixtures().join("topo").join(m).join("root")).unwrap();
        let back = TopoDescription::from_json(&d.to_json()).unwrap();
        assert_eq!(back, d, "{m}");
        assert_eq!(
            TopoModel::from_description(&back).unwrap(),
            TopoModel::from_description(&d).unwrap(),
            "{m}"
        );
    }
    let e = TopoDescription::from_json("{\"source\":\"x\",\"gpus\":[{\"index\":0}],\"paths\":[]}")
        .unwrap_err()
        .to_string();
    assert!(e.contains("1x1"), "{e}");
}

fn acspeed(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_acspeed"));
    c.args(args)
        .env_remove("ACSPEED_TOPO_FILE")
        .env_remove("ACSPEED_TOPO_DUMP_FILE");
    for (k, v) in env {
        c.env(k, v);
    }
    crate::util::outcome(&mut c)
}

#[test]
fn topo_cli_on_this_machine_files_and_dumps() {
    let (ok, out, err) = acspeed(&["topo"], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("CPU Affinity") && out.contains("NUMA node"),
        "{out}"
    );
    let (ok, out, _) = acspeed(&["topo", "--json"], &[]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["model"]["bandwidth"].is_array());

    let f = fixtures().join("nvsmi/06-a100-8gpu-nv12-17nic.txt");
    let (ok, out, err) = acspeed(&["topo", "--nvidia-smi-topo", f.to_str().unwrap()], &[]);
    assert!(ok, "{err}");
    assert!(
        out.contains("NV12") && out.contains("NIC16: mlx5_bond_0"),
        "{out}"
    );

    // Dump through the environment, load it back through the environment: same output.
    let dump = std::env::temp_dir().join(format!("acspeed-topo-{}.json", std::process::id()));
    let root = fixtures().join("topo/v100-cube-mesh/root");
    let (ok, first, err) = acspeed(
        &[
            "topo",
            "--sysfs-root",
            root.to_str().unwrap(),
            "--dump",
            dump.to_str().unwrap(),
        ],
        &[],
    );
    assert!(ok, "{err}");
    let (ok, second, err) = acspeed(&["topo"], &[("ACSPEED_TOPO_FILE", dump.to_str().unwrap())]);
    assert!(ok, "{err}");
    let matrix = |s: &str| s.lines().take(9).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(matrix(&first), matrix(&second));
    let env_dump =
        std::env::temp_dir().join(format!("acspeed-topo-env-{}.json", std::process::id()));
    let (ok, _, err) = acspeed(
        &["topo"],
        &[("ACSPEED_TOPO_DUMP_FILE", env_dump.to_str().unwrap())],
    );
    assert!(ok && env_dump.exists(), "{err}");
    let _ = std::fs::remove_file(dump);
    let _ = std::fs::remove_file(env_dump);

    let (ok, _, err) = acspeed(&["topo", "--nvidia-smi-topo", "/nonexistent/file"], &[]);
    assert!(!ok && err.contains("/nonexistent/file"), "{err}");
    let (ok, _, err) = acspeed(
        &["topo"],
        &[("ACSPEED_TOPO_FILE", "/nonexistent/topo.json")],
    );
    assert!(!ok && err.contains("ACSPEED_TOPO_FILE"), "{err}");
}

/// Sockets of the GPUs, from the NUMA column when every GPU has one, else from PCIe classes
/// and shared NICs (NVLinks hide PCIe placement: DGX-1 links GPUs across its sockets).
#[test]
fn gpu_sockets_of_the_real_outputs() {
    for (f, want) in [
        ("03-p100-dgx1-8gpu-sheffield", vec![0, 0, 0, 0, 1, 1, 1, 1]),
        ("04-savio4-8gpu-pcie-pxb-pix", vec![0, 0, 0, 0, 1, 1, 1, 1]),
        ("10-titanx-4gpu-pcie-phb-sys-2nic", vec![0, 0, 1, 1]),
        ("11-a10-4gpu-flat-allsys-2nic", vec![0, 0, 0, 0]),
        ("12-rtx3090-2gpu-nvlink-nv4", vec![0, 0]),
    ] {
        let text = std::fs::read_to_string(format!("{}nvsmi/{f}.txt", fixture!(""))).unwrap();
        let d = acspeed_core::topology::nvsmi::parse(&text).unwrap();
        assert_eq!(d.gpu_sockets(), want, "{f}");
    }
}
