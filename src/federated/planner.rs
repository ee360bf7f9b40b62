//! Weight-splitting planners: which trainable units each sampled client perturbs and trains.
//!
//! Every planner assigns every unit to at least one client each round and balances the load:
//! with U units and M sampled clients, a client gets ⌊U/M⌋ or ⌈U/M⌉ units when U ≥ M, and a unit
//! gets ⌊M/U⌋ or ⌈M/U⌉ clients when U < M (where the reference implementation crashes).

use serde::{Deserialize, Serialize};

use crate::rng::{Domain, KeyedRng};
use crate::{Error, Result};

/// The units each sampled client trains this round: `units[i]` belongs to the i-th sampled
/// client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Assigned unit indices per sampled client, ascending.
    pub units: Vec<Vec<usize>>,
}

impl Plan {
    /// How many clients train each unit.
    pub fn clients_per_unit(&self, n_units: usize) -> Vec<usize> {
        let mut c = vec![0; n_units];
        for us in &self.units {
            for &u in us {
                c[u] += 1;
            }
        }
        c
    }
}

/// A rule that splits U units among M sampled clients for a round.
pub trait Planner: Send + Sync {
    /// A short name for logs and summaries.
    fn name(&self) -> &'static str;

    /// The plan for `round` with `n_clients` sampled clients and `n_units` units.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if there are no clients or no units.
    fn plan(&self, round: u64, n_clients: usize, n_units: usize) -> Result<Plan>;
}

/// A borrowed planner plans as its referent does.
impl<P: Planner + ?Sized> Planner for &P {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn plan(&self, round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        (**self).plan(round, n_clients, n_units)
    }
}

fn check(n_clients: usize, n_units: usize) -> Result<()> {
    if n_clients == 0 || n_units == 0 {
        return Err(Error::invalid(
            "Planner::plan",
            format!("{n_clients} clients, {n_units} units"),
        ));
    }
    Ok(())
}

/// Round-robin over an ordering of the units: unit at position j → slot j mod M; when U < M,
/// slot i → unit at position i mod U.
fn round_robin(order: &[usize], n_clients: usize) -> Plan {
    let n_units = order.len();
    let mut units = vec![Vec::new(); n_clients];
    if n_units >= n_clients {
        for (j, &u) in order.iter().enumerate() {
            units[j % n_clients].push(u);
        }
    } else {
        for (i, slot) in units.iter_mut().enumerate() {
            slot.push(order[i % n_units]);
        }
    }
    for u in &mut units {
        u.sort_unstable();
    }
    Plan { units }
}

/// The reference rule (Astuary/Spry): unit j → slot j mod M, fixed across rounds; slot i goes to
/// the i-th sampled client. Extended to U < M by giving client i unit i mod U.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReferencePlanner;

impl Planner for ReferencePlanner {
    fn name(&self) -> &'static str {
        "reference"
    }
    fn plan(&self, _round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        check(n_clients, n_units)?;
        let order: Vec<usize> = (0..n_units).collect();
        Ok(round_robin(&order, n_clients))
    }
}

/// The reference rule over a fresh random permutation of the units every round (seeded), so a
/// unit meets different co-assigned units and clients over time.
#[derive(Clone, Copy, Debug)]
pub struct ReshufflePlanner {
    /// Run seed.
    pub seed: u64,
}

impl Planner for ReshufflePlanner {
    fn name(&self) -> &'static str {
        "reshuffle"
    }
    fn plan(&self, round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        check(n_clients, n_units)?;
        let mut order: Vec<usize> = (0..n_units).collect();
        KeyedRng::new(self.seed, Domain::Sampling, &[round, 1]).shuffle(&mut order);
        Ok(round_robin(&order, n_clients))
    }
}

/// Contiguous blocks of units, deepest first: client 0 gets the top block (ending at the last
/// unit, the head), client 1 the block below it, and so on. A client's tangents then start at
/// the bottom of its own block instead of in the first layer, so most clients run most of the
/// network as a plain forward. When U < M, clients are spread over the units from the top down.
#[derive(Clone, Copy, Debug, Default)]
pub struct DepthAwarePlanner;

impl Planner for DepthAwarePlanner {
    fn name(&self) -> &'static str {
        "depth"
    }
    fn plan(&self, _round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        check(n_clients, n_units)?;
        let units = if n_units >= n_clients {
            // block sizes ⌈U/M⌉ for the first U mod M clients, ⌊U/M⌋ after; blocks run top-down
            let (base, extra) = (n_units / n_clients, n_units % n_clients);
            let mut end = n_units;
            (0..n_clients)
                .map(|i| {
                    let size = base + usize::from(i < extra);
                    let block: Vec<usize> = (end - size..end).collect();
                    end -= size;
                    block
                })
                .collect()
        } else {
            (0..n_clients)
                .map(|i| vec![n_units - 1 - (i % n_units)])
                .collect()
        };
        Ok(Plan { units })
    }
}

/// Every client trains every unit (FedFgd and FedMeZO: no splitting).
#[derive(Clone, Copy, Debug, Default)]
pub struct AllUnitsPlanner;

impl Planner for AllUnitsPlanner {
    fn name(&self) -> &'static str {
        "all"
    }
    fn plan(&self, _round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        check(n_clients, n_units)?;
        Ok(Plan {
            units: vec![(0..n_units).collect(); n_clients],
        })
    }
}

/// No client trains any planned unit (head-only training: only `SimConfig::shared_units` move).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoUnitsPlanner;

impl Planner for NoUnitsPlanner {
    fn name(&self) -> &'static str {
        "none"
    }
    fn plan(&self, _round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        check(n_clients, n_units)?;
        Ok(Plan {
            units: vec![Vec::new(); n_clients],
        })
    }
}
