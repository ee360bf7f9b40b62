//! Data for the federated experiments: labelled TSV files, federated partitions (IID, Dirichlet
//! label skew, natural by a column), per-client train/test splits, and language-model sequences.

pub mod partition;
pub mod tsv;

pub use partition::{
    Partition, PartitionScheme, dirichlet, holdout, iid, natural, train_test_split,
};
pub use tsv::{Example, load_labelled_tsv};
