//! Event versions. Stored events outlive the code that wrote them: when an event's payload
//! changes shape, the event gets a new `event_version` and an upcaster that turns the payload
//! of the version before into the new one. Every reader of the log (loading an aggregate,
//! projecting inline and in rebuilds, verify, the feed) reads events through [`current`], so
//! the rest of the code knows only the current shape, and payloads of every older version stay
//! readable for ever.
//!
//! A payload is the serialized event enum, `{"<EventType>": {<fields>}}`; an upcaster changes
//! the fields.

use serde_json::{Map, Value};

use crate::domain;

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

/// Every upcaster of every domain.
fn upcasters() -> impl Iterator<Item = &'static Upcaster> {
    domain::collection::UPCASTERS
        .iter()
        .chain(domain::batch::UPCASTERS)
        .chain(domain::competency::UPCASTERS)
}

/// The current version and payload of an event stored as `version`: each upcaster from that
/// version on is applied in turn. A payload already current comes back as it is.
///
/// # Errors
/// The payload is not `{"<event_type>": {…}}`, or an upcaster refused it.
pub fn current(
    event_type: &str,
    version: &str,
    mut payload: Value,
) -> Result<(String, Value), UpcastError> {
    let mut version = version.to_owned();
    while let Some(upcaster) = upcasters().find(|u| u.event_type == event_type && u.from == version)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_upcaster_chain_ends_at_one_current_version_without_a_loop() {
        for start in upcasters() {
            let mut version = start.from;
            let mut steps = 0;
            while let Some(next) =
                upcasters().find(|u| u.event_type == start.event_type && u.from == version)
            {
                version = next.to;
                steps += 1;
                assert!(steps < 100, "{} loops at {version}", start.event_type);
            }
            assert_ne!(version, start.from);
        }
    }

    #[test]
    fn a_payload_that_lacks_what_its_upcaster_needs_is_named_in_the_error() {
        let error = current(
            "CollectionCreated",
            "1.0",
            serde_json::json!({"CollectionCreated": {"project_id": "x"}}),
        )
        .expect_err("no name to rename");

        assert_eq!(error.event_type, "CollectionCreated");
        assert!(error.reason.contains("name"), "{error}");
    }
}
