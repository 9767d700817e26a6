//! Versioned records: every record Helios stores or sends between servers says which shape it
//! was written in, and a build reads every older shape it supports and migrates it forward.
//!
//! bincode encodes fields by position, so a record's bytes only make sense to code that knows its
//! exact shape. A record therefore serializes as the pair `(version, body)`. The current type's
//! body is its derived serde form (`#[serde(remote = "Self")]` keeps the derived code as inherent
//! functions, so the trait impls can wrap it); an older shape is kept as a `Previous` type with a
//! `From<Previous>` migration into the next, as garage's `Migrate` does:
//!
//! ```ignore
//! #[derive(Serialize, Deserialize)]
//! #[serde(remote = "Self")]
//! pub struct Job { /* the current fields */ }
//! versioned!(Job = 2, previous v1::Job);   // v1::Job: the old fields, `impl From<v1::Job> for Job`
//! legacy!(v1::Job = 1);                    // or `legacy!(v1::Job = 1, previous v0::Job)`
//! ```
//!
//! Adding a field to a record is then a new version, a copy of the old struct and a `From`:
//! never a wipe. Types nested in a record (a job's tasks) are part of its body; changing one is a
//! new version of every record holding it. Versions are per record type, so a change to `Job`
//! leaves the Raft commands that carry jobs alone: a command's bytes hold the job's own tag.
//!
//! Format 2 (before tags) stored the same bodies as version 1, without the tag. Those bytes are
//! read inside [`read_untagged`], once, when a format-2 database is converted.
//!
//! **Writing for older readers.** During a rolling upgrade the servers of the newer build write
//! what the older ones read: the cluster's stored format is replicated (raised through Raft once
//! every voter runs the newer build), and everything replicated is written for it inside
//! [`write_for`]. A version that older builds cannot read names the format that introduced it,
//! and is written as its previous version for older formats, through a `TryFrom` that refuses
//! rather than drops what the older shape cannot hold:
//!
//! ```ignore
//! versioned!(Job = 2, since format 5, previous v1::Job); // v1::Job: TryFrom<&Job>, itself versioned!
//! ```

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serialize, Serializer};

/// The stored and peer format this build writes. Servers announce it to each other; a database
/// records it. 1: no marker. 2: marked, untagged bodies. 3: every record tagged with its version.
/// 4: the cluster's format is replicated (`Command::RaiseFormat`) and a snapshot states the
/// format its rows were written for. 5: jobs at version 2 (task `user`, raw_exec, exec's
/// `cpu_hard_limit`). 6: jobs at version 3 (docker's `privileged`, `cap_add`, `cap_drop`,
/// `devices`). 7: jobs at version 4 (a group's reschedule policy), allocations at version 2
/// (reschedule events), evaluations at version 2 (`wait_until`). 8: jobs at version 5 (services
/// and checks), allocations at version 3 (service registrations), `Command::ReportServices`.
/// 9: jobs at version 6 (deployments' update fields, stable marks), deployments
/// (`Command::UpdateDeployment`, `Command::ActOnDeployment`). 10: proposals at version 3 (client
/// request ids, preconditions) and the client request tables.
pub const FORMAT_VERSION: u32 = 10;
/// The oldest database format this build converts when it opens one.
pub const OLDEST_CONVERTED_FORMAT: u32 = 2;
/// The oldest format this build writes for (the first whose records carry their versions), and
/// the format of a cluster that never raised its own.
pub const OLDEST_WRITTEN_FORMAT: u32 = 3;

/// A record type that knows its version and how to read every older one it supports.
pub trait Versioned: Sized {
    /// The version this build writes.
    const VERSION: u16;
    /// The first stored format whose builds read `VERSION`: for an older format, the previous
    /// version is written instead.
    const SINCE_FORMAT: u32;
    /// Reads a body written at `version`, migrating it to this type.
    fn read_version<'de, D: Deserializer<'de>>(version: u16, body: D) -> Result<Self, D::Error>;
}

thread_local! {
    static UNTAGGED: Cell<bool> = const { Cell::new(false) };
    static WRITING_FOR: Cell<u32> = const { Cell::new(FORMAT_VERSION) };
}

/// Runs `write` with records written for readers of stored `format` (at most this build's):
/// each record at the newest version such a reader knows.
pub fn write_for<T>(format: u32, write: impl FnOnce() -> T) -> T {
    struct Reset(u32);
    impl Drop for Reset {
        fn drop(&mut self) {
            WRITING_FOR.with(|w| w.set(self.0));
        }
    }
    let _reset = Reset(WRITING_FOR.with(|w| w.replace(format.min(FORMAT_VERSION))));
    write()
}

/// The stored format records are being written for (`write_for`; this build's outside it).
pub fn writing_for() -> u32 {
    WRITING_FOR.with(Cell::get)
}

/// The error for a record that readers of the format being written for could not read.
pub fn not_writable<E: serde::ser::Error>(record: &str, reason: impl fmt::Display) -> E {
    E::custom(format_args!("{record} cannot be written for stored format {}: {reason}", writing_for()))
}

/// Runs `read` with records read as format 2 stored them: version-1 bodies without a tag.
pub fn read_untagged<T>(read: impl FnOnce() -> T) -> T {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            UNTAGGED.with(|u| u.set(self.0));
        }
    }
    let _reset = Reset(UNTAGGED.with(|u| u.replace(true)));
    read()
}

/// Writes `(T::VERSION, body)`.
pub fn serialize_tagged<T: Versioned, B: Serialize + ?Sized, S: Serializer>(body: &B, s: S) -> Result<S::Ok, S::Error> {
    let mut tuple = s.serialize_tuple(2)?;
    tuple.serialize_element(&T::VERSION)?;
    tuple.serialize_element(body)?;
    tuple.end()
}

/// Reads `(version, body)` and migrates the body to `T`.
pub fn deserialize_tagged<'de, T: Versioned, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
    if UNTAGGED.with(Cell::get) {
        return T::read_version(1, d);
    }
    d.deserialize_tuple(2, TaggedVisitor::<T>(PhantomData))
}

/// The error for a version this build does not know (written by a newer build).
pub fn unknown_version<E: serde::de::Error>(record: &str, found: u16, newest: u16) -> E {
    E::custom(format_args!(
        "{record} version {found} is newer than this build reads (up to {newest}): upgrade this server"
    ))
}

struct TaggedVisitor<T>(PhantomData<T>);

impl<'de, T: Versioned> Visitor<'de> for TaggedVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a versioned record")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T, A::Error> {
        let version: u16 = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(0, &self))?;
        seq.next_element_seed(BodySeed::<T>(version, PhantomData))?.ok_or_else(|| A::Error::invalid_length(1, &self))
    }
}

struct BodySeed<T>(u16, PhantomData<T>);

impl<'de, T: Versioned> DeserializeSeed<'de> for BodySeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::read_version(self.0, d)
    }
}

/// Makes `$ty` (declared with `#[serde(remote = "Self")]`) a versioned record at `$version`,
/// reading older versions through `$prev` and `From<$prev>`.
#[macro_export]
macro_rules! versioned {
    // Internal: the derived body (inherent, from `remote = "Self"`) after the version tag.
    (@write $ty:ident, $value:expr, $s:expr) => {{
        struct Body<'a>(&'a $ty);
        impl serde::Serialize for Body<'_> {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $ty::serialize(self.0, s)
            }
        }
        $crate::format::serialize_tagged::<$ty, _, _>(&Body($value), $s)
    }};
    // Internal: `Versioned` and `Deserialize`, reading older versions through `$prev`.
    (@read $ty:ident = $version:literal, $since:expr $(, $prev:ty)?) => {
        impl $crate::format::Versioned for $ty {
            const VERSION: u16 = $version;
            const SINCE_FORMAT: u32 = $since;
            fn read_version<'de, D: serde::Deserializer<'de>>(version: u16, body: D) -> Result<Self, D::Error> {
                if version == $version {
                    return $ty::deserialize(body);
                }
                $(
                    if version < $version {
                        return <$prev as $crate::format::Versioned>::read_version(version, body).map(<$ty>::from);
                    }
                )?
                Err($crate::format::unknown_version(stringify!($ty), version, $version))
            }
        }

        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::format::deserialize_tagged(d)
            }
        }
    };
    // A version older builds cannot read: for them, the previous version is written.
    ($ty:ident = $version:literal, since format $since:literal, previous $prev:ty) => {
        $crate::versioned!(@read $ty = $version, $since, $prev);
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if $crate::format::writing_for() < $since {
                    let previous =
                        <$prev>::try_from(self).map_err(|e| $crate::format::not_writable(stringify!($ty), e))?;
                    return serde::Serialize::serialize(&previous, s);
                }
                $crate::versioned!(@write $ty, self, s)
            }
        }
    };
    // A version every format this build writes for reads; `$prev` is only read.
    ($ty:ident = $version:literal $(, previous $prev:ty)?) => {
        $crate::versioned!(@read $ty = $version, $crate::format::OLDEST_WRITTEN_FORMAT $(, $prev)?);
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                $crate::versioned!(@write $ty, self, s)
            }
        }
    };
}

/// Makes `$ty`, an old shape kept only to be read (plain `#[derive(Deserialize)]`), readable
/// at `$version` and, through `$prev`, older ones.
#[macro_export]
macro_rules! legacy {
    ($ty:ty = $version:literal $(, previous $prev:ty)?) => {
        impl $crate::format::Versioned for $ty {
            const VERSION: u16 = $version;
            // Read only: a legacy shape predates the formats this build writes for.
            const SINCE_FORMAT: u32 = 0;
            fn read_version<'de, D: serde::Deserializer<'de>>(version: u16, body: D) -> Result<Self, D::Error> {
                if version == $version {
                    return <$ty as serde::Deserialize>::deserialize(body);
                }
                $(
                    if version < $version {
                        return <$prev as $crate::format::Versioned>::read_version(version, body).map(<$ty>::from);
                    }
                )?
                Err($crate::format::unknown_version(stringify!($ty), version, $version))
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodes")
    }

    fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(v, _)| v).map_err(|e| e.to_string())
    }

    mod v1 {
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Thing {
            pub name: String,
        }
        crate::legacy!(Thing = 1);
    }

    /// Version 2 of a record: a field added, with the value old records migrate to.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self")]
    struct Thing {
        name: String,
        weight: u32,
    }
    crate::versioned!(Thing = 2, previous v1::Thing);

    impl From<v1::Thing> for Thing {
        fn from(old: v1::Thing) -> Thing {
            Thing { name: old.name, weight: 1 }
        }
    }

    /// A record holding another: its bytes carry the inner record's own tag.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self")]
    struct Holder {
        things: Vec<Thing>,
    }
    crate::versioned!(Holder = 1);

    mod w1 {
        /// Version 1 of a record that is still written, for readers of format 3.
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(remote = "Self")]
        pub struct Gadget {
            pub name: String,
        }
        crate::versioned!(Gadget = 1);
    }

    /// Version 2 of it adds a field that builds of format 3 do not know.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(remote = "Self")]
    struct Gadget {
        name: String,
        colour: Option<String>,
    }
    crate::versioned!(Gadget = 2, since format 4, previous w1::Gadget);

    impl From<w1::Gadget> for Gadget {
        fn from(old: w1::Gadget) -> Gadget {
            Gadget { name: old.name, colour: None }
        }
    }

    impl TryFrom<&Gadget> for w1::Gadget {
        type Error = &'static str;
        fn try_from(new: &Gadget) -> Result<w1::Gadget, &'static str> {
            match new.colour {
                None => Ok(w1::Gadget { name: new.name.clone() }),
                Some(_) => Err("a colour needs format 4"),
            }
        }
    }

    #[test]
    fn for_older_readers_a_record_is_written_as_its_previous_version_or_refused() {
        let plain = Gadget { name: "g".into(), colour: None };
        assert_eq!(encode(&plain)[0], 2, "this build's readers get version 2");
        let for_3 = write_for(3, || encode(&plain));
        assert_eq!(for_3[0], 1, "readers of format 3 get version 1");
        assert_eq!(decode::<w1::Gadget>(&for_3), Ok(w1::Gadget { name: "g".into() }), "as a format-3 build reads it");
        assert_eq!(decode::<Gadget>(&for_3), Ok(plain), "and this build reads it back");

        // What version 1 cannot hold is refused, never dropped.
        let coloured = Gadget { name: "g".into(), colour: Some("red".into()) };
        let refused = write_for(3, || bincode::serde::encode_to_vec(&coloured, bincode::config::standard()))
            .expect_err("refused");
        assert!(
            refused.to_string().contains("Gadget cannot be written for stored format 3: a colour needs format 4"),
            "{refused}"
        );
        assert_eq!(writing_for(), FORMAT_VERSION, "the scope ends with the call");
    }

    #[test]
    fn a_record_reads_back_as_written_with_its_tag_first() {
        let thing = Thing { name: "a".into(), weight: 7 };
        let bytes = encode(&thing);
        assert_eq!(bytes[0], 2, "the version leads");
        assert_eq!(decode::<Thing>(&bytes), Ok(thing));
    }

    #[test]
    fn an_older_version_is_migrated_when_read_also_inside_another_record() {
        // What a build of version 1 wrote: the tag 1, then version 1's body.
        let old = encode(&(1u16, v1::Thing { name: "old".into() }));
        assert_eq!(decode::<Thing>(&old), Ok(Thing { name: "old".into(), weight: 1 }));
        let mut held = encode(&1u16); // Holder's tag
        held.extend(encode(&2u64)); // two things
        held.extend(&old);
        held.extend(encode(&Thing { name: "new".into(), weight: 3 }));
        let holder: Holder = decode(&held).expect("mixed versions read");
        assert_eq!(holder.things, [Thing { name: "old".into(), weight: 1 }, Thing { name: "new".into(), weight: 3 }]);
    }

    #[test]
    fn a_newer_version_is_refused_with_a_clear_error() {
        let newer = encode(&(3u16, "x", 1u32, true));
        let error = decode::<Thing>(&newer).expect_err("refused");
        assert!(error.contains("Thing version 3 is newer than this build reads (up to 2)"), "{error}");
    }

    #[test]
    fn untagged_bytes_are_read_as_version_1_only_when_asked() {
        let untagged = encode(&v1::Thing { name: "legacy".into() });
        assert_eq!(read_untagged(|| decode::<Thing>(&untagged)), Ok(Thing { name: "legacy".into(), weight: 1 }));
        // Read as tagged, its first byte (the name's length, 6) is taken for a version.
        let error = decode::<Thing>(&untagged).expect_err("not a tagged record");
        assert!(error.contains("Thing version 6"), "{error}");
    }
}
