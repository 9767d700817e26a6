//! openraft's own storage test suite, run against the redb log store and state machine.

use helios_server::raft::log_store::LogStore;
use helios_server::raft::state_machine::StateMachine;
use helios_server::raft::TypeConfig;
use helios_server::store;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use tempfile::TempDir;

struct RedbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = store::open(dir.path(), 1).expect("open database");
        let log = LogStore::open(db.clone()).expect("open log");
        Ok((dir, log, StateMachine::new(db, helios_server::signals::NodeSignals::default())))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_the_openraft_storage_suite() {
    Suite::test_all(RedbBuilder).await.expect("storage suite");
}
