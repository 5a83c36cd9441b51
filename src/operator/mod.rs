//! The operator: turns EtcdClusters into members on nodes. So far: the membership planner, the
//! pure middle of the reconcile pipeline (observe → plan → act → record).

pub mod plan;
