//! Event versions. Stored events outlive the code that wrote them: when an event's payload
//! changes shape, the event gets a new `event_version` and an upcaster that turns the payload
//! of the version before into the new one. The log is read as stored; every reader that decodes
//! a payload (loading an aggregate, projecting inline and in rebuilds, repair, verify, the
//! feed) brings it to the current shape first, through the domains' list of upcasters (the core
//! crate's `domain::current`, applied by [`apply`]), so the rest of the code knows only the
//! current shape, and payloads of every older version stay readable for ever.
//!
//! A payload is the serialized event enum, `{"<EventType>": {<fields>}}`; an upcaster changes
//! the fields.

use serde_json::{Map, Value};

/// Turns one version of an event type's payload into the next.
pub struct Upcaster {
    pub event_type: &'static str,
    pub from: &'static str,
    pub to: &'static str,
    /// Changes the event's fields in place; `Err` names what the old payload lacked.
    pub apply: fn(&mut Map<String, Value>) -> Result<(), String>,
}

/// A stored payload that no upcaster chain turns into the current shape.
#[derive(Debug, thiserror::Error)]
#[error("event {event_type} version {version} cannot be upcast: {reason}")]
pub struct UpcastError {
    pub event_type: String,
    pub version: String,
    pub reason: String,
}

/// Whether an event stored as `version` is already in its current shape: no upcaster of
/// `upcasters` starts from it.
pub fn is_current(upcasters: &[&[Upcaster]], event_type: &str, version: &str) -> bool {
    !upcasters
        .iter()
        .flat_map(|list| list.iter())
        .any(|u| u.event_type == event_type && u.from == version)
}

/// The current version and payload of an event stored as `version`: each of `upcasters` from
/// that version on is applied in turn. A payload already current comes back as it is.
///
/// # Errors
/// The payload is not `{"<event_type>": {…}}`, or an upcaster refused it.
pub fn apply(
    upcasters: &[&[Upcaster]],
    event_type: &str,
    version: &str,
    mut payload: Value,
) -> Result<(String, Value), UpcastError> {
    let mut version = version.to_owned();
    while let Some(upcaster) = upcasters
        .iter()
        .flat_map(|list| list.iter())
        .find(|u| u.event_type == event_type && u.from == version)
    {
        let error = |reason: String| UpcastError {
            event_type: event_type.to_owned(),
            version: version.clone(),
            reason,
        };
        let fields = payload
            .get_mut(event_type)
            .and_then(Value::as_object_mut)
            .ok_or_else(|| error(format!("the payload is not {{\"{event_type}\": {{…}}}}")))?;
        (upcaster.apply)(fields).map_err(error)?;
        version = upcaster.to.to_owned();
    }
    Ok((version, payload))
}

/// Renames field `from` to `to` (an upcaster's most common step).
///
/// # Errors
/// The payload has no field `from`.
pub fn rename(fields: &mut Map<String, Value>, from: &str, to: &str) -> Result<(), String> {
    let value = fields
        .remove(from)
        .ok_or_else(|| format!("no field {from:?}"))?;
    fields.insert(to.to_owned(), value);
    Ok(())
}
