//! The domains. Each module holds an aggregate, its commands, its events and its rules; none of
//! them does IO, so replaying a stream is deterministic and tests need no database.

pub mod batch;
pub mod collection;
pub mod competency;
pub mod text;

use std::borrow::Cow;

use cutover_engine::event::StoredEvent;
use cutover_engine::rows::ProjectionError;
use cutover_engine::upcast::{self, UpcastError, Upcaster};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Every upcaster of every domain.
const UPCASTERS: &[&[Upcaster]] = &[
    collection::UPCASTERS,
    batch::UPCASTERS,
    competency::UPCASTERS,
];

/// The current version and payload of an event of any domain stored as `version` (see
/// [`cutover_engine::upcast`]).
///
/// # Errors
/// The payload is not `{"<event_type>": {…}}`, or an upcaster refused it.
pub fn current(
    event_type: &str,
    version: &str,
    payload: Value,
) -> Result<(String, Value), UpcastError> {
    upcast::apply(UPCASTERS, event_type, version, payload)
}

/// The event `event` holds, decoded for `projector` in the current shape of its type: as stored
/// when it was stored in it, upcast first (see [`current`]) when it was stored in an older one.
///
/// # Errors
/// An upcaster refused the payload, or it does not match the event type's shape.
pub fn decode<E: DeserializeOwned>(
    projector: &'static str,
    event: &StoredEvent,
) -> Result<E, ProjectionError> {
    let position = event.position;
    let payload = if upcast::is_current(UPCASTERS, &event.event_type, &event.event_version) {
        Cow::Borrowed(&event.payload)
    } else {
        let (_, payload) = current(
            &event.event_type,
            &event.event_version,
            event.payload.clone(),
        )
        .map_err(|source| ProjectionError::Upcast {
            projector,
            position,
            source,
        })?;
        Cow::Owned(payload)
    };
    E::deserialize(payload.as_ref()).map_err(|source| ProjectionError::Decode {
        projector,
        position,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::{current, Upcaster, UPCASTERS};

    fn upcasters() -> impl Iterator<Item = &'static Upcaster> {
        UPCASTERS.iter().flat_map(|list| list.iter())
    }

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
