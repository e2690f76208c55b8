//! What the server accepts in a field, a parameter or a header, as the JSON Schema the API
//! description gives it. Each bound is a type, declared with [`bounds!`] from the constants the
//! server checks; a request type names it in its utoipa attribute (`#[schema(value_type =
//! bounds::CollectionName)]`, `("batch_id" = bounds::BatchId, Path, …)`), and the description
//! writes the bound's schema in place of the reference (with the field's own description), so
//! a bound is no component of its own. The page sizes a list takes are one table
//! ([`PageSize`]) that the handlers read as well.

use cutover_core::domain::{self, batch, collection, competency};
use cutover_engine::read_source::{Domain, ReadSource};
use serde_json::{json, Value};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaType};
use utoipa::openapi::RefOr;

use crate::error::ApiError;

/// The extension that carries a bound's schema: the description writes it in place of every
/// reference to the bound, then drops the bound from the components.
pub const INLINE: &str = "x-cutover-inline";

/// The extension that carries a component's schema, which the description puts in its place.
pub const COMPONENT: &str = "x-cutover-component";

/// Declares bounds: each a type whose OpenAPI schema is the JSON given.
macro_rules! bounds {
    ($($(#[$meta:meta])* $vis:vis $name:ident = $schema:expr;)+) => {$(
        $(#[$meta])*
        $vis struct $name;

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::bounds::schema($schema)
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                // Never served (the description writes the schema in its place), and unique.
                std::borrow::Cow::Borrowed(concat!(module_path!(), "::", stringify!($name)))
            }
        }
    )+};
}
pub(crate) use bounds;

/// A bound's schema (`json`), as utoipa takes it: carried by the extension [`INLINE`].
pub fn schema(json: Value) -> RefOr<Schema> {
    carried(INLINE, json)
}

/// The schema of a component of the description (a named schema that stays one): carried by
/// the extension [`COMPONENT`]. For what utoipa's attributes cannot say (`propertyNames`).
pub fn component(json: Value) -> RefOr<Schema> {
    carried(COMPONENT, json)
}

/// An empty schema carrying `json` in the extension `name`: JSON Schema keywords utoipa's
/// types do not model survive as written.
fn carried(name: &str, json: Value) -> RefOr<Schema> {
    let extensions = ExtensionsBuilder::new().add(name, json).build();
    RefOr::T(Schema::Object(
        ObjectBuilder::new()
            .schema_type(SchemaType::AnyValue)
            .extensions(Some(extensions))
            .build(),
    ))
}

/// The page size a list route takes as `limit`: from 1 to `max`, `default` when absent.
#[derive(Debug, Clone, Copy)]
pub struct PageSize {
    pub default: i64,
    pub max: i64,
}

impl PageSize {
    /// The page size `limit` asks for.
    ///
    /// # Errors
    /// A 400 naming the bounds when `limit` is out of them.
    pub fn of(self, limit: Option<i64>) -> Result<i64, ApiError> {
        let limit = limit.unwrap_or(self.default);
        if (1..=self.max).contains(&limit) {
            Ok(limit)
        } else {
            Err(ApiError::BadRequest(format!(
                "limit must be between 1 and {}",
                self.max
            )))
        }
    }

    /// The schema of `limit`.
    pub fn schema(self) -> Value {
        json!({
            "type": "integer", "format": "int64",
            "minimum": 1, "maximum": self.max, "default": self.default,
        })
    }
}

/// No NUL character (U+0000), which Postgres can store neither in `text` nor in `jsonb`.
pub fn no_nul() -> &'static str {
    r"^[^\u0000]*$"
}

/// No NUL character, and at least one visible one: what remains once the server trims the
/// value is not empty and not made only of characters drawn as nothing
/// (`cutover_core::domain::text::is_invisible`). The pattern spells the Basic Multilingual Plane's
/// invisible characters; the few above it (tag characters, shorthand format controls) the server
/// refuses as well, and the field's description says so.
fn not_blank() -> String {
    format!(r"^[^\u0000]*[^\u0000{}][^\u0000]*$", invisible_class())
}

/// The invisible characters of the Basic Multilingual Plane, as the inside of a
/// regular-expression class of `\uXXXX` ranges.
fn invisible_class() -> String {
    let invisible: Vec<u32> = (0..=0xFFFF_u32)
        .filter(|c| char::from_u32(*c).is_some_and(domain::text::is_invisible))
        .collect();
    let mut class = String::new();
    let mut i = 0;
    while i < invisible.len() {
        let start = invisible[i];
        let mut end = start;
        while i + 1 < invisible.len() && invisible[i + 1] == end + 1 {
            i += 1;
            end = invisible[i];
        }
        class.push_str(&format!(r"\u{start:04x}"));
        if end > start {
            class.push_str(&format!(r"-\u{end:04x}"));
        }
        i += 1;
    }
    class
}

/// Text with no NUL character, 1 to `max` characters.
fn key(max: usize) -> Value {
    json!({"type": "string", "minLength": 1, "maxLength": max, "pattern": no_nul()})
}

/// A score: a number from 0 to the domain's largest.
pub fn score() -> Value {
    json!({
        "type": "number", "format": "double", "minimum": 0, "maximum": competency::MAX_SCORE,
    })
}

/// A free-form JSON object: keys without NUL, any JSON value (the `JsonValue` component).
fn free_form() -> Value {
    json!({
        "type": "object",
        "propertyNames": {"pattern": no_nul()},
        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
    })
}

/// The read sources' names.
pub fn read_sources() -> Vec<&'static str> {
    // A new read source must be added here: the match fails to compile until it is.
    let all = [ReadSource::Legacy, ReadSource::New];
    for source in all {
        match source {
            ReadSource::Legacy | ReadSource::New => {}
        }
    }
    all.map(ReadSource::as_str).to_vec()
}

/// The domains that have two read-model shapes.
fn domains() -> Vec<&'static str> {
    // A new domain must be added here: the match fails to compile until it is.
    let all = [Domain::Collections, Domain::Batches, Domain::Competencies];
    for domain in all {
        match domain {
            Domain::Collections | Domain::Batches | Domain::Competencies => {}
        }
    }
    all.map(Domain::as_str).to_vec()
}

/// The projections the catalogue declares.
fn projections() -> Vec<&'static str> {
    cutover_projections::inline_projectors()
        .iter()
        .map(|p| p.name())
        .collect()
}

bounds! {
    /// A collection's name.
    pub CollectionName = json!({
        "type": "string", "minLength": 1, "maxLength": collection::MAX_NAME_CHARS,
        "pattern": not_blank(),
    });
    /// A collection's description (`null` is empty).
    pub CollectionDescription = json!({
        "type": ["string", "null"], "maxLength": collection::MAX_DESCRIPTION_CHARS,
        "pattern": no_nul(),
    });
    /// A collection's tags.
    pub Tags = json!({
        "type": "array", "maxItems": collection::MAX_TAGS,
        "items": {
            "type": "string", "minLength": 1, "maxLength": collection::MAX_TAG_CHARS,
            "pattern": not_blank(),
        },
    });
    /// A collection's question or hypothesis ids.
    pub LinkedIds = json!({
        "type": "array", "maxItems": collection::MAX_LINKED_IDS,
        "items": {"type": "string", "format": "uuid"},
    });
    /// A batch's id.
    pub BatchId = json!({
        "type": "string", "minLength": 1, "maxLength": batch::MAX_ID_CHARS,
        "pattern": format!("^[A-Za-z0-9_.:-]{{1,{}}}$", batch::MAX_ID_CHARS),
    });
    /// A player of a batch.
    pub Player = key(batch::MAX_ID_CHARS);
    /// The players a batch waits for.
    pub ExpectedPlayers = json!({
        "type": "array", "minItems": 1, "maxItems": batch::MAX_PLAYERS, "uniqueItems": true,
        "items": key(batch::MAX_ID_CHARS),
    });
    /// A completion's count of predictions.
    pub PredictionsCount = json!({
        "type": "integer", "format": "int64", "minimum": 0, "maximum": batch::MAX_PREDICTIONS,
    });
    /// A part of a subskill's key (subject, skill, subskill), or a problem's id.
    pub KeyPart = key(competency::MAX_KEY_CHARS);
    /// An attempt's analysis or feedback.
    pub Text = json!({
        "type": "string", "maxLength": competency::MAX_TEXT_CHARS, "pattern": no_nul(),
    });
    /// A score.
    pub Score = score();
    /// A part of a review.
    pub FreeForm = free_form();
    /// A student's id.
    pub StudentId = json!({
        "type": "integer", "format": "int64", "minimum": 1, "maximum": i64::MAX,
    });
    /// A log position, 0 for the log's start.
    pub Position = json!({
        "type": "integer", "format": "int64", "minimum": 0, "maximum": i64::MAX,
    });
    /// A projection's name.
    pub Projection = json!({"type": "string", "enum": projections()});
    /// A projection's name, or `all`.
    pub Rebuildable = json!({
        "type": "string",
        "enum": projections().into_iter().chain(["all"]).collect::<Vec<_>>(),
    });
    /// The aggregates a repair names.
    pub RepairAggregates = json!({
        "type": "array", "minItems": 1, "maxItems": cutover_engine::repair::MAX_AGGREGATES,
        "items": {"type": "string", "pattern": no_nul()},
    });
    /// A domain with two read-model shapes.
    pub DomainName = json!({"type": "string", "enum": domains()});
    /// A read source's name.
    pub ReadSourceChoice = json!({"type": "string", "enum": read_sources()});
    /// Text without NUL.
    pub NoNul = json!({"type": "string", "pattern": no_nul()});
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_invisible_class_is_what_the_server_refuses() {
        let class = invisible_class();
        // Controls and white space, U+0000–U+0020 and U+007F–U+00A0, then the soft hyphen.
        assert!(
            class.starts_with(r"\u0000-\u0020\u007f-\u00a0\u00ad"),
            "{class}"
        );
        assert!(class.contains(r"\u2000-\u200f"), "{class}");
        assert!(class.contains(r"\u3000"), "{class}");
        assert!(class.contains(r"\ufeff"), "{class}");
    }

    #[test]
    fn a_page_size_out_of_its_bounds_is_refused() {
        let page = PageSize {
            default: 5,
            max: 10,
        };
        assert_eq!(page.of(None).ok(), Some(5));
        assert_eq!(page.of(Some(10)).ok(), Some(10));
        assert!(page.of(Some(0)).is_err());
        assert!(page.of(Some(11)).is_err());
    }
}
