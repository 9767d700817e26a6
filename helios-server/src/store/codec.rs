//! bincode (v2, serde) encoding of everything stored. One config everywhere: changing it would
//! make existing databases unreadable.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data into a Vec fails only when a record cannot be written for the
    // readers being written for (`helios_core::format::write_for`): the state machine writes
    // for the cluster's format, which every command it applies was checked against, and
    // everything else writes for this build's. Messages to peers use `try_encode`.
    try_encode(value).unwrap_or_else(|e| panic!("{e}"))
}

/// As `encode`, for what may be written for older readers (a peer's announced format).
pub fn try_encode<T: Serialize + ?Sized>(value: &T) -> io::Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| {
        let why = match e {
            // A record's own refusal (`format::not_writable`): its words, not bincode's wrapper.
            bincode::error::EncodeError::OtherString(why) => why,
            other => other.to_string(),
        };
        io::Error::new(io::ErrorKind::InvalidInput, why)
    })
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode stored value: {e}")))?;
    Ok(value)
}

/// The most one value read from a stream, or from a peer's single-command message, may claim: a
/// damaged (or hostile) length prefix must not make the reader allocate whatever it says (the
/// process aborts when an allocation fails). A limit only checks while decoding; the bytes are
/// those of `config()`.
const STREAM_VALUE_LIMIT: usize = 64 * 1024 * 1024;

/// As `decode`, for a peer's message that holds one vote or one forwarded command: what it
/// claims is bounded (`STREAM_VALUE_LIMIT`), so a length prefix of 2^62 is refused, not tried.
pub fn decode_bounded<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, config().with_limit::<STREAM_VALUE_LIMIT>())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode the message: {e}")))?;
    Ok(value)
}

/// As `decode`, from a reader (a received snapshot's file), one value of at most 64 MiB.
pub fn decode_from_reader<T: DeserializeOwned>(mut reader: impl io::Read) -> io::Result<T> {
    bincode::serde::decode_from_std_read(&mut reader, config().with_limit::<STREAM_VALUE_LIMIT>())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode stored value: {e}")))
}

/// As `encode`, to a writer (a snapshot stream).
pub fn encode_to_writer<T: Serialize + ?Sized>(value: &T, mut writer: impl io::Write) -> io::Result<()> {
    bincode::serde::encode_into_std_write(value, &mut writer, config()).map(drop).map_err(|e| match e {
        bincode::error::EncodeError::Io { inner, .. } => inner,
        other => io::Error::other(other),
    })
}

#[cfg(test)]
mod stream_tests {
    use super::*;

    #[test]
    fn a_message_claiming_more_than_the_limit_is_refused_not_allocated() {
        // A string whose varint length prefix says 2^62 bytes (0xff: a u64 follows).
        let mut bytes = vec![0xff];
        bytes.extend_from_slice(&(1u64 << 62).to_le_bytes());
        let refused = decode_bounded::<String>(&bytes).expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        assert_eq!(decode_bounded::<String>(&encode("fits")).expect("decodes"), "fits");
    }

    #[test]
    fn a_damaged_length_in_a_stream_is_refused_not_allocated() {
        // A byte string claiming 2^40 bytes (bincode's varint: 253, then a u64), then nothing.
        let mut bytes = vec![253u8];
        bytes.extend_from_slice(&(1u64 << 40).to_le_bytes());
        let refused = decode_from_reader::<serde_bytes_like::Bytes>(bytes.as_slice()).expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        // Within the limit, values read as before.
        let ok: Vec<u8> = decode_from_reader(encode(&vec![7u8; 1000]).as_slice()).expect("read");
        assert_eq!(ok.len(), 1000);
    }

    /// A byte buffer read as one (as snapshot rows' values are).
    mod serde_bytes_like {
        #[derive(Debug)]
        pub struct Bytes;

        impl<'de> serde::Deserialize<'de> for Bytes {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
                struct Visit;
                impl serde::de::Visitor<'_> for Visit {
                    type Value = Bytes;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_byte_buf<E>(self, _: Vec<u8>) -> Result<Bytes, E> {
                        Ok(Bytes)
                    }
                    fn visit_bytes<E>(self, _: &[u8]) -> Result<Bytes, E> {
                        Ok(Bytes)
                    }
                }
                d.deserialize_byte_buf(Visit)
            }
        }
    }
}
