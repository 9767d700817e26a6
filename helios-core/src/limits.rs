//! Explicit limits on user input. Anything larger is refused by validation with the field's path,
//! before it reaches Raft.

pub const MAX_NAME_LEN: usize = 128;
pub const MAX_TASK_GROUPS: usize = 100;
pub const MAX_TASKS_PER_GROUP: usize = 100;
pub const MAX_GROUP_COUNT: u32 = 10_000;
pub const MAX_ARGS: usize = 1_024;
pub const MAX_ARG_LEN: usize = 64 * 1024;
pub const MAX_ENV_ENTRIES: usize = 1_024;
pub const MAX_ENV_BYTES: usize = 256 * 1024;
pub const MAX_CONSTRAINTS: usize = 64;
pub const MAX_META_ENTRIES: usize = 256;
pub const MAX_CPU_MHZ: u32 = 1_000_000;
pub const MAX_MEMORY_MB: u32 = 16 * 1024 * 1024;
pub const MAX_PRIORITY: u32 = 100;
pub const MAX_RESTART_ATTEMPTS: u32 = 1_000;
pub const MAX_KILL_TIMEOUT_SECS: u32 = 3_600;
pub const MAX_PORTS: usize = 64;
/// Largest protobuf message a server accepts (and the CLI sends). It bounds a job's size, and so
/// a Raft entry's.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The most one message of an agent's allocation watch may hold: a page of about
/// `MAX_MESSAGE_BYTES`, plus one job of at most that size (`helios-server/src/api/assigned.rs`).
/// Servers send no more; agents accept this much.
pub const MAX_WATCH_MESSAGE_BYTES: usize = 3 * MAX_MESSAGE_BYTES;
/// The most the items of one page of a List answer may weigh (encoded): under the 4 MiB a default
/// gRPC client accepts, with room for the rest of the answer. A single larger item goes alone.
pub const MAX_PAGE_BYTES: usize = 3 * MAX_MESSAGE_BYTES;

/// A snapshot file's chunk in the public API (`SaveSnapshot`, `RestoreSnapshot`): well under
/// `MAX_MESSAGE_BYTES` with its framing (a chunk of exactly that size was refused).
pub const SNAPSHOT_FILE_CHUNK_BYTES: usize = 256 * 1024;
/// Most Raft entries sent to a follower in one message.
pub const MAX_ENTRIES_PER_APPEND: u64 = 256;
/// Largest message between servers: a full batch of the largest entries, with room to spare.
pub const MAX_PEER_MESSAGE_BYTES: usize = (MAX_ENTRIES_PER_APPEND as usize + 8) * MAX_MESSAGE_BYTES;
