//! `cairn sim`: simulators an operator can run without a cluster. `placement`
//! drives the controller's decisions over a synthetic cluster (`sim::controller_sim`).

use crate::sim::controller_sim::{self, FleetConfig};
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct SimArgs {
    #[command(subcommand)]
    pub command: SimCommand,
}

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// The controller over a synthetic cluster: initial balancing, a node joining
    /// per zone, a node dying, a whole zone lost, hot ranges splitting.
    Placement {
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        #[arg(long, default_value_t = 5)]
        zones: usize,
        #[arg(long, default_value_t = 50_000)]
        ranges: usize,
        #[arg(long, default_value_t = 3)]
        replication_factor: usize,
        /// Actions the controller takes per decision round.
        #[arg(long, default_value_t = 64)]
        actions_per_round: usize,
        #[arg(long, default_value_t = 5_000)]
        max_rounds: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

/// Runs the simulator and prints one line per phase; exit code 1 if a phase did
/// not converge or a range lost its quorum.
pub fn run(args: SimArgs) -> i32 {
    match args.command {
        SimCommand::Placement { nodes, zones, ranges, replication_factor, actions_per_round, max_rounds, seed } => {
            if nodes == 0 || zones == 0 || replication_factor == 0 || replication_factor > nodes {
                eprintln!("cairn sim placement: need nodes ≥ replication factor ≥ 1 and at least one zone");
                return 2;
            }
            let cfg = FleetConfig { nodes, zones, ranges, rf: replication_factor, seed, actions_per_round, max_rounds };
            println!(
                "{nodes} nodes in {zones} zones, {ranges} ranges × {replication_factor} replicas, \
                 {actions_per_round} actions per round, seed {seed}"
            );
            let started = crate::clock::os_now();
            let reports = controller_sim::run(&cfg);
            let mut ok = true;
            for r in &reports {
                println!("{r}");
                ok &= r.converged && r.ever_below_quorum == 0;
            }
            println!("done in {:.1} s", crate::clock::os_now().saturating_duration_since(started).as_secs_f64());
            if ok {
                0
            } else {
                1
            }
        }
    }
}
