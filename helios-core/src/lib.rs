//! Helios domain model and pure logic.
//!
//! Everything here is plain data and deterministic functions: no async runtime, no network, no
//! disk. The server's state machine stores these types; the scheduler (pure) plans over them; the
//! API crate converts them to and from protobuf.

pub mod acl;
pub mod alloc;
mod alloc_v1;
mod alloc_v2;
mod alloc_v3;
pub mod command;
pub mod deployment;
pub mod eval;
mod eval_v1;
pub mod events;
pub mod format;
pub mod gc;
pub mod job;
mod job_v1;
mod job_v2;
mod job_v3;
mod job_v4;
mod job_v5;
pub mod limits;
pub mod migrate;
pub mod node;
pub mod page;
pub mod placement;
pub mod plan;
pub mod reschedule;
pub mod scheduler;
pub mod service;
pub mod time;
pub mod update;
pub mod validate;

pub use alloc::{
    AllocClientStatus, AllocDesiredStatus, AllocUpdate, Allocation, TaskEvent, TaskEventKind, TaskRunState, TaskState,
};
pub use command::{Command, CommandResponse, Proposal, Rejection, RejectionKind};
pub use eval::{EvalStatus, EvalTrigger, Evaluation};
pub use job::{
    Affinity, Constraint, ConstraintOperator, DockerConfig, DockerDevice, DockerPrivilege, ExecConfig, GroupPort, Job,
    JobStatus, JobType, PortMapping, Resources, RestartMode, RestartPolicy, Spread, SpreadTarget, Task, TaskDriver,
    TaskGroup,
};
pub use migrate::{HealthCheck, MigrateStrategy};
pub use node::{Node, NodeEligibility, NodeStatus};
pub use plan::Plan;
pub use reschedule::{DelayFunction, RescheduleEvent, ReschedulePolicy};
pub use time::Timestamp;
pub use update::UpdateStrategy;
pub use validate::{FieldError, ValidationErrors};
