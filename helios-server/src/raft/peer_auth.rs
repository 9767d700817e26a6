//! Who sent a peer message, and whether to believe it.
//!
//! Every request between servers names its sender (`helios-peer-id`). With a cluster key (a
//! secret every server of the cluster holds, like Nomad's gossip `encrypt` key) the request also
//! carries an HMAC-SHA256 over the method, the sender and the body (`helios-peer-mac`), and the
//! answer carries one over the request's MAC and the answer's body, so a reply cannot be forged
//! or moved to another request either. Without a key the sender's id is taken on trust: that is
//! only allowed on loopback (`security::resolve_cluster_key`), and says so in the log.
//!
//! A message that authenticates is still refused unless its sender is a member of the Raft
//! membership and the ids and counters inside it are its own (`PeerService`).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tonic::metadata::MetadataMap;
use tonic::Status;

use super::NodeId;

pub const PEER_ID_HEADER: &str = "helios-peer-id";
pub const PEER_MAC_HEADER: &str = "helios-peer-mac";
/// 16 random bytes per request, inside its MAC: the answer's MAC covers the request's, so an
/// answer recorded once cannot pass for the answer to a later request.
pub const PEER_NONCE_HEADER: &str = "helios-peer-nonce";
pub const REPLY_MAC_HEADER: &str = "helios-peer-reply-mac";

/// The file a bootstrap server writes a generated key to, in its data dir, and where every
/// server looks for one when no key is given on the command line.
pub const KEY_FILE_NAME: &str = "helios-cluster.key";

type HmacSha256 = Hmac<Sha256>;

/// 32 random bytes, written as 64 hex digits.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never in logs or error messages.
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn generate() -> Result<ClusterKey, String> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a cluster key: {e}"))?;
        Ok(ClusterKey(bytes))
    }

    pub fn parse(text: &str) -> Result<ClusterKey, String> {
        let text = text.trim();
        let bytes = hex::decode(text).map_err(|_| "a cluster key is 64 hex digits".to_string())?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| "a cluster key is 64 hex digits".to_string())?;
        Ok(ClusterKey(bytes))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length.
        HmacSha256::new_from_slice(&self.0).expect("HMAC accepts any key length")
    }
}

/// A request's sender, once believed.
#[derive(Debug, Clone)]
pub struct Sender {
    pub id: NodeId,
    /// The request's MAC (keyed clusters only); the reply's MAC covers it.
    pub request_mac: Option<String>,
    /// The stored format the request announced (set by the peer service): answers are written
    /// for it.
    pub format: Option<u32>,
}

/// This server's side of peer authentication: its id and the cluster key, if any.
#[derive(Clone, Debug)]
pub struct PeerAuth {
    pub own_id: NodeId,
    key: Option<ClusterKey>,
}

/// Length-prefixed parts, so no two different inputs feed the MAC the same bytes.
fn feed(mac: &mut HmacSha256, parts: &[&[u8]]) {
    for part in parts {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
}

fn unauthenticated(why: impl fmt::Display) -> Status {
    Status::unauthenticated(format!("peer request refused: {why}"))
}

impl PeerAuth {
    pub fn new(own_id: NodeId, key: Option<ClusterKey>) -> PeerAuth {
        PeerAuth { own_id, key }
    }

    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    fn request_mac(&self, method: &str, sender: NodeId, nonce: &[u8], body: &[u8]) -> Option<HmacSha256> {
        let mut mac = self.key.as_ref()?.mac();
        feed(&mut mac, &[b"helios-peer-request-v1", method.as_bytes(), sender.to_string().as_bytes(), nonce, body]);
        Some(mac)
    }

    /// Headers that name this server as the sender of `body` through `method`; the MAC, when
    /// keyed, is returned too (the reply is checked against it).
    pub fn sign_request(&self, method: &str, body: &[u8], metadata: &mut MetadataMap) -> Option<String> {
        metadata.insert(PEER_ID_HEADER, self.own_id.into());
        self.key.as_ref()?;
        let mut nonce = [0u8; 16];
        // Without randomness a nonce of zeros still authenticates; it only loses replay binding.
        if let Err(e) = getrandom::fill(&mut nonce) {
            tracing::warn!(error = %e, "no randomness for a peer request nonce");
        }
        let nonce = hex::encode(nonce);
        metadata.insert(PEER_NONCE_HEADER, nonce.parse().expect("hex is ascii"));
        let mac = hex::encode(self.request_mac(method, self.own_id, nonce.as_bytes(), body)?.finalize().into_bytes());
        // Hex is always a valid header value.
        metadata.insert(PEER_MAC_HEADER, mac.parse().expect("hex is ascii"));
        Some(mac)
    }

    /// Refuses, from its headers alone (before a body is read or decoded), a request that names
    /// no sender or, in a keyed cluster, carries no MAC.
    pub fn check_headers(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if metadata.get(PEER_ID_HEADER).is_none() {
            return Err(unauthenticated(format!("no {PEER_ID_HEADER} header naming the sending server")));
        }
        if self.key.is_some() && metadata.get(PEER_MAC_HEADER).is_none() {
            return Err(unauthenticated("no MAC: the sender does not hold the cluster key"));
        }
        Ok(())
    }

    /// The sender of a request, if it can be believed.
    pub fn verify_request(&self, method: &str, metadata: &MetadataMap, body: &[u8]) -> Result<Sender, Status> {
        let id = metadata
            .get(PEER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<NodeId>().ok())
            .ok_or_else(|| unauthenticated(format!("no {PEER_ID_HEADER} header naming the sending server")))?;
        let nonce = metadata.get(PEER_NONCE_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        // Without a key the sender's word is all there is (loopback only: `security.rs`).
        let Some(expected) = self.request_mac(method, id, nonce, body) else {
            return Ok(Sender { id, request_mac: None, format: None });
        };
        let given = metadata.get(PEER_MAC_HEADER).and_then(|v| v.to_str().ok()).ok_or_else(|| {
            unauthenticated(format!("server {id} sent no {PEER_MAC_HEADER}: does it run without the cluster key?"))
        })?;
        let bytes = hex::decode(given).map_err(|_| unauthenticated("a malformed MAC"))?;
        // verify_slice compares in constant time.
        expected
            .verify_slice(&bytes)
            .map_err(|_| unauthenticated(format!("the MAC of server {id}'s request is wrong: another cluster key?")))?;
        Ok(Sender { id, request_mac: Some(given.to_string()), format: None })
    }

    fn reply_mac(&self, request_mac: &str, body: &[u8]) -> Option<HmacSha256> {
        let mut mac = self.key.as_ref()?.mac();
        feed(&mut mac, &[b"helios-peer-reply-v1", request_mac.as_bytes(), body]);
        Some(mac)
    }

    /// Signs the answer to `sender`'s request.
    pub fn sign_reply(&self, sender: &Sender, body: &[u8], metadata: &mut MetadataMap) {
        let Some(request_mac) = &sender.request_mac else { return };
        if let Some(mac) = self.reply_mac(request_mac, body) {
            let mac = hex::encode(mac.finalize().into_bytes());
            metadata.insert(REPLY_MAC_HEADER, mac.parse().expect("hex is ascii"));
        }
    }

    /// Checks that an answer came from a holder of the key, to the request that got `request_mac`.
    pub fn verify_reply(&self, request_mac: Option<&str>, metadata: &MetadataMap, body: &[u8]) -> Result<(), Status> {
        // Unkeyed, nothing to check (`sign_request` gave no MAC).
        let Some(expected) = request_mac.and_then(|m| self.reply_mac(m, body)) else {
            return Ok(());
        };
        let given = metadata
            .get(REPLY_MAC_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| hex::decode(v).ok())
            .ok_or_else(|| unauthenticated("the peer's answer carries no MAC: it does not hold the cluster key"))?;
        expected
            .verify_slice(&given)
            .map_err(|_| unauthenticated("the MAC of the peer's answer is wrong: it holds another cluster key"))
    }

    /// The MAC that ends a snapshot stream: over the request's MAC and every data byte.
    pub fn snapshot_data_mac(&self, request_mac: &str) -> Option<SnapshotMac> {
        let mut mac = self.key.as_ref()?.mac();
        feed(&mut mac, &[b"helios-peer-snapshot-v1", request_mac.as_bytes()]);
        Some(SnapshotMac(mac))
    }
}

/// A running MAC over a snapshot's data chunks.
pub struct SnapshotMac(HmacSha256);

impl SnapshotMac {
    pub fn update(&mut self, chunk: &[u8]) {
        self.0.update(chunk);
    }

    pub fn finish(self) -> Vec<u8> {
        self.0.finalize().into_bytes().to_vec()
    }

    pub fn verify(self, given: &[u8]) -> bool {
        self.0.verify_slice(given).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::generate().expect("randomness")
    }

    #[test]
    fn a_signed_request_verifies_and_names_its_sender() {
        let key = key();
        let sender = PeerAuth::new(2, Some(key.clone()));
        let receiver = PeerAuth::new(1, Some(key));
        let mut meta = MetadataMap::new();
        let mac = sender.sign_request("vote", b"body", &mut meta).expect("keyed");
        let who = receiver.verify_request("vote", &meta, b"body").expect("verifies");
        assert_eq!(who.id, 2);
        assert_eq!(who.request_mac.as_deref(), Some(mac.as_str()));
    }

    #[test]
    fn any_change_or_another_key_is_refused() {
        let key = key();
        let sender = PeerAuth::new(2, Some(key.clone()));
        let receiver = PeerAuth::new(1, Some(key));
        let mut meta = MetadataMap::new();
        sender.sign_request("vote", b"body", &mut meta);
        // Another body, another method, another claimed sender.
        assert!(receiver.verify_request("vote", &meta, b"bodY").is_err());
        assert!(receiver.verify_request("append_entries", &meta, b"body").is_err());
        let mut claimed = meta.clone();
        claimed.insert(PEER_ID_HEADER, 3u64.into());
        assert!(receiver.verify_request("vote", &claimed, b"body").is_err());
        // Unsigned, or signed with another key.
        assert!(receiver.verify_request("vote", &MetadataMap::new(), b"body").is_err());
        let mut unsigned = MetadataMap::new();
        unsigned.insert(PEER_ID_HEADER, 2u64.into());
        assert_eq!(
            receiver.verify_request("vote", &unsigned, b"body").unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let stranger = PeerAuth::new(2, Some(self::key()));
        let mut forged = MetadataMap::new();
        stranger.sign_request("vote", b"body", &mut forged);
        assert!(receiver.verify_request("vote", &forged, b"body").is_err());
    }

    #[test]
    fn a_reply_is_bound_to_its_request_and_the_key() {
        let key = key();
        let client = PeerAuth::new(2, Some(key.clone()));
        let server = PeerAuth::new(1, Some(key));
        let mut request = MetadataMap::new();
        let mac = client.sign_request("status", b"", &mut request).expect("keyed");
        let sender = server.verify_request("status", &request, b"").expect("verifies");
        let mut reply = MetadataMap::new();
        server.sign_reply(&sender, b"answer", &mut reply);
        client.verify_reply(Some(&mac), &reply, b"answer").expect("genuine reply");
        assert!(client.verify_reply(Some(&mac), &reply, b"other").is_err());
        let mut other = MetadataMap::new();
        let other_mac = client.sign_request("status", b"x", &mut other).expect("keyed");
        assert!(client.verify_reply(Some(&other_mac), &reply, b"answer").is_err(), "moved to another request");
        assert!(client.verify_reply(Some(&mac), &MetadataMap::new(), b"answer").is_err(), "unsigned");
        // The same request sent again gets a new nonce: the old answer does not pass for it.
        let again = client.sign_request("status", b"", &mut MetadataMap::new()).expect("keyed");
        assert_ne!(again, mac);
        assert!(client.verify_reply(Some(&again), &reply, b"answer").is_err(), "a replayed answer");
    }

    #[test]
    fn without_a_key_the_id_is_taken_as_given() {
        let open = PeerAuth::new(1, None);
        let mut meta = MetadataMap::new();
        assert!(PeerAuth::new(2, None).sign_request("vote", b"b", &mut meta).is_none());
        assert_eq!(open.verify_request("vote", &meta, b"b").expect("named").id, 2);
        assert!(open.verify_request("vote", &MetadataMap::new(), b"b").is_err(), "a sender must be named");
    }

    #[test]
    fn keys_parse_from_hex_only() {
        let key = key();
        assert_eq!(ClusterKey::parse(&format!(" {}\n", key.to_hex())).expect("parses"), key);
        assert!(ClusterKey::parse("abc").is_err());
        assert!(ClusterKey::parse(&"zz".repeat(32)).is_err());
        assert!(!format!("{key:?}").contains(&key.to_hex()), "keys stay out of logs");
    }
}
