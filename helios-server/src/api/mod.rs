//! The public gRPC services. Handlers validate input, stamp IDs and timestamps, and go through
//! `Cluster` for every write and current read; they hold no state of their own.

pub mod acl;
pub mod agent;
pub mod assigned;
pub mod auth;
pub mod blocking;
pub mod cluster_service;
pub mod deployments;
pub mod errors;
pub mod events;
pub mod ids;
pub mod jobs;
pub mod nodes;
pub mod pages;
pub mod restore;
pub mod retries;
pub mod services;
pub mod status_codes;
