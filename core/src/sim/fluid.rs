//! Fluid flows over shared resources with max-min fair rates (progressive filling).
//!
//! A flow moves `bytes` across a set of resources (a NIC's egress, a host's CPU, an NVLink
//! direction), each of which has a capacity in bytes per microsecond; a flow may also have
//! its own cap (a cloud network's per-flow limit, one core's copy rate). Whenever the set of
//! active flows changes, rates are recomputed: all unfrozen flows grow together until a
//! resource saturates or a flow reaches its cap, which freezes those flows; repeat. That is
//! the textbook max-min fair allocation TCP approximates and ASTRA-sim's analytical network
//! backend uses.

/// Index of a resource in [`Fluid::resources`].
pub type ResId = usize;

#[derive(Clone, Debug)]
struct Flow {
    res: Vec<ResId>,
    cap: f64,
    left: f64,
    rate: f64,
    token: usize,
}

/// The active flows and the resources they share.
#[derive(Clone, Debug, Default)]
pub struct Fluid {
    /// Capacity of each resource, bytes per microsecond.
    pub resources: Vec<f64>,
    flows: Vec<Flow>,
    dirty: bool,
}

impl Fluid {
    pub fn new() -> Fluid {
        Fluid::default()
    }

    pub fn add_resource(&mut self, bytes_per_us: f64) -> ResId {
        self.resources.push(bytes_per_us);
        self.resources.len() - 1
    }

    /// Starts a flow; `token` comes back when it finishes. A flow of zero bytes finishes at
    /// the next [`Fluid::advance`].
    pub fn start(&mut self, bytes: f64, res: Vec<ResId>, cap: f64, token: usize) {
        self.flows.push(Flow {
            res,
            cap,
            left: bytes.max(0.0),
            rate: 0.0,
            token,
        });
        self.dirty = true;
    }

    pub fn active(&self) -> usize {
        self.flows.len()
    }

    fn solve(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let mut left: Vec<f64> = self.resources.clone();
        let mut users: Vec<usize> = vec![0; self.resources.len()];
        let mut frozen: Vec<bool> = vec![false; self.flows.len()];
        for f in &mut self.flows {
            f.rate = 0.0;
        }
        for f in &self.flows {
            for &r in &f.res {
                users[r] += 1;
            }
        }
        let mut unfrozen = self.flows.len();
        while unfrozen > 0 {
            // The largest equal increment every unfrozen flow can take.
            let mut inc = f64::INFINITY;
            for (r, &u) in users.iter().enumerate() {
                if u > 0 {
                    inc = inc.min(left[r] / u as f64);
                }
            }
            for (i, f) in self.flows.iter().enumerate() {
                if !frozen[i] {
                    inc = inc.min(f.cap - f.rate);
                }
            }
            if !inc.is_finite() {
                // Flows that touch no resource and have no cap: effectively instant.
                inc = 1e12;
            }
            let inc = inc.max(0.0);
            for (i, f) in self.flows.iter_mut().enumerate() {
                if !frozen[i] {
                    f.rate += inc;
                    for &r in &f.res {
                        left[r] -= inc;
                    }
                }
            }
            // Freeze flows on saturated resources or at their cap.
            let eps = 1e-9;
            for (i, f) in self.flows.iter().enumerate() {
                if frozen[i] {
                    continue;
                }
                let saturated = f.res.iter().any(|&r| left[r] <= eps * self.resources[r]);
                if saturated || f.rate >= f.cap - eps * f.cap.max(1.0) || inc >= 1e12 {
                    frozen[i] = true;
                    unfrozen -= 1;
                    for &r in &f.res {
                        users[r] -= 1;
                    }
                }
            }
        }
    }

    /// Time until the next flow finishes (microseconds), or `None` with no flows.
    pub fn next_finish(&mut self) -> Option<f64> {
        self.solve();
        self.flows
            .iter()
            .map(|f| {
                if f.rate > 0.0 {
                    f.left / f.rate
                } else {
                    f64::INFINITY
                }
            })
            .fold(None, |m: Option<f64>, t| Some(m.map_or(t, |m| m.min(t))))
    }

    /// Moves time forward by `dt` microseconds; returns the tokens of flows that finished.
    pub fn advance(&mut self, dt: f64) -> Vec<usize> {
        self.solve();
        let mut done = Vec::new();
        let mut i = 0;
        while i < self.flows.len() {
            let f = &mut self.flows[i];
            f.left -= f.rate * dt;
            // Relative tolerance: float residue must not leave a flow a femtobyte short.
            if f.left <= 1e-6 * (1.0 + f.rate * dt) {
                done.push(self.flows.swap_remove(i).token);
                self.dirty = true;
            } else {
                i += 1;
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(fl: &mut Fluid) -> Vec<(usize, f64)> {
        let mut t = 0.0;
        let mut out = Vec::new();
        while let Some(dt) = fl.next_finish() {
            t += dt;
            for tok in fl.advance(dt) {
                out.push((tok, t));
            }
        }
        out.sort_by_key(|x| x.0);
        out
    }

    #[test]
    fn one_flow_on_one_link() {
        let mut fl = Fluid::new();
        let l = fl.add_resource(100.0);
        fl.start(1000.0, vec![l], f64::INFINITY, 7);
        assert_eq!(run(&mut fl), vec![(7, 10.0)]);
    }

    #[test]
    fn k_flows_share_a_link_fairly() {
        for k in 1..6usize {
            let mut fl = Fluid::new();
            let l = fl.add_resource(100.0);
            for i in 0..k {
                fl.start(1000.0, vec![l], f64::INFINITY, i);
            }
            for (_, t) in run(&mut fl) {
                assert!((t - 10.0 * k as f64).abs() < 1e-6, "k={k}: {t}");
            }
        }
    }

    #[test]
    fn per_flow_cap_and_max_min() {
        // Link 100; flow A capped at 20 takes 20, B gets the remaining 80.
        let mut fl = Fluid::new();
        let l = fl.add_resource(100.0);
        fl.start(200.0, vec![l], 20.0, 0);
        fl.start(800.0, vec![l], f64::INFINITY, 1);
        let r = run(&mut fl);
        assert!(
            (r[0].1 - 10.0).abs() < 1e-6 && (r[1].1 - 10.0).abs() < 1e-6,
            "{r:?}"
        );
        // When a short flow leaves, the other speeds up: 2 flows of 100 and 300 on 100/us:
        // both at 50 until t=2, then the second alone at 100 for 200 bytes: t=4.
        let mut fl = Fluid::new();
        let l = fl.add_resource(100.0);
        fl.start(100.0, vec![l], f64::INFINITY, 0);
        fl.start(300.0, vec![l], f64::INFINITY, 1);
        let r = run(&mut fl);
        assert!(
            (r[0].1 - 2.0).abs() < 1e-6 && (r[1].1 - 4.0).abs() < 1e-6,
            "{r:?}"
        );
    }

    #[test]
    fn bottleneck_is_the_tightest_resource() {
        // Flow over links of 100 and 40, and a second flow on the 100 link alone.
        let mut fl = Fluid::new();
        let a = fl.add_resource(100.0);
        let b = fl.add_resource(40.0);
        fl.start(400.0, vec![a, b], f64::INFINITY, 0);
        fl.start(600.0, vec![a], f64::INFINITY, 1);
        let r = run(&mut fl);
        // Flow 0 at 40 (b saturates) -> 10 us; flow 1 at 60 -> 10 us.
        assert!(
            (r[0].1 - 10.0).abs() < 1e-6 && (r[1].1 - 10.0).abs() < 1e-6,
            "{r:?}"
        );
    }
}
