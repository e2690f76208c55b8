//! The domains. Each module holds an aggregate, its commands, its events and its rules; none of
//! them does IO, so replaying a stream is deterministic and tests need no database.

pub mod batch;
pub mod collection;
pub mod competency;

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

/// `raw` without surrounding white space, or `None` when nothing visible is left: a text made
/// only of white space, control characters and characters drawn as nothing (zero-width spaces
/// and joiners, direction marks, U+FEFF, variation selectors, fillers) is empty. Every text
/// field that must not be empty after trimming is read through this.
pub(crate) fn trimmed_visible(raw: &str) -> Option<&str> {
    let trimmed = raw.trim();
    trimmed.chars().any(|c| !is_invisible(c)).then_some(trimmed)
}

/// Whether `c` counts as nothing in a text that must not be empty: white space, a control
/// character, or a character drawn as nothing.
pub fn is_invisible(c: char) -> bool {
    c.is_whitespace() || c.is_control() || is_default_ignorable(c)
}

/// Whether `c` has Unicode's `Default_Ignorable_Code_Point` property (DerivedCoreProperties,
/// Unicode 15.1): characters a renderer shows as nothing, among them every invisible format
/// character (general category Cf) such as U+200B–U+200D, U+2060 and U+FEFF.
fn is_default_ignorable(c: char) -> bool {
    matches!(
        u32::from(c),
        0x00AD
            | 0x034F
            | 0x061C
            | 0x115F..=0x1160
            | 0x17B4..=0x17B5
            | 0x180B..=0x180F
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x206F
            | 0x3164
            | 0xFE00..=0xFE0F
            | 0xFEFF
            | 0xFFA0
            | 0xFFF0..=0xFFF8
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0000..=0xE0FFF
    )
}

#[cfg(test)]
mod tests {
    use super::{current, trimmed_visible, Upcaster, UPCASTERS};

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

    #[test]
    fn text_of_only_invisible_characters_is_empty() {
        for raw in [
            "",
            "  \t\n",
            "\u{200b}",
            "\u{200c}\u{200d}",
            " \u{2060} ",
            "\u{feff}",
            "\u{00ad}\u{034f}\u{180e}",
            "\u{202e}\u{2066}",
            "\u{3164}\u{ffa0}\u{fe0f}",
            "\u{e0001}\u{e0067}",
            "\u{1}\u{7f}",
        ] {
            assert_eq!(trimmed_visible(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn visible_text_is_trimmed_of_white_space_only() {
        assert_eq!(trimmed_visible("  Notes "), Some("Notes"));
        assert_eq!(trimmed_visible("\u{200b}Notes"), Some("\u{200b}Notes"));
        assert_eq!(trimmed_visible("👩\u{200d}🔬"), Some("👩\u{200d}🔬"));
        assert_eq!(trimmed_visible("\u{a0}é\u{a0}"), Some("é"));
    }
}
