//! How a server proves to an agent that a request comes from the cluster: an HMAC-SHA256 of
//! the request under the node's secret, which only the agent and the servers hold (the agent
//! registered with it; exec tasks cannot read it). An agent's log service takes requests with a
//! valid, fresh proof only, so a local process (a task among them) that reaches the agent's port
//! cannot read other jobs' logs, with or without TLS.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a proof's time may be from the agent's clock (servers and agents keep time with NTP;
/// a captured proof can be replayed only for the same allocation's logs, within this window).
pub const MAX_SKEW_MS: u64 = 60_000;

fn mac(secret: &str, alloc_id: &str, task: &str, time_ms: u64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    for part in [b"helios task logs v1".as_slice(), alloc_id.as_bytes(), task.as_bytes()] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac.update(&time_ms.to_be_bytes());
    mac
}

/// The proof for reading `task`'s logs of `alloc_id` at `time_ms` (hex).
pub fn prove(secret: &str, alloc_id: &str, task: &str, time_ms: u64) -> String {
    hex::encode(mac(secret, alloc_id, task, time_ms).finalize().into_bytes())
}

/// Checks a proof against the node's secret and the agent's clock (`now_ms`).
pub fn check(
    secret: &str,
    alloc_id: &str,
    task: &str,
    time_ms: u64,
    proof: &str,
    now_ms: u64,
) -> Result<(), &'static str> {
    if now_ms.abs_diff(time_ms) > MAX_SKEW_MS {
        return Err("the request's proof is stale (or a clock is off by more than a minute)");
    }
    let bytes = hex::decode(proof).map_err(|_| "the request carries no valid proof")?;
    // Constant time (`verify_slice`): a refusal must not tell how much of a guess was right.
    mac(secret, alloc_id, task, time_ms).verify_slice(&bytes).map_err(|_| "the request's proof does not match")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_holder_proves_and_only_for_what_it_signed() {
        let proof = prove("s3cret", "a1", "web", 1_000_000);
        assert_eq!(check("s3cret", "a1", "web", 1_000_000, &proof, 1_030_000), Ok(()));
        assert!(check("other", "a1", "web", 1_000_000, &proof, 1_000_000).is_err(), "another secret");
        assert!(check("s3cret", "a2", "web", 1_000_000, &proof, 1_000_000).is_err(), "another allocation");
        assert!(check("s3cret", "a1", "db", 1_000_000, &proof, 1_000_000).is_err(), "another task");
        assert!(check("s3cret", "a1", "web", 1_000_000, &proof, 1_000_000 + MAX_SKEW_MS + 1).is_err(), "stale");
        assert!(check("s3cret", "a1", "web", 1_000_000, "", 1_000_000).is_err(), "none");
        // Parts are length-prefixed: moving a character between them changes the proof.
        assert_ne!(prove("s", "a1w", "eb", 5), prove("s", "a1", "web", 5));
    }
}
