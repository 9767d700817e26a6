//! bincode (v2, serde) encoding of everything stored. One config everywhere: changing it would
//! make existing databases unreadable.

use std::io;

use serde::de::DeserializeOwned;
use serde::Serialize;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    // Serializing plain data structures into a Vec cannot fail: no I/O, no size limit configured,
    // and none of our types has a fallible Serialize impl.
    bincode::serde::encode_to_vec(value, config()).expect("encoding to memory cannot fail")
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    let (value, _) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode stored value: {e}")))?;
    Ok(value)
}

/// As `decode`, from a reader (a received snapshot's file).
pub fn decode_from_reader<T: DeserializeOwned>(mut reader: impl io::Read) -> io::Result<T> {
    bincode::serde::decode_from_std_read(&mut reader, config())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot decode stored value: {e}")))
}

/// As `encode`, to a writer (a snapshot stream).
pub fn encode_to_writer<T: Serialize + ?Sized>(value: &T, mut writer: impl io::Write) -> io::Result<()> {
    bincode::serde::encode_into_std_write(value, &mut writer, config()).map(drop).map_err(|e| match e {
        bincode::error::EncodeError::Io { inner, .. } => inner,
        other => io::Error::other(other),
    })
}
