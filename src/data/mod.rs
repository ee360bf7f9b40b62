//! Data for the federated experiments: labelled files (TSV, CSV, JSON Lines) with integer or
//! string labels and their [`LabelSet`], federated partitions (IID, Dirichlet label skew, natural
//! by a column), per-client train/test splits, and a seeded validation holdout.

mod columns;
mod delimited;
mod example;
mod format;
mod jsonl;
pub mod labelled;
pub mod labels;
pub mod partition;
mod rows;
pub mod tsv;

pub use columns::Columns;
pub use example::Example;
pub use format::FileFormat;
pub use labelled::{load_labelled, load_labelled_against};
pub use labels::{LabelSet, MAX_CLASSES};
pub use partition::{
    Partition, PartitionScheme, dirichlet, holdout, iid, natural, train_test_split,
};
pub use tsv::load_labelled_tsv;
