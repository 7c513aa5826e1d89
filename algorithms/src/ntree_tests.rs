//! n-trees on the real `nvidia-smi topo -m` fixtures: packing quality, partial allocations,
//! multi-host joins, channels, fallbacks, and every plan verified in both buffer models.

use super::*;
use crate::Algorithm;
use acspeed_core::topology::nvsmi;
use acspeed_core::verify::verify_all_models;

fn nvlinks(text: &str) -> Vec<Vec<u8>> {
    nvsmi::parse(text).unwrap().nvlink_matrix()
}

const V100: &str = include_str!("../../tests/fixtures/nvsmi/02-v100-8gpu-vm-phb-likejazz.txt");
const DGX1: &str = include_str!("../../tests/fixtures/nvsmi/03-p100-dgx1-8gpu-sheffield.txt");
const PCIE: &str = include_str!("../../tests/fixtures/nvsmi/04-savio4-8gpu-pcie-pxb-pix.txt");
const A100: &str = include_str!("../../tests/fixtures/nvsmi/06-a100-8gpu-nv12-17nic.txt");
const RTX: &str = include_str!("../../tests/fixtures/nvsmi/12-rtx3090-2gpu-nvlink-nv4.txt");

/// Every tree spans `nodes`, and no link carries more than its capacity.
fn check_packing(caps: &[Vec<u8>], nodes: &[u32], trees: &[PackedTree]) {
    let mut load = vec![vec![0u32; caps.len()]; caps.len()];
    for t in trees {
        assert_eq!(
            t.edges.len() + 1,
            nodes.len(),
            "{t:?} does not span {nodes:?}"
        );
        let mut reached = vec![t.root];
        for _ in 0..nodes.len() {
            for (a, b) in &t.edges {
                if reached.contains(a) && !reached.contains(b) {
                    reached.push(*b);
                } else if reached.contains(b) && !reached.contains(a) {
                    reached.push(*a);
                }
            }
        }
        reached.sort();
        assert_eq!(reached, nodes, "{t:?}");
        for (a, b) in &t.edges {
            load[*a as usize][*b as usize] += t.weight;
            load[*b as usize][*a as usize] += t.weight;
        }
    }
    for i in 0..caps.len() {
        for j in 0..caps.len() {
            assert!(
                load[i][j] <= caps[i][j] as u32,
                "link {i}-{j} over capacity"
            );
        }
    }
}

fn all(n: u32) -> Vec<u32> {
    (0..n).collect()
}

#[test]
fn cube_mesh_packs_the_nv2_ring_and_an_nv1_tree() {
    let caps = nvlinks(V100);
    let trees = pack(&caps, &all(8));
    check_packing(&caps, &all(8), &trees);
    let w: Vec<u32> = trees.iter().map(|t| t.weight).collect();
    // 24 link-units, 7 per tree: at most 3.43 trees' worth; greedy packs 3 (2 + 1), and the
    // heavy tree rides NV2 links only.
    assert_eq!(w, vec![2, 1], "{trees:?}");
    assert!(trees[0]
        .edges
        .iter()
        .all(|(a, b)| caps[*a as usize][*b as usize] == 2));
    // Path-like trees: no GPU reduces more than two children.
    for t in &trees {
        for g in 0..8u32 {
            let deg = t.edges.iter().filter(|(a, b)| *a == g || *b == g).count();
            assert!(deg <= 3, "GPU {g} has degree {deg} in {t:?}");
        }
    }
}

#[test]
fn other_machines_pack_sensibly() {
    // DGX-1 P100: every GPU has four NV1 links (16 in all): two trees of weight 1.
    let caps = nvlinks(DGX1);
    let t = pack(&caps, &all(8));
    check_packing(&caps, &all(8), &t);
    assert_eq!(t.iter().map(|t| t.weight).sum::<u32>(), 2, "{t:?}");
    // NVSwitch: all pairs NV12; Hamiltonian paths of weight 12, up to the tree cap.
    let caps = nvlinks(A100);
    let t = pack(&caps, &all(8));
    check_packing(&caps, &all(8), &t);
    assert!(t.len() >= 3 && t.iter().all(|t| t.weight == 12), "{t:?}");
    // Two GPUs over an NVLink bridge: one tree, the bridge.
    let caps = nvlinks(RTX);
    assert_eq!(pack(&caps, &all(2)).len(), 1);
    // PCIe only: nothing to pack.
    let caps = nvlinks(PCIE);
    assert!(pack(&caps, &all(8)).is_empty());
}

#[test]
fn partial_cube_mesh_allocations_pack() {
    let caps = nvlinks(V100);
    for m in [2u32, 3, 5, 6] {
        let nodes = all(m);
        let t = pack(&caps, &nodes);
        assert!(!t.is_empty(), "{m} GPUs");
        check_packing(&caps, &nodes, &t);
    }
    // GPUs 0, 5, 6: 0 has no NVLink to 5 or 6.
    assert!(pack(&caps, &[0, 5, 6]).is_empty());
}

fn ctx(shape: &[u32], caps: Vec<Vec<u8>>) -> PlanContext {
    PlanContext::from_shape(shape)
        .unwrap()
        .with_nvlinks(caps)
        .unwrap()
}

fn colls(n: u32) -> Vec<Collective> {
    let mut v = vec![Collective::AllReduce];
    for root in [0, n / 2, n - 1] {
        v.push(Collective::Broadcast { root: Rank(root) });
        v.push(Collective::Reduce { root: Rank(root) });
    }
    v
}

#[test]
fn plans_verify_on_every_fixture_and_shape() {
    for (name, text) in [("v100", V100), ("dgx1", DGX1), ("a100", A100), ("rtx", RTX)] {
        let caps = nvlinks(text);
        let g = caps.len() as u32;
        let mut shapes: Vec<Vec<u32>> = vec![vec![g], vec![g, g], vec![2, 2, 2], vec![g, 1, 2]];
        if g == 8 {
            shapes.extend([vec![3], vec![5], vec![6], vec![6, 3]]);
        }
        for shape in shapes {
            let c = ctx(&shape, caps.clone());
            for coll in colls(c.nranks) {
                let plans = Algorithm::Ntree.all_plans(coll, &c).unwrap();
                for count in [0usize, 1, 7, 1001] {
                    verify_all_models(&plans, Some(count))
                        .unwrap_or_else(|e| panic!("{name} {shape:?} {coll:?} {count}: {e}"));
                }
                assert!(
                    plans.iter().all(|p| p.algorithm == "ntree"),
                    "{name} {shape:?}"
                );
            }
        }
    }
}

#[test]
fn cube_mesh_plan_shape() {
    let c = ctx(&[8], nvlinks(V100));
    let trees = job_trees(&c).unwrap();
    // The heavy tree uses up every NV2 link it touches, so the trees are link-disjoint and
    // share channel 0.
    assert_eq!(channels_needed(&c), 1);
    assert_eq!(
        trees.iter().map(|t| t.weight).collect::<Vec<_>>(),
        vec![2, 1]
    );
    for r in 0..8 {
        let p = NTrees.plan_for_rank(Collective::AllReduce, Rank(r), &c);
        assert_eq!(p.weights, vec![2, 1]);
        assert_eq!(p.channels(), 1);
        // Up and down lanes per tree (the root's one lane turns segments around).
        let roots = trees.iter().filter(|t| t.root == Rank(r)).count();
        assert_eq!(p.lanes.len(), 2 * trees.len() - roots, "rank {r}");
    }
}

#[test]
fn hosts_join_at_rotating_roots_and_spread_the_network() {
    let c = ctx(&[8, 8], nvlinks(V100));
    let trees = job_trees(&c).unwrap();
    for t in &trees {
        let cross: Vec<_> = t
            .edges
            .iter()
            .filter(|(a, b)| c.host_of[a.idx()] != c.host_of[b.idx()])
            .collect();
        assert_eq!(cross.len(), 1, "two hosts join by one edge per tree");
    }
    // Different trees cross between different ranks.
    let crossing = |t: &JobTree| {
        t.edges
            .iter()
            .find(|(a, b)| c.host_of[a.idx()] != c.host_of[b.idx()])
            .copied()
    };
    assert_ne!(crossing(&trees[0]), crossing(&trees[1]));
}

#[test]
fn without_nvlinks_it_is_the_double_binary_tree() {
    for c in [
        PlanContext::from_shape(&[4]).unwrap(),
        ctx(&[8], nvlinks(PCIE)),
        // More ranks than GPUs: two ranks would share a GPU.
        ctx(&[3], nvlinks(RTX)),
        // One rank per host: no NVLink carries anything.
        ctx(&[1, 1, 1], nvlinks(V100)),
    ] {
        let why = fallback_reason(&c).expect("falls back");
        assert!(!why.is_empty());
        let p = Algorithm::Ntree
            .plan(Collective::AllReduce, Rank(0), &c)
            .unwrap();
        assert_eq!(p.algorithm, "tree", "{why}");
        assert_eq!(channels_needed(&c), 1);
        assert!(!crate::select::candidates(Collective::AllReduce, &c).contains(&Algorithm::Ntree));
    }
    let c = ctx(&[8], nvlinks(V100));
    assert!(crate::select::candidates(Collective::AllReduce, &c).contains(&Algorithm::Ntree));
    assert!(!Algorithm::Ntree.serves(Collective::AllGather));
}

#[test]
fn trees_sharing_a_link_get_their_own_channels() {
    // 0=1 is a double link, 1-2 and 0-2 single ones: tree 0 takes 0=1 and 1-2 (weight 1),
    // tree 1 takes what is left of 0=1 and 0-2. They share the pair (0, 1).
    let caps = vec![vec![0, 2, 1], vec![2, 0, 1], vec![1, 1, 0]];
    let c = ctx(&[3], caps.clone());
    let trees = job_trees(&c).unwrap();
    assert_eq!(trees.len(), 2, "{trees:?}");
    assert_eq!(channels_needed(&c), 2);
    assert_eq!((trees[0].channel, trees[1].channel), (0, 1));
    for coll in colls(3) {
        let plans = Algorithm::Ntree.all_plans(coll, &c).unwrap();
        verify_all_models(&plans, Some(100)).unwrap();
        // On one channel the same plans break the one-lane-per-pair rule.
        let mut one = plans.clone();
        for p in &mut one {
            p.lanes.iter_mut().for_each(|l| l.channel = 0);
        }
        if coll == Collective::AllReduce {
            let e = verify_all_models(&one, Some(100)).unwrap_err().to_string();
            assert!(e.contains("one lane per peer"), "{e}");
        }
    }
}
