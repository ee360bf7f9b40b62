//! The Spry algorithm and its baselines as a library: perturbations replayable from a seed, the
//! forward-gradient estimator, local optimizers, weight-splitting planners, per-unit aggregation
//! with server optimizers, communication modes, data partitions and an in-process simulation.

pub mod aggregate;
pub mod attack;
mod checkpoint_file;
pub mod client;
pub mod comm;
pub mod diagnostics;
pub mod estimator;
pub mod mezo;
pub mod optim;
mod per_iteration;
pub mod perturb;
pub mod planner;
pub mod report;
pub mod robust;
pub mod sim;

pub use aggregate::{
    AggregationReport, Aggregator, ClientUpdate, RoundExpectation, ServerOptimizer, ServerState,
    aggregate_round, aggregate_round_with, combine_updates, validate_update,
};
pub use attack::{Attack, AttackKind};
pub use checkpoint_file::{CHECKPOINT_FORMAT, CHECKPOINT_VERSION};
pub use client::{
    ClientConfig, HeadGrad, LocalReport, LossJvp, LrSchedule, Objective, Perturbation, train_local,
};
pub use comm::{CommMode, RoundBytes};
pub use diagnostics::{DiagnosticsConfig, RoundDiagnostics};
pub use estimator::{Estimate, EstimatorConfig, forward_gradient};
pub use mezo::{spsa_direction, train_local_mezo};
pub use optim::{LocalOptimizer, OptimizerState};
pub use perturb::{DirectionScheme, StepKey, direction, directions, directions_with};
pub use planner::{
    AllUnitsPlanner, DepthAwarePlanner, NoUnitsPlanner, Plan, Planner, ReferencePlanner,
    ReshufflePlanner,
};
pub use report::{METRICS_CSV_HEADER, RunSummary, metrics_csv, personalized_accuracy};
pub use robust::CombineRule;
pub use sim::remote::{
    ClientStep, IterationRound, JvpReply, RoundPlan, client_jvp_step, client_step, iteration_steps,
    validate_jvp_reply,
};
pub use sim::{
    Checkpoint, Evaluation, FederatedTask, MAX_CHECKPOINT_VALUE, Method, PlannerKind, RoundMetrics,
    SimConfig, Simulation,
};
