//! Ids as users give them (a full id, or its first or last characters), and the one record an
//! id names.

use tonic::Status;

use super::errors::invalid;

/// Checks that `id` (request field `field`) can name a record: a full id or part of one.
pub fn check_id(field: &str, id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(invalid(field, "must be an id, or its first or last characters (hex digits and '-')"));
    }
    Ok(())
}

/// The one of `matches` that `id` names: NOT_FOUND for none, INVALID_ARGUMENT (on `field`) when
/// it names several. `what` names the kind of record in the messages.
pub fn the_one<T>(what: &str, field: &str, id: &str, matches: Vec<T>) -> Result<T, Status> {
    match <[T; 1]>::try_from(matches) {
        Ok([one]) => Ok(one),
        Err(none) if none.is_empty() => Err(Status::not_found(format!("{what} {id:?} not found"))),
        Err(many) => Err(invalid(field, format!("{id:?} matches {} {what}s; give more characters", many.len()))),
    }
}
